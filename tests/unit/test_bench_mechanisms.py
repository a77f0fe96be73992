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
    assert out["pairs"]["CT/liver"] == {"m": 1, "ap50": pytest.approx(1.0), "recall": 1.0, "boxes": 1}
    assert out["pairs"]["CT/kidney"]["m"] == 0 and out["pairs"]["CT/kidney"]["ap50"] == 0.0
    assert out["pairs"]["CT/tumour"]["m"] == 0 and out["pairs"]["CT/tumour"]["ap50"] == 0.0
    assert out["m0"] == pytest.approx(0.0) and out["m1"] == pytest.approx(1.0)  # CT/liver and Smear/tumour
    assert out["m0_recall"] == 0.0 and out["m1_recall"] == 1.0
    # shown only from 0.75: the smear tumour (0.7) keeps its AP (ranking) but is no longer shown to a user
    strict = bench.pair_scores(gt, dt, {"ct.png": "CT", "smear.png": "Smear"}, presence, novel=set(), shown=0.75)
    assert (
        strict["pairs"]["Smear/tumour"]["ap50"] == pytest.approx(1.0) and strict["pairs"]["Smear/tumour"]["recall"] == 0
    )
    assert strict["m1_recall"] == 0.5
    held_out = bench.pair_scores(gt, dt, {"ct.png": "CT", "smear.png": "Smear"}, presence, novel={2})
    assert set(held_out["pairs"]) == {"CT/liver", "CT/kidney"} and held_out["m0"] == 0.0 and held_out["m1"] == 1.0


def test_pseudo_quality_scores_the_rule_against_the_hidden_truth(bench):
    """The rule (pseudo.decide) on a teacher's detections: only confident boxes of M=0 classes away from the
    annotated boxes become labels; precision and recall are counted against the truth the demo leaves out."""
    presence = pd.DataFrame([[1, 0, 0]], index=["CT"], columns=["liver", "kidney", "tumour"])
    gt = {
        "images": [{"id": 1, "file_name": "ct.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 0, "bbox": [0, 0, 10, 10]},  # liver: annotated (M=1)
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10]},  # kidney: hidden (M=0)
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [60, 0, 10, 10]},  # a second hidden kidney
            {"id": 4, "image_id": 1, "category_id": 2, "bbox": [40, 40, 6, 6]},  # tumour: hidden, but novel
        ],
    }
    dt = [
        {"image_id": 1, "category_id": 0, "score": 0.99, "bbox": [0, 0, 10, 10]},  # the annotated liver: no label
        {"image_id": 1, "category_id": 1, "score": 0.95, "bbox": [20, 20, 10, 10]},  # a right kidney label
        {"image_id": 1, "category_id": 1, "score": 0.92, "bbox": [90, 90, 8, 8]},  # a wrong kidney label
        {"image_id": 1, "category_id": 1, "score": 0.6, "bbox": [60, 0, 10, 10]},  # right, but below C
        {"image_id": 1, "category_id": 2, "score": 0.97, "bbox": [40, 40, 6, 6]},  # novel: never a target here
    ]
    q = bench.pseudo_quality(gt, dt, {"ct.png": "CT"}, presence, {2}, conf_c=0.9, iou_t=0.3, nms_iou=0.3)
    assert q == {"labels": 2, "correct": 1, "missing": 2, "precision": 0.5, "recall": 0.5}
    low = bench.pseudo_quality(gt, dt, {"ct.png": "CT"}, presence, {2}, conf_c=0.5, iou_t=0.3, nms_iou=0.3)
    assert (low["labels"], low["correct"], low["recall"]) == (3, 2, 1.0)
    none = bench.pseudo_quality(gt, [], {"ct.png": "CT"}, presence, {2}, conf_c=0.9, iou_t=0.3, nms_iou=0.3)
    assert none["labels"] == 0 and none["precision"] is None and none["recall"] == 0.0


def test_calibrated_c_is_the_lowest_score_that_keeps_the_precision():
    spec = importlib.util.spec_from_file_location("bench_missing", ROOT / "bench" / "missing_labels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5]
    hits = [True, True, True, False, True, False]  # precision from the top: 1, 1, 1, .75, .8, .67
    assert module.precision_threshold(scores, hits, 1.0) == 0.8
    assert module.precision_threshold(scores, hits, 0.8) == 0.6
    assert module.precision_threshold(scores, [False] * 6, 0.5) == 1.0  # never precise enough: no pseudo-label


def test_bccd_split_sources_read_their_own_presence_rows(tmp_path):
    """derive(): each training image of BCCD_A / BCCD_B is read with its new source's row (M=0 for the class it
    drops), and its labels lack that class; val and test keep the fully annotated BCCD row."""
    import pandas as pd
    import yaml

    from medrov.data.presence import presence_rows

    spec = importlib.util.spec_from_file_location("bench_missing", ROOT / "bench" / "missing_labels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src = tmp_path / "src"
    names = {0: "platelets", 1: "red blood cell/rbc", 2: "white blood cell/wbc"}
    rows = []
    for i, split in enumerate(["train"] * 4 + ["val", "test"]):
        image, label = f"images/BCCD/im{i}.png", f"labels/BCCD/im{i}.txt"
        for rel in (image, label):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / image).write_bytes(b"png")
        (src / label).write_text("0 0.2 0.2 0.1 0.1\n1 0.5 0.5 0.2 0.2\n2 0.8 0.8 0.2 0.2\n")
        rows.append({"image": image, "label": label, "source": "BCCD", "split": split, "presence_row": "BCCD"})
    pd.DataFrame(rows).to_parquet(src / "manifest.parquet")
    pd.DataFrame({"image": [r["image"] for r in rows], "class_id": 0}).to_parquet(src / "boxes.parquet")
    columns = [n.split("/")[0] for n in names.values()]  # presence.csv names classes without synonyms
    pd.DataFrame([[1, 1, 1]], index=pd.Index(["BCCD"], name="source"), columns=columns).to_csv(src / "presence.csv")
    (src / "omnis.yaml").write_text(yaml.safe_dump({"names": names, "nc": 3, "novel": [2]}))
    out = module.derive(src, tmp_path / "out")
    table = presence_rows(out, columns)
    manifest = pd.read_parquet(out / "manifest.parquet")
    for r in manifest.itertuples():
        row = table.matrix[table.image_rel[r.image]]
        if r.split == "train":
            dropped = 2 if r.source == "BCCD_A" else 0
            assert table.names[table.image_rel[r.image]] == r.source and row[dropped] == 0 and row.sum() == 2
            classes = {int(ln.split()[0]) for ln in (out / r.label).read_text().splitlines()}
            assert classes == {0, 1, 2} - {dropped} and r.n_boxes == 2
        else:
            assert table.names[table.image_rel[r.image]] == "BCCD" and list(row) == [1, 1, 1]
    assert set(manifest["source"]) == {"BCCD_A", "BCCD_B", "BCCD"}
