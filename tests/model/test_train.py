"""Train -> evaluate round trip on a tiny Omnis, resume after an interrupted epoch, the closed-set baseline,
and the trainer's hooks (held-out classes, prompt sampling, DDP pickling)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medrov.config import load_params
from tests.conftest import ROOT
from tests.unit.test_metric_coco import coco_reference_from_json


def test_train_then_evaluate_round_trip(train_overrides, tiny_omnis, tmp_path):
    from medrov.model.evaluate import evaluate
    from medrov.model.train import train

    params = load_params(ROOT / "params.yaml", train_overrides)
    info = train(params)
    weights = Path(info["weights"])
    assert weights.is_file() and info["kind"] == "open-vocabulary" and info["epochs_done"] == 1
    assert info["encoder"]["identity"].startswith("minilm:") and info["encoder"]["dim"] == 384
    assert json.loads((weights.parents[1] / "medrov.json").read_text())["encoder"] == info["encoder"]
    # the checkpoints themselves carry the encoder and the normalisation predict must reuse
    from medrov.model.record import record_of
    from medrov.model.weights import read_checkpoint

    for ckpt_file in (weights, weights.with_name("last.pt")):
        record = record_of(read_checkpoint(ckpt_file))
        assert record["encoder"] == info["encoder"], ckpt_file
        assert record["normalisation"] == {
            "ct_window": list(params.data.ct_window),
            "mri_percentiles": list(params.data.mri_percentiles),
        }
    assert (weights.parents[1] / "results.csv").is_file()  # ultralytics' own per-epoch log and plots
    assert list((tmp_path / "text-cache").glob("text-minilm*.pt")), "text embeddings were not cached"

    # a 1-epoch model scores below the default conf 0.001: go lower so there are predictions to cross-check
    low_conf = load_params(ROOT / "params.yaml", [*train_overrides, "evaluate.conf=0.00001"])
    result = evaluate(
        weights,
        low_conf,
        split="train",
        out_metrics=tmp_path / "eval.json",
        plots_dir=tmp_path / "plots",
        coco_dir=tmp_path / "coco",
    )
    stored = json.loads((tmp_path / "eval.json").read_text())
    # the same predictions through pycocotools: mAP over the classes with ground truth agrees within 0.005
    gt_json = json.loads((tmp_path / "coco" / "coco_gt.json").read_text())
    dt_json = json.loads((tmp_path / "coco" / "coco_dt.json").read_text())
    assert len(gt_json["annotations"]) > 0 and len(dt_json) > len(gt_json["images"])
    ref = coco_reference_from_json(gt_json, dt_json, max_dets=params.evaluate.max_det)
    assert len(ref) == stored["all"]["classes"]
    assert abs(np.mean([a50 for a50, _ in ref.values()]) - stored["all"]["map50"]) <= 0.005
    assert abs(np.mean([a for _, a in ref.values()]) - stored["all"]["map50_95"]) <= 0.005
    # another prompt for a class (open vocabulary): its predictions are still scored as that class
    swapped = evaluate(weights, low_conf, split="train", prompts={"liver": "hepar"})
    assert set(swapped["class"]) == set(result["class"]) and "liver" in swapped["class"]
    assert stored["images"] == result["images"] > 0
    assert {"all", "base"} <= set(stored) and {"ct", "mri"} <= set(stored["modality"])
    for group in ("all", "base"):
        assert 0.0 <= stored[group]["map50"] <= 1.0 and stored[group]["map50_95"] <= stored[group]["map50"] + 1e-9
    assert stored["encoder"]["identity"] == info["encoder"]["identity"]
    assert (tmp_path / "plots" / "pr_curve.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "map50_per_modality.png").stat().st_size > 1000


class _Kill(Exception):
    pass


def test_resume_after_an_interrupted_epoch(train_overrides):
    from medrov.model.train import train

    params = load_params(ROOT / "params.yaml", [*train_overrides, "train.profiles.demo.epochs=2"])

    def kill_in_second_epoch(trainer):
        if trainer.epoch == 1:
            raise _Kill("simulated kill in epoch 2")

    with pytest.raises(_Kill):
        train(params, callbacks={"on_train_batch_end": [kill_in_second_epoch]})
    info = train(params, resume=True)
    assert info["epochs_done"] == 2
    results = (Path(info["save_dir"]) / "results.csv").read_text().strip().splitlines()
    assert len(results) == 1 + 2  # header + one row per epoch: epoch 1 kept, epoch 2 redone


def test_resume_without_a_run_is_a_clear_error(train_overrides):
    from medrov.errors import ConfigError
    from medrov.model.train import train

    with pytest.raises(ConfigError, match="nothing to resume"):
        train(load_params(ROOT / "params.yaml", train_overrides), resume=True)


def test_closed_set_baseline_trains_on_the_same_data(train_overrides):
    from medrov.model.detector import Detector
    from medrov.model.train import train

    info = train(load_params(ROOT / "params.yaml", train_overrides), closed_set=True)
    assert info["kind"] == "closed-set" and Path(info["save_dir"]).name == "demo-closed"
    detector = Detector(info["weights"])
    assert not detector.open_vocabulary
    detector.set_vocabulary(["liver"])
    from medrov.errors import MedrovError

    with pytest.raises(MedrovError, match="cannot detect"):
        detector.set_vocabulary(["a class it never saw"])


def test_held_out_classes_are_dropped_and_never_sampled_as_negatives(tiny_omnis):
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    from medrov.model.trainer import PromptSampler

    texts = [["liver"], ["kidney", "renal"], ["tumor"], ["spleen"]]
    sampler = PromptSampler(negatives=[0, 1, 3], max_samples=4, padding=False, neg_samples=(4, 4))
    seen = set()
    for _ in range(50):
        labels = {"cls": np.array([[1], [1]]), "texts": texts, "instances": _Instances(2)}
        params = sampler.get_params(labels)
        seen.update(params["texts"])
        assert params["texts"][0] in ("kidney", "renal")  # the positive is first and kept
        assert params["new_cls"].reshape(-1).tolist() == [0, 0]
    assert "tumor" not in seen and {"liver", "spleen"} <= seen
    # a held-out class that is present in the image stays a positive, never a negative
    labels = {"cls": np.array([[2]]), "texts": texts, "instances": _Instances(1)}
    assert sampler.get_params(labels)["texts"][0] == "tumor"


class _Instances:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_trainer_class_survives_ddp_pickling(tmp_path):
    """ultralytics' DDP launcher cloudpickles the trainer class: our per-run settings must come back."""
    import cloudpickle

    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    from medrov.model.trainer import make_world_trainer

    cls = make_world_trainer("local-dir:/models/biomedclip", "minilm", str(tmp_path / "cache"), [3, 7])
    blob = tmp_path / "trainer.pkl"
    blob.write_bytes(cloudpickle.dumps(cls))
    code = (
        "import pickle,sys; from medrov.model.ultra import prepare_ultralytics; prepare_ultralytics();"
        f"c=pickle.load(open({str(blob)!r},'rb'));"
        "print(c.text_spec, c.text_fallback, c.held_out, c.__mro__[1].__name__, c.build_dataset.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "local-dir:/models/biomedclip",
        "minilm",
        "(3,",
        "7)",
        "MedrovWorldTrainer",
        "medrov.model.trainer",
    ]
