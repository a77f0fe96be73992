"""Validation during training (best checkpoint, `medrov tune`'s objective) scores each image only on the classes
its presence row annotates, as `medrov evaluate` does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
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
