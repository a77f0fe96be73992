"""The training mechanisms inside the trainer: source tiles carried through mosaic, pseudo-labels and
image-feature negatives in a real (tiny) training run, counters, gallery, and the text-only switch-off."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medrov.config import load_params
from tests.conftest import ROOT


def _trainer(overrides, extra=()):
    from medrov.model.train import _trainer_class, train_args
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    params = load_params(ROOT / "params.yaml", [*overrides, *extra])
    args = train_args(params)
    return _trainer_class(params, args["data"], False)(overrides=args), params


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_source_tiles_follow_mosaic_and_affine(train_overrides, tiny_omnis, mosaic):
    """Every ground-truth box after augmentation lies in a tile whose source annotates its class."""
    from medrov.data.presence import image_sources, presence_array
    from medrov.model.pseudo import source_of

    trainer, _ = _trainer(
        train_overrides, [f"train.profiles.demo.extra={{mosaic: {mosaic}, degrees: 10.0, fliplr: 0.5}}"]
    )
    dataset = trainer.build_dataset(str(tiny_omnis / "train.txt"), "train", 4)
    _, sources = image_sources(trainer.data["path"])
    presence = presence_array(tiny_omnis / "presence.csv", list(trainer.data["names"].values()), sources)
    manifest = pd.read_parquet(tiny_omnis / "manifest.parquet")
    by_image = {str((tiny_omnis / i).resolve()): s for i, s in zip(manifest["image"], manifest["source"])}
    checked = 0
    for i in range(min(len(dataset), 12)):
        item = dataset[i]
        tiles = np.asarray(item["tiles"]).reshape(-1, 5)
        assert 1 <= len(tiles) <= (4 if mosaic else 1)
        if not mosaic:
            assert sources[int(tiles[0, 4])] == by_image[str(Path(item["im_file"]).resolve())]
        h, w = item["img"].shape[1:]
        boxes = item["bboxes"].numpy().reshape(-1, 4) * [w, h, w, h]
        xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
        names = item["texts"]
        for box, slot in zip(xyxy, item["cls"].numpy().reshape(-1).astype(int)):
            src = source_of(box, tiles[:, :4], tiles[:, 4].astype(int))
            cls = next(c for c, n in enumerate(trainer.data["names"].values()) if names[slot] in n.split("/"))
            assert src >= 0 and presence[src, cls] == 1, (sources[src], names[slot])
            checked += 1
    assert checked > 0


def _rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("teacher", ["ema", "model"])
def test_real_teacher_negatives_overwrite_prompt_slots(train_overrides, tmp_path, monkeypatch, teacher):
    """The real EMA teacher of an untrained model, with C=0 and T=1: its confident false positives become
    image-feature negatives through a tiny CLIP's image tower, written into the batch's prompt embeddings."""
    from medrov.model import mechanisms
    from medrov.model.train import train
    from tests.tiny_models import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "tiny-clip")
    params = load_params(
        ROOT / "params.yaml",
        [
            *train_overrides,
            f"text.encoder=local-dir:{clip}",
            "pseudo.conf_c=0.0",
            "pseudo.iou_t=1.0",
            "pseudo.crop_min=1",
            "train.profiles.demo.extra={mosaic: 0.0}",
            f"pseudo.teacher={teacher}",
        ],
    )
    overwritten = []
    inject = mechanisms.Mechanisms._inject_negatives

    def spy(self, batch, decisions):
        before = batch["txt_feats"].clone()
        inject(self, batch, decisions)
        for n in decisions.negatives:
            overwritten.append(not torch.equal(before[n.image, n.slot], batch["txt_feats"][n.image, n.slot]))

    import torch

    monkeypatch.setattr(mechanisms.Mechanisms, "_inject_negatives", spy)
    seen = []
    info = train(params, callbacks={"on_fit_epoch_end": [lambda t: seen.append(dict(t.pseudo_metrics))]})
    rows = _rows(Path(info["save_dir"]) / "pseudo_counts.csv")
    negatives = [r for r in rows if r["kind"] == "negative"]
    assert negatives and overwritten and all(overwritten)
    presence = pd.read_csv(Path(params.train.data).parent / "presence.csv").set_index("source")
    for r in rows:  # every decision follows the presence matrix of its own source
        m = presence.loc[r["source"], r["class"].split("/")[0]]
        assert (m == 0) if r["kind"] == "label" else (m in (1, -1)), r
    assert seen[0]["pseudo/negatives"] == sum(int(r["count"]) for r in negatives) == len(overwritten)
    assert (
        info["pseudo"]["negatives"]
        and json.loads((Path(info["save_dir"]) / "medrov.json").read_text())["pseudo"]["teacher"] == teacher
    )


def test_pseudo_labels_reach_the_loss_with_counters_and_gallery(train_overrides, monkeypatch):
    """An oracle teacher (one confident whole-image box of a class the image's source does not annotate) makes
    the M=0 branch fire: the boxes are appended to the targets the loss sees, counted, and drawn in the gallery."""
    import torch

    from medrov.model import mechanisms
    from medrov.model.train import train

    # presence-aware sampling off: it keeps M=0 classes out of the prompts, so no prompt slot could be pseudo-labelled
    params = load_params(
        ROOT / "params.yaml",
        [
            *train_overrides,
            "pseudo.gallery=3",
            "train.profiles.demo.extra={mosaic: 0.0}",
            "pseudo.presence_sampling=false",
        ],
    )

    def oracle(self, trainer, batch, probe=None):
        b, k = batch["txt_feats"].shape[:2]
        h, w = batch["img"].shape[2:]
        y = torch.zeros(b, 4 + k + (0 if probe is None else len(probe.classes)), 2)
        y[:, 0], y[:, 1], y[:, 2], y[:, 3] = w / 2, h / 2, w * 0.9, h * 0.9
        for i, texts in enumerate(batch["texts"]):
            src = int(batch["tiles"][i][0, 4])
            zero = [
                j
                for j, t in enumerate(texts)
                if self.text_class.get(t, -1) >= 0 and self.presence[src, self.text_class[t]] == 0
            ]
            if zero:
                y[i, 4 + zero[0], 0] = 0.99
        return y

    monkeypatch.setattr(mechanisms.Mechanisms, "_teacher_predictions", oracle)
    appended = []
    call = mechanisms.Mechanisms.__call__

    def count_targets(self, trainer, batch):
        n = len(batch["batch_idx"])
        d = call(self, trainer, batch)
        appended.append((len(batch["batch_idx"]) - n, len(d.targets), bool((batch["batch_idx"].diff() >= 0).all())))
        return d

    monkeypatch.setattr(mechanisms.Mechanisms, "__call__", count_targets)
    info = train(params)
    run = Path(info["save_dir"])
    assert sum(a for a, _, _ in appended) == sum(t for _, t, _ in appended) > 0
    assert all(sorted_ for _, _, sorted_ in appended)
    labels = [r for r in _rows(run / "pseudo_counts.csv") if r["kind"] == "label"]
    assert sum(int(r["count"]) for r in labels) == sum(t for _, t, _ in appended)
    assert (run / "pseudo_gallery_epoch1.png").stat().st_size > 1000
    assert not info["pseudo"]["negatives"]  # MiniLM has no image tower


@pytest.mark.parametrize("probe", [True, False])
def test_presence_sampling_and_pseudo_labels_work_together_through_probes(train_overrides, monkeypatch, probe):
    """With presence-aware sampling an image is never prompted with a class its source leaves unannotated (M=0),
    so only a probe lets the teacher score it: an oracle teacher's confident probe box becomes a target in a
    negative prompt slot that now carries the probed class's prompt and embedding; only classes another source of
    the image's modality annotates are probed. Without probes: no labels."""
    import torch

    from medrov.model import mechanisms
    from medrov.model.train import train
    from medrov.prompts import prompt_name

    params = load_params(
        ROOT / "params.yaml",
        [*train_overrides, "train.profiles.demo.extra={mosaic: 0.0}", f"pseudo.probe={str(probe).lower()}"],
    )
    assert params.pseudo.presence_sampling

    def oracle(self, trainer, batch, probe=None):
        b, k = batch["txt_feats"].shape[:2]
        h, w = batch["img"].shape[2:]
        p = 0 if probe is None else len(probe.classes)
        y = torch.zeros(b, 4 + k + p, 2)
        y[:, 0], y[:, 1], y[:, 2], y[:, 3] = w / 2, h / 2, w * 0.9, h * 0.9
        y[:, 4 + k :, 0] = 0.99  # every probe confident; those not applying to an image are masked by _inputs
        return y

    monkeypatch.setattr(mechanisms.Mechanisms, "_teacher_predictions", oracle)
    seen = []
    call = mechanisms.Mechanisms.__call__

    def check(self, trainer, batch):
        d = call(self, trainer, batch)
        for t in d.targets:
            src = self._rows(batch, t.image)[0]
            assert self.presence[src, t.cls] == 0 and t.cls not in self.held_out
            assert self.probe_mask[src, t.cls]  # a class a source of this image's modality annotates
            assert t.slot < batch["txt_feats"].shape[1]  # a training slot, not a probe
            assert batch["texts"][t.image][t.slot] == prompt_name(self.names[t.cls])
            assert torch.equal(batch["txt_feats"][t.image, t.slot], self._embedding(trainer, t.cls))
        seen.append(len(d.targets))
        return d

    monkeypatch.setattr(mechanisms.Mechanisms, "__call__", check)
    info = train(params)
    rows = _rows(Path(info["save_dir"]) / "pseudo_counts.csv")
    labels = sum(int(r["count"]) for r in rows if r["kind"] == "label")
    assert labels == sum(seen)
    assert (labels > 0) == probe
    assert info["pseudo"]["probe"] == probe


def test_student_teacher_decides_inside_the_training_forward(train_overrides, tmp_path, monkeypatch):
    """teacher=student: no extra pass; the head hook decides from the training forward, negatives re-score the
    head, and the decided boxes reach the loss through the criterion wrapper, re-sorted by image."""
    from medrov.model import mechanisms
    from medrov.model.train import train
    from tests.tiny_models import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "tiny-clip")
    params = load_params(
        ROOT / "params.yaml",
        [
            *train_overrides,
            f"text.encoder=local-dir:{clip}",
            "pseudo.conf_c=0.0",
            "pseudo.iou_t=1.0",
            "pseudo.crop_min=1",
            "train.profiles.demo.extra={mosaic: 0.0}",
            "pseudo.teacher=student",
        ],
    )
    extra_passes = []
    monkeypatch.setattr(mechanisms.Mechanisms, "_teacher_predictions", lambda *a: extra_passes.append(1))
    seen_by_loss = []
    call = mechanisms._PendingTargets.__call__

    def spy(self, preds, batch):
        pending = len(self.mechanisms._append or [])
        n = len(batch["batch_idx"])
        out = call(self, preds, batch)
        seen_by_loss.append((n, pending))
        return out

    monkeypatch.setattr(mechanisms._PendingTargets, "__call__", spy)
    info = train(params)
    rows = _rows(Path(info["save_dir"]) / "pseudo_counts.csv")
    decided = sum(int(r["count"]) for r in rows)
    assert not extra_passes and decided > 0 and any(r["kind"] == "negative" for r in rows)
    assert sum(p for _, p in seen_by_loss) == decided  # every decided box was handed to the loss
    assert info["pseudo"]["teacher"] == "student"


def test_text_only_encoder_switches_negatives_off_and_says_so(train_overrides, caplog):
    trainer, _ = _trainer(train_overrides, ["pseudo.conf_c=0.0"])
    with caplog.at_level("WARNING"):
        mech = trainer.mechanisms
    assert mech.rule.labels and not mech.rule.negatives
    assert mech.describe()["negatives_off_reason"] == "encoder has no image tower"
    assert "negatives are OFF" in caplog.text


def test_class_thresholds_resolve_by_the_training_data_names(train_overrides):
    """pseudo.conf_c_class names classes (or synonyms) of the data; the teacher's prefilter keeps the lowest C."""
    from medrov.errors import ConfigError

    trainer, _ = _trainer(train_overrides, ['pseudo.conf_c_class={"rbc": 0.2, "liver": 0.4}'])
    mech = trainer.mechanisms
    names = [n.split("/")[0] for n in trainer.data["names"].values()]
    assert dict(mech.rule.conf_c_class) == {names.index("red blood cell"): 0.2, names.index("liver"): 0.4}
    assert mech.rule.min_conf == 0.2 and mech.rule.conf_c == 0.9
    trainer, params = _trainer(train_overrides, ['pseudo.conf_c_class={"hepatic thing": 0.2}'])
    with pytest.raises(ConfigError, match="hepatic thing"):
        trainer.mechanisms
    from medrov.model.train import check_train_args

    with pytest.raises(ConfigError, match=r"\['hepatic thing'\] are not classes"):  # before any run starts
        check_train_args(params)


def test_mechanisms_off_means_plain_training(train_overrides):
    trainer, _ = _trainer(train_overrides, ["pseudo.labels=false", "pseudo.negatives=false"])
    assert trainer.pseudo is None and trainer.mechanisms is None


@pytest.mark.parametrize("on", [True, False])
def test_presence_sampling_switch_reaches_the_prompt_sampler(train_overrides, tiny_omnis, on):
    """pseudo.presence_sampling alone (no teacher) tracks tiles, and no image is prompted with an M=0 class of its
    source; switched off, such prompts do occur."""
    from medrov.data.presence import image_sources, presence_array
    from medrov.model.trainer import PromptSampler

    trainer, _ = _trainer(
        train_overrides,
        [
            "pseudo.labels=false",
            "pseudo.negatives=false",
            f"pseudo.presence_sampling={str(on).lower()}",
            "train.profiles.demo.extra={mosaic: 0.0}",
        ],
    )
    assert trainer.pseudo is None  # no teacher pass either way
    dataset = trainer.build_dataset(str(tiny_omnis / "train.txt"), "train", 4)
    sampler = next(t for t in dataset.transforms.transforms if isinstance(t, PromptSampler))
    assert (sampler.presence is not None) == on
    source_of_image, sources = image_sources(trainer.data["path"])
    presence = presence_array(tiny_omnis / "presence.csv", list(trainer.data["names"].values()), sources)
    names = [str(n).split("/") for n in trainer.data["names"].values()]
    unannotated_prompts = 0
    for i in range(min(len(dataset), 8)):
        item = dataset[i]
        source = source_of_image[str(Path(item["im_file"]).resolve())]
        if on:
            assert np.asarray(item["tiles"]).reshape(-1, 5)[:, 4].astype(int).tolist() == [source]
        positive = {item["texts"][int(c)] for c in item["cls"].numpy().reshape(-1)}
        blocked = np.nonzero(presence[source] == 0)[0]
        unannotated_prompts += sum(
            1 for t in item["texts"] if t not in positive and any(t in names[c] for c in blocked)
        )
    assert (unannotated_prompts == 0) == on
