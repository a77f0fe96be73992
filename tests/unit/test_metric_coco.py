"""The detection metric against the reference: per-class AP50 and AP50-95 of ``medrov.model.evaluate`` agree with
pycocotools on the same predictions (hand-made cases, a crowded synthetic run; a real tiny model's predictions
are checked in tests/model/test_train.py)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from medrov.model.evaluate import IOUV, ap_per_class, match, summarise, to_coco

TOL = 0.005


def coco_reference(records: dict, names: dict[int, str], max_dets: int = 300) -> dict[int, tuple[float, float]]:
    """pycocotools' per-class (AP50, AP50-95) on ``records`` (classes without ground truth are left out, as COCO does)."""  # noqa: E501
    return coco_reference_from_json(*to_coco(records, names), max_dets=max_dets)


def coco_reference_from_json(gt_json: dict, dt_json: list, max_dets: int = 300) -> dict[int, tuple[float, float]]:
    """pycocotools' per-class (AP50, AP50-95) from COCO ground truth and results (as ``evaluate(coco_dir=...)`` writes)."""  # noqa: E501
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_json
        gt.createIndex()
        dt = gt.loadRes(dt_json) if dt_json else COCO()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class) for area "all", the largest maxDets
    out = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        if (p > -1).any():
            out[int(cat)] = (float(p[0].mean()), float(p.mean()))
    return out


def ours(records: dict) -> dict[int, tuple[float, float]]:
    stats = [
        {
            "tp": match(r["boxes"], r["conf"], r["pred"], r["gt_boxes"], r["target"]),
            "conf": r["conf"],
            "pred": r["pred"],
            "target": r["target"],
        }
        for r in records.values()
    ]
    tp = np.concatenate([s["tp"] for s in stats])
    classes, ap, _ = ap_per_class(
        tp,
        np.concatenate([s["conf"] for s in stats]),
        np.concatenate([s["pred"] for s in stats]),
        np.concatenate([s["target"] for s in stats]),
    )
    return {int(c): (float(a[0]), float(a.mean())) for c, a in zip(classes, ap)}


def record(gt: list, pred: list) -> dict:
    """gt rows (x0, y0, x1, y1, cls); pred rows (x0, y0, x1, y1, score, cls)."""
    gt = np.asarray(gt, float).reshape(-1, 5)
    pred = np.asarray(pred, float).reshape(-1, 6)
    return {
        "gt_boxes": gt[:, :4],
        "target": gt[:, 4].astype(int),
        "boxes": pred[:, :4],
        "conf": pred[:, 4],
        "pred": pred[:, 5].astype(int),
    }


def assert_agrees(records: dict, names: dict[int, str]) -> dict[int, tuple[float, float]]:
    ref, got = coco_reference(records, names), ours(records)
    assert set(got) == set(ref), f"classes differ: ours {sorted(got)} vs COCO {sorted(ref)}"
    for c in ref:
        assert abs(got[c][0] - ref[c][0]) <= TOL, f"class {c} AP50: ours {got[c][0]:.4f} vs COCO {ref[c][0]:.4f}"
        assert abs(got[c][1] - ref[c][1]) <= TOL, f"class {c} AP50-95: ours {got[c][1]:.4f} vs COCO {ref[c][1]:.4f}"
    return ref


def test_confident_prediction_keeps_its_box_against_a_closer_weak_duplicate():
    # the case measured on the demo: a liver at conf 0.330 / IoU 0.71 and a near-duplicate at conf 0.079 / IoU 0.75
    gt = [[10, 10, 60, 60, 0]]
    confident = [10, 10, 60, 80, 0.33, 0]  # IoU 0.714 with the box
    weak = [10, 10, 60, 76, 0.079, 0]  # IoU 0.758
    tp = match(
        np.array([confident[:4], weak[:4]]),
        np.array([0.33, 0.079]),
        np.array([0, 0]),
        np.array([gt[0][:4]]),
        np.array([0]),
    )
    assert tp[0, 0] and not tp[1, 0], "the confident prediction must take the box at IoU 0.5"
    assert not tp[0, 5] and tp[1, 5], "at IoU 0.75 only the weak one overlaps enough, and the box is still free"
    ref = assert_agrees({"a.png": record(gt, [confident, weak])}, {0: "liver"})
    assert ref[0][0] == pytest.approx(1.0)


def test_hand_made_cases_agree_with_pycocotools():
    names = {0: "liver", 1: "spleen", 2: "kidney", 3: "never predicted"}
    records = {
        # two overlapping predictions on one box, the better-placed one less confident
        "dup.png": record([[0, 0, 40, 40, 0]], [[0, 0, 40, 44, 0.9, 0], [0, 0, 40, 41, 0.5, 0]]),
        # a crowded scene: touching boxes, predictions shifted so that greedy order matters
        "crowd.png": record(
            [[0, 0, 20, 20, 1], [15, 0, 35, 20, 1], [30, 0, 50, 20, 1], [0, 30, 20, 50, 1]],
            [
                [5, 0, 25, 20, 0.95, 1],
                [12, 0, 32, 20, 0.9, 1],
                [30, 0, 50, 21, 0.6, 1],
                [60, 60, 80, 80, 0.7, 1],
                [0, 30, 19, 50, 0.2, 1],
                [0, 0, 20, 20, 0.1, 1],
            ],
        ),
        # wrong class on a box, a false positive ranked first, and a class with ground truth but no prediction
        "mixed.png": record(
            [[0, 0, 30, 30, 2], [50, 50, 70, 70, 3], [40, 0, 60, 20, 0]],
            [[0, 0, 30, 30, 0.8, 0], [0, 0, 30, 30, 0.3, 2], [80, 80, 99, 99, 0.99, 2]],
        ),
        # an image with predictions and no ground truth at all
        "empty.png": record([], [[0, 0, 10, 10, 0.97, 0]]),
    }
    ref = assert_agrees(records, names)
    assert ref[3] == (0.0, 0.0) and 0 < ref[1][0] < 1


def test_crowded_random_run_agrees_with_pycocotools():
    rng = np.random.default_rng(0)
    names = {c: f"class {c}" for c in range(5)}
    records = {}
    for i in range(60):
        n = int(rng.integers(0, 12))
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(8, 60, (n, 2))
        cls = rng.integers(0, 5, n)
        gt = np.c_[xy, xy + wh, cls]
        preds = []
        for g in gt:
            for _ in range(int(rng.integers(0, 4))):  # 0-3 jittered detections per box, some of the wrong class
                jitter = rng.normal(0, 0.15, 4) * np.r_[g[2] - g[0], g[3] - g[1], g[2] - g[0], g[3] - g[1]]
                c = g[4] if rng.random() < 0.85 else rng.integers(0, 5)
                preds.append([*(g[:4] + jitter), rng.uniform(0, 1), c])
        for _ in range(int(rng.integers(0, 6))):  # background false positives
            p = rng.uniform(0, 200, 2)
            preds.append([*p, *(p + rng.uniform(8, 60, 2)), rng.uniform(0, 1), rng.integers(0, 5)])
        records[f"img_{i:03d}.png"] = record(gt.tolist(), preds)
    ref = assert_agrees(records, names)
    assert len(ref) == 5 and all(0.05 < ap50 < 0.95 for ap50, _ in ref.values())


def test_summarise_groups_base_and_novel_classes():
    records = {"a.png": record([[0, 0, 10, 10, 0], [20, 20, 30, 30, 1]], [[0, 0, 10, 10, 0.9, 0]])}
    stats = [
        {
            "tp": match(r["boxes"], r["conf"], r["pred"], r["gt_boxes"], r["target"]),
            "conf": r["conf"],
            "pred": r["pred"],
            "target": r["target"],
        }
        for r in records.values()
    ]
    out = summarise(stats, novel={1})
    assert out["base"]["map50"] == pytest.approx(1.0) and out["novel"]["map50"] == 0.0
    assert out["all"]["map50"] == pytest.approx(0.5) and out["all"]["classes"] == 2
    assert len(IOUV) == 10 and out["_curves"]["prec"].shape == (2, 101)
