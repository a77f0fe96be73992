"""Validation during training (best checkpoint, `medrov tune`'s objective) scores each image only on the classes
its presence row annotates, as `medrov evaluate` does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medrov.config import load_params
from medrov.data.presence import presence_rows
from medrov.model.trainer import PresenceValidator, annotated_only
from tests.conftest import ROOT


def test_predictions_of_unannotated_classes_are_not_scored():
    pred = {
        "bboxes": torch.tensor([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 4, 4]], dtype=torch.float32),
        "conf": torch.tensor([0.9, 0.8, 0.7]),
        "cls": torch.tensor([0.0, 1.0, 2.0]),
        "extra": torch.zeros(3, 0),
    }
    kept = annotated_only(pred, np.array([True, False, True]))
    assert kept["cls"].tolist() == [0.0, 2.0] and torch.equal(kept["conf"], pred["conf"][[0, 2]])
    assert kept["bboxes"].shape == (2, 4) and kept["extra"].shape == (2, 0)
    assert annotated_only(pred, None) is pred  # an image without a presence row keeps everything


def test_each_image_uses_its_own_sources_row(tiny_omnis):
    import yaml

    data = yaml.safe_load((tiny_omnis / "omnis.yaml").read_text())
    v = PresenceValidator()
    v.data = {"path": str(tiny_omnis), "names": data["names"]}
    names = [str(n).split("/")[0] for n in data["names"].values()]
    manifest = pd.read_parquet(tiny_omnis / "manifest.parquet")
    image = manifest[manifest["source"] == "SynthKidneyCT"]["image"].iloc[0]
    annotated = v.annotated(str(tiny_omnis / image))
    assert annotated[names.index("right kidney")] and not annotated[names.index("liver")]  # liver: M=0 there
    assert v.annotated(str(tiny_omnis / "no-such-image.png")) is None


def test_training_validates_with_the_presence_protocol(train_overrides, monkeypatch):
    from ultralytics.models.yolo.detect import DetectionValidator

    from medrov.model.train import train

    seen = []
    update = DetectionValidator.update_metrics

    def spy(self, preds, batch):
        seen.append((type(self), [(f, p["cls"].long().tolist()) for p, f in zip(preds, batch["im_file"])]))
        return update(self, preds, batch)

    monkeypatch.setattr(DetectionValidator, "update_metrics", spy)
    params = load_params(ROOT / "params.yaml", train_overrides)
    train(params)
    assert seen and all(t is PresenceValidator for t, _ in seen)
    rows = presence_rows(Path(params.train.data).parent)
    for _, images in seen:
        for f, classes in images:
            row = rows.image_row[str(Path(f).resolve())]
            assert all(rows.matrix[row, c] == 1 for c in classes), (f, classes)


def _fully_annotated_copy(tiny_omnis: Path, dest: Path) -> Path:
    """A copy of the tiny Omnis whose presence says every source annotates every class it may hold (M=0 -> 1)."""
    import shutil

    shutil.copytree(tiny_omnis, dest, ignore=shutil.ignore_patterns("*.cache"))
    table = pd.read_csv(dest / "presence.csv", index_col=0)
    table.replace(0, 1).to_csv(dest / "presence.csv")
    return dest


def test_val_data_must_exist_and_name_the_same_classes(tiny_omnis, tmp_path, train_overrides):
    import yaml

    from medrov.errors import ConfigError
    from medrov.model.train import check_train_args, val_data_file

    params = load_params(ROOT / "params.yaml", train_overrides)
    data = yaml.safe_load((tiny_omnis / "omnis.yaml").read_text())
    assert val_data_file(params, data) is None  # unset: the training data's own val split
    other = _fully_annotated_copy(tiny_omnis, tmp_path / "full")
    ok = load_params(ROOT / "params.yaml", [*train_overrides, f"train.val_data={other / 'omnis.yaml'}"])
    assert val_data_file(ok, data) == str(other / "omnis.yaml")
    missing = load_params(ROOT / "params.yaml", [*train_overrides, f"train.val_data={tmp_path / 'none.yaml'}"])
    with pytest.raises(ConfigError, match=r"train.val_data: .*none.yaml: dataset file not found"):
        check_train_args(missing)
    spec = yaml.safe_load((other / "omnis.yaml").read_text())
    spec["names"] = {**spec["names"], 0: "not a catalogue class"}
    (tmp_path / "renamed.yaml").write_text(yaml.safe_dump({**spec, "path": str(other)}))
    renamed = load_params(ROOT / "params.yaml", [*train_overrides, f"train.val_data={tmp_path / 'renamed.yaml'}"])
    with pytest.raises(ConfigError, match="its classes differ"):
        check_train_args(renamed)


def test_training_validates_on_val_data_with_its_own_presence(train_overrides, tiny_omnis, tmp_path, monkeypatch):
    """``train.val_data``: the epoch's validation reads another Omnis's val images and scores them by that
    Omnis's presence rows (a fully annotated copy keeps predictions of classes the training data leaves M=0)."""
    from ultralytics.models.yolo.detect import DetectionValidator

    from medrov.model.train import train

    other = _fully_annotated_copy(tiny_omnis, tmp_path / "full")
    seen = []
    update = DetectionValidator.update_metrics

    def spy(self, preds, batch):
        seen.append([(f, self.annotated(f)) for f in batch["im_file"]])
        return update(self, preds, batch)

    monkeypatch.setattr(DetectionValidator, "update_metrics", spy)
    params = load_params(ROOT / "params.yaml", [*train_overrides, f"train.val_data={other / 'omnis.yaml'}"])
    info = train(params)
    files = [Path(f).resolve() for images in seen for f, _ in images]
    assert files and all(f.is_relative_to(other.resolve()) for f in files)  # the copy's images, not the original's
    ours, theirs = presence_rows(tiny_omnis), presence_rows(other)
    now_scored = 0
    for images in seen:
        for f, annotated in images:
            resolved = Path(f).resolve()
            assert np.array_equal(annotated, theirs.matrix[theirs.image_row[str(resolved)]] == 1), f
            own = ours.matrix[ours.image_rel[str(resolved.relative_to(other.resolve()))]]
            now_scored += int(np.sum(annotated & (own == 0)))
    assert now_scored > 0  # the copy's rows: classes the training data leaves M=0 are scored there
    assert info["params"]["train.val_data"] == str(other / "omnis.yaml")
