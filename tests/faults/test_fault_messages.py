"""Finding 7: bounded messages; bad train settings fail in one line before any MLflow run exists; bombs named."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_label_volume_with_many_ids_gives_a_short_reason(corpus, data_params):
    src = corpus.nifti_ct(n=2)
    bad = src.items["case_001"]["label"]
    corpus.save_nifti(bad, np.arange(1, 32 * 32 * 6 + 1, dtype=np.int32).reshape(32, 32, 6))  # 6144 distinct ids
    row = corpus.run(data_params).expect_one_bad(bad, ["unknown label ids", "6142 ids"], good=1)
    assert len(row["reason"]) <= 300


def test_reasons_are_capped_and_csv_safe(corpus, data_params):
    src = corpus.coco(n=2)
    data = json.loads((src.root / "annotations.json").read_text())
    data["categories"][0]["name"] = "RBC\n" + "x" * 20000  # a hostile category name: long, with a newline
    (src.root / "annotations.json").write_text(json.dumps(data))
    result = corpus.run(data_params)
    assert result.summary["quarantined"] == 2
    with open(result.out / "quarantine.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for r in rows:
        assert len(r["reason"]) <= 300 and "\n" not in r["reason"] and "full text in the log" in r["reason"]


def test_decompression_bomb_has_a_proper_reason(corpus, data_params, monkeypatch):
    from PIL import Image

    src = corpus.voc(n=3)
    big = src.items["img_001"]["image"]
    corpus.save_image(big, np.zeros((200, 200, 3), dtype=np.uint8))
    # the real PIL check, with a limit low enough that a 200x200 image trips it like a 40000x40000 one would
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    row = corpus.run(data_params).expect_one_bad(big, ["decompression bomb", "too large"], good=2)
    assert "internal error" not in row["reason"]


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.profiles.demo.device=gpu9", ["train.profiles.demo.device", "gpu9", "not a device"]),
        ("train.profiles.demo.device='7'", ["no CUDA device 7"]),
        ("train.profiles.demo.extra={mosaicc: 0.5}", ["train.profiles.demo.extra", "mosaicc"]),
        ("train.profiles.demo.extra={mosaic: lots}", ["train.profiles.demo", "mosaic"]),
    ],
)
def test_bad_train_settings_fail_in_one_line_before_any_run(tmp_path, override, words):
    from medrov import steps
    from medrov.config import load_params
    from medrov.errors import ConfigError

    (tmp_path / "omnis.yaml").write_text("train: train.txt\nval: val.txt\nnames: {0: liver}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_params(
        ROOT / "params.yaml",
        [
            f"tracking.uri={uri}",
            f"train.data={tmp_path / 'omnis.yaml'}",
            f"train.project={tmp_path / 'runs'}",
            override,
        ],
    )
    with pytest.raises(ConfigError) as err:
        steps.train(cfg)
    message = str(err.value)
    assert "\n" not in message and len(message) < 300, message
    for word in words:
        assert word in message, message
    assert not (tmp_path / "mlflow.db").exists(), "the MLflow store was opened (a run was created) before the check"
