"""bench/mechanisms.py's metric: mAP50 over (source, class) pairs grouped by the demo's presence value."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_mechanisms", ROOT / "bench" / "mechanisms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pairs_are_grouped_by_presence_and_novel_classes_left_out(bench):
    presence = pd.DataFrame([[1, 0, 0], [-1, -1, 1]], index=["CT", "Smear"], columns=["liver", "kidney", "tumour"])
    gt = {
        "images": [{"id": 1, "file_name": "ct.png"}, {"id": 2, "file_name": "smear.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 0, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10]},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [40, 40, 5, 5]},
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [0, 0, 8, 8]},
        ],
    }
    dt = [
        {"image_id": 1, "category_id": 0, "score": 0.9, "bbox": [0, 0, 10, 10]},  # liver found
        {"image_id": 1, "category_id": 1, "score": 0.8, "bbox": [60, 60, 10, 10]},  # kidney missed (wrong place)
        {"image_id": 2, "category_id": 2, "score": 0.7, "bbox": [0, 0, 8, 8]},
    ]  # smear tumour found
    out = bench.pair_scores(gt, dt, {"ct.png": "CT", "smear.png": "Smear"}, presence, novel=set())
    assert out["pairs"]["CT/liver"] == {"m": 1, "ap50": pytest.approx(1.0), "boxes": 1}
    assert out["pairs"]["CT/kidney"]["m"] == 0 and out["pairs"]["CT/kidney"]["ap50"] == 0.0
    assert out["pairs"]["CT/tumour"]["m"] == 0 and out["pairs"]["CT/tumour"]["ap50"] == 0.0
    assert out["m0"] == pytest.approx(0.0) and out["m1"] == pytest.approx(1.0)  # CT/liver and Smear/tumour
    held_out = bench.pair_scores(gt, dt, {"ct.png": "CT", "smear.png": "Smear"}, presence, novel={2})
    assert set(held_out["pairs"]) == {"CT/liver", "CT/kidney"} and held_out["m0"] == 0.0 and held_out["m1"] == 1.0
