"""The ``evaluate`` step: open-vocabulary mAP on an Omnis split.

Each source is evaluated with the classes it annotates (presence M=1) as text prompts, the usual protocol of
multi-dataset detection (a source's unannotated classes cannot be scored). An image of a per-image source is scored
on its own row: predictions of a class with M!=1 there (not annotated in that image) are not false positives.
Novel classes were held out of training; here they are prompted like any other class. Reported: mAP50 and
mAP50-95 over base, novel and base+novel classes, for the whole split, per modality and per source; PR curves
and a per-modality bar chart as PNGs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from medrov import paths
from medrov.config import EvaluateParams, Params
from medrov.data import layout
from medrov.data.presence import annotated_classes, presence_rows, read_presence
from medrov.errors import ConfigError
from medrov.model.detector import Detector
from medrov.model.overlays import Panel, pick, write_grid

log = logging.getLogger(__name__)
IOUV = np.linspace(0.5, 0.95, 10)


def match(pred_boxes, pred_conf, pred_cls, gt_boxes, gt_cls, iouv: np.ndarray = IOUV) -> np.ndarray:
    """(n_pred, len(iouv)) true-positive matrix of one image, matched as COCO does.

    Predictions are taken in descending confidence; each takes the unmatched ground-truth box of its class with
    the highest IoU at or above the threshold, so a weak near-duplicate can never steal the box of a confident
    prediction (pycocotools ``COCOeval.evaluateImg``; ultralytics' ``match_predictions`` is close to it).
    """
    import torch
    from torchvision.ops import box_iou

    n_pred, n_gt = len(pred_boxes), len(gt_boxes)
    tp = np.zeros((n_pred, len(iouv)), dtype=bool)
    if not n_pred or not n_gt:
        return tp
    # copies: ultralytics hands read-only arrays, which torch warns about on every image
    iou = box_iou(
        torch.from_numpy(np.array(pred_boxes, dtype=float)), torch.from_numpy(np.array(gt_boxes, dtype=float))
    ).numpy()
    iou = iou * (np.asarray(pred_cls)[:, None] == np.asarray(gt_cls)[None, :])
    # only predictions that reach the lowest threshold with some box can be true positives
    order = [p for p in np.argsort(-np.asarray(pred_conf, float), kind="mergesort") if iou[p].max() >= iouv.min()]
    for k, thr in enumerate(iouv):
        free = np.ones(n_gt, dtype=bool)
        for p in order:
            cand = np.where(free, iou[p], -1.0)
            g = int(cand.argmax())
            if cand[g] >= thr:
                tp[p, k] = True
                free[g] = False
    return tp


RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray):
    """COCO average precision per class that has ground truth.

    Detections of a class are ranked by confidence over all images; precision is made monotone (the envelope) and
    read at 101 recall points (pycocotools ``COCOeval.accumulate``), never linearly interpolated.

    Returns:
        ``classes`` (n,), ``ap`` (n, len(iouv)) and ``precision`` (n, 101) at IoU 0.5 on ``RECALL_POINTS``.
    """
    classes, n_gt = np.unique(target_cls, return_counts=True)
    ap = np.zeros((len(classes), tp.shape[1]))
    curve = np.zeros((len(classes), len(RECALL_POINTS)))
    for i, (c, npos) in enumerate(zip(classes, n_gt)):
        sel = pred_cls == c
        if not sel.any():
            continue
        order = np.argsort(-conf[sel], kind="mergesort")
        hits = tp[sel][order]
        tps = np.cumsum(hits, axis=0)
        fps = np.cumsum(~hits, axis=0)
        recall = tps / npos
        precision = tps / np.maximum(tps + fps, np.finfo(float).eps)
        envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
        for k in range(tp.shape[1]):
            idx = np.searchsorted(recall[:, k], RECALL_POINTS, side="left")
            q = np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1), k], 0.0)
            ap[i, k] = q.mean()
            if k == 0:
                curve[i] = q
    return classes, ap, curve


def summarise(stats: list[dict[str, np.ndarray]], novel: set[int]) -> dict[str, Any]:
    """mAP50 / mAP50-95 over all, base and novel classes that have ground truth in ``stats``."""
    target = np.concatenate([s["target"] for s in stats]) if stats else np.zeros(0)
    if not len(target):
        return {"images": len(stats), "boxes": 0}
    tp = np.concatenate([s["tp"] for s in stats])
    conf = np.concatenate([s["conf"] for s in stats])
    pred = np.concatenate([s["pred"] for s in stats])
    classes, ap, curve = ap_per_class(tp, conf, pred, target)
    out: dict[str, Any] = {"images": len(stats), "boxes": int(len(target)), "classes": int(len(classes))}
    for group, mask in (
        ("all", np.ones(len(classes), bool)),
        ("base", ~np.isin(classes, list(novel))),
        ("novel", np.isin(classes, list(novel))),
    ):
        if mask.any():
            out[group] = {
                "map50": float(ap[mask, 0].mean()),
                "map50_95": float(ap[mask].mean()),
                "classes": int(mask.sum()),
            }
    out["_curves"] = {"x": RECALL_POINTS, "prec": curve, "classes": classes, "ap50": ap[:, 0]}
    return out


def to_coco(
    records: dict[str, dict[str, np.ndarray]], names: dict[int, str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Ground truth and detections of an evaluation in COCO's formats (boxes as pixel x, y, w, h), so any COCO tool
    (pycocotools, faster-coco-eval) can recompute the figures from the same predictions."""
    images, annotations, detections = [], [], []
    for image_id, (image, r) in enumerate(sorted(records.items()), start=1):
        images.append({"id": image_id, "file_name": image})
        for (x0, y0, x1, y1), c in zip(r["gt_boxes"], r["target"]):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(c),
                    "iscrowd": 0,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float((x1 - x0) * (y1 - y0)),
                }
            )
        for (x0, y0, x1, y1), score, c in zip(r["boxes"], r["conf"], r["pred"]):
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(c),
                    "score": float(score),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                }
            )
    categories = [{"id": int(c), "name": n} for c, n in sorted(names.items())]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def scored_classes(rows, image: str, prompted: list[int]) -> set[int]:
    """The classes whose predictions are scored on ``image``: the prompted ones that its presence row marks
    annotated (M=1). A class with M=0 in an image's own row may be there unlabelled: a prediction of it is neither
    a true nor a false positive."""
    own = rows.annotated(image)
    return set(prompted) & own if own else set(prompted)


def _strip(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def evaluate(
    weights: str | Path,
    params: Params,
    split: str | None = None,
    out_metrics: str | Path | None = None,
    plots_dir: str | Path | None = None,
    imgsz: int | None = None,
    prompter=None,
    coco_dir: str | Path | None = None,
    prompts: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate ``weights`` on a split of the Omnis dataset named by ``params.train.data``.

    ``prompter`` reuses an already loaded text encoder (the trainer's, for per-epoch evaluation); by default the
    encoder of ``params.text`` is loaded. ``coco_dir`` receives the ground truth and the predictions in COCO's
    formats (``coco_gt.json``, ``coco_dt.json``) for a cross-check with a COCO tool. ``prompts`` replaces the
    prompt of a class (canonical name -> text, e.g. ``{"red blood cell": "erythrocyte"}``) to test open vocabulary.
    """
    from medrov.model.build import Prompter, prompt_name
    from medrov.text import load_encoder

    ep: EvaluateParams = params.evaluate
    split = split or ep.split
    root = paths.project_root()
    data_file = Path(params.train.data) if Path(params.train.data).is_absolute() else root / params.train.data
    if not data_file.is_file():
        raise ConfigError(f"{data_file}: dataset file not found (run `medrov convert` first)")
    data_file = layout.readable_file(data_file)  # a sharded dataset: its extracted per-image folder
    data_dir = data_file.parent
    spec = yaml.safe_load(data_file.read_text())
    names = {int(k): v for k, v in spec["names"].items()}
    novel = set(int(c) for c in spec.get("novel", []))
    manifest = pd.read_parquet(data_dir / "manifest.parquet")
    manifest = manifest[manifest["split"] == split]
    if manifest.empty:
        raise ConfigError(f"{data_dir}: the {split} split has no images")
    boxes = pd.read_parquet(data_dir / "boxes.parquet")
    boxes = boxes[boxes["image"].isin(set(manifest["image"]))]
    presence = read_presence(data_dir / "presence.csv")
    image_presence = presence_rows(data_dir, list(names.values()))
    by_name = {prompt_name(n): i for i, n in names.items()}

    cache = None if params.text.cache_dir is None else (root / params.text.cache_dir)
    detector = Detector(weights)
    if detector.open_vocabulary:
        detector.prompter = prompter or Prompter(load_encoder(params.text.encoder, params.text.fallback), cache)
    size = imgsz or _train_imgsz(weights) or 640
    gt = {img: g for img, g in boxes.groupby("image")}
    stats: dict[str, dict[str, np.ndarray]] = {}
    records: dict[str, dict[str, np.ndarray]] = {}
    panels = []
    shown = {img for _, g in manifest.groupby("modality") for img in pick(list(g["image"]), ep.overlays)}
    start = time.time()
    for source, rows in manifest.groupby("source"):
        annotated = annotated_classes(presence, source)
        class_ids = sorted(by_name[c] for c in annotated if c in by_name)
        if not class_ids:
            log.warning("evaluate: source %s annotates no vocabulary class; skipped", source)
            continue
        vocabulary = [(prompts or {}).get(prompt_name(names[c]), names[c]) for c in class_ids]
        detector.set_vocabulary(vocabulary)
        prompt_class = {prompt_name(v): c for v, c in zip(vocabulary, class_ids)}
        images = list(rows["image"])
        dets = detector.predict(
            [data_dir / p for p in images], imgsz=size, conf=ep.conf, iou=ep.iou, max_det=ep.max_det
        )
        for img, det in zip(images, dets):
            g = gt.get(img)
            g = g[g["class_id"].isin(class_ids)] if g is not None else None
            gt_boxes = g[["x0", "y0", "x1", "y1"]].to_numpy(float) if g is not None else np.zeros((0, 4))
            gt_cls = g["class_id"].to_numpy(int) if g is not None else np.zeros(0, int)
            pred_cls = np.array([prompt_class[n] for n in det.names], dtype=int)
            det_boxes = np.asarray(det.boxes, float).reshape(-1, 4)
            det_scores = np.asarray(det.scores, float).reshape(-1)
            scored = scored_classes(image_presence, img, class_ids)
            keep = np.isin(pred_cls, sorted(scored))
            det_boxes, det_scores, pred_cls = det_boxes[keep], det_scores[keep], pred_cls[keep]
            stats[img] = {
                "tp": match(det_boxes, det_scores, pred_cls, gt_boxes, gt_cls),
                "conf": det_scores,
                "pred": pred_cls,
                "target": gt_cls,
            }
            if img in shown:
                panels.append(
                    Panel(
                        data_dir / img,
                        f"{source} {Path(img).stem[-14:]}",
                        gt_boxes,
                        [prompt_name(names[c]) for c in gt_cls],
                        det_boxes,
                        [prompt_name(names[c]) for c in pred_cls],
                        det_scores,
                        [prompt_name(names[c]) for c in class_ids],
                    )
                )
            if coco_dir is not None:
                records[img] = {
                    "boxes": det_boxes,
                    "conf": det_scores,
                    "pred": pred_cls,
                    "gt_boxes": gt_boxes,
                    "target": gt_cls,
                }
    seconds = time.time() - start
    info = manifest.set_index("image")
    result: dict[str, Any] = {
        "split": split,
        "weights": str(weights),
        "open_vocabulary": detector.open_vocabulary,
        "imgsz": size,
        "images": len(stats),
        "seconds": round(seconds, 1),
    }
    if detector.open_vocabulary:
        result["encoder"] = detector.prompter.describe()
    overall = summarise(list(stats.values()), novel)
    result.update({k: overall.get(k) for k in ("all", "base", "novel") if k in overall})
    curves = overall.get("_curves")
    if curves is not None:
        result["class"] = {prompt_name(names[int(c)]): float(ap) for c, ap in zip(curves["classes"], curves["ap50"])}
    result["modality"] = {
        m: _strip(summarise([stats[i] for i in g.index if i in stats], novel)) for m, g in info.groupby("modality")
    }
    result["source"] = {
        s: _strip(summarise([stats[i] for i in g.index if i in stats], novel)) for s, g in info.groupby("source")
    }
    if coco_dir is not None:
        gt_json, dt_json = to_coco(records, names)
        Path(coco_dir).mkdir(parents=True, exist_ok=True)
        (Path(coco_dir) / "coco_gt.json").write_text(json.dumps(gt_json))
        (Path(coco_dir) / "coco_dt.json").write_text(json.dumps(dt_json))
    if out_metrics or ep.metrics:
        path = Path(out_metrics or root / ep.metrics)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    if plots_dir or ep.plots:
        _plots(overall, result, names, novel, Path(plots_dir or root / ep.plots))
        modality = info["modality"].to_dict()
        panels.sort(key=lambda p: (modality[str(p.image.relative_to(data_dir))], str(p.image)))
        write_grid(
            panels, Path(plots_dir or root / ep.plots) / "overlays.png", ep.overlay_conf, cols=max(1, ep.overlays)
        )
    log.info(
        "evaluate: mAP50 all %s base %s novel %s", *(result.get(k, {}).get("map50") for k in ("all", "base", "novel"))
    )
    return result


def _train_imgsz(weights) -> int | None:
    from medrov.model.ultra import prepare_ultralytics
    from medrov.model.weights import trusted

    try:
        prepare_ultralytics()
        from ultralytics.nn.tasks import torch_safe_load

        ckpt, _ = torch_safe_load(
            str(weights), safe_only=not trusted()
        )  # weights are data: weights_only unless trusted
        return int((ckpt.get("train_args") or {}).get("imgsz") or 0) or None
    except Exception:
        return None


def _plots(overall: dict[str, Any], result: dict[str, Any], names, novel: set[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    curves = overall.get("_curves")
    fig, ax = plt.subplots(figsize=(6, 5))
    if curves is not None and len(curves["classes"]):
        x, prec, classes = curves["x"], curves["prec"], curves["classes"]
        for group, mask, colour in (
            ("base", ~np.isin(classes, list(novel)), "#4C72B0"),
            ("novel", np.isin(classes, list(novel)), "#C44E52"),
        ):
            if mask.any():
                ax.plot(
                    x,
                    prec[mask].mean(0),
                    color=colour,
                    lw=2.5,
                    label=f"{group} ({mask.sum()} classes) mAP50 {curves['ap50'][mask].mean():.3f}",
                )
                for row in prec[mask]:
                    ax.plot(x, row, color=colour, lw=0.5, alpha=0.3)
    ax.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=f"PR at IoU 0.5 ({result['split']} split)",
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no ground truth on this split", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out / "pr_curve.png", dpi=110)
    plt.close(fig)

    fig = _modality_figure(result)
    fig.savefig(out / "map50_per_modality.png", dpi=110)
    plt.close(fig)


def _modality_figure(result: dict[str, Any]):
    """Bars of mAP50 per modality for all, base and novel classes, each labelled with its value; a group with no
    ground truth in a modality is a hatched "no GT" outline, so it never reads as a score of 0.0."""
    import matplotlib.pyplot as plt

    mods = sorted(result["modality"])
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(mods)), 4.5))
    width = 0.27
    groups = (("all", "#55A868"), ("base", "#4C72B0"), ("novel", "#C44E52"))
    table = {g: [result["modality"][m].get(g, {}).get("map50") for m in mods] for g, _ in groups}
    known = [v for vals in table.values() for v in vals if v is not None]
    # small demo scores would be invisible on a 0..1 axis; the labels carry the exact values either way
    top = min(1.0, max(0.1, 1.25 * max(known, default=0.0)))
    for k, (group, colour) in enumerate(groups):
        x = np.arange(len(mods)) + (k - 1) * width
        vals = table[group]
        scored = [i for i, v in enumerate(vals) if v is not None]
        bars = ax.bar(x[scored], [vals[i] for i in scored], width, label=group, color=colour)
        ax.bar_label(bars, labels=[_bar_value(vals[i]) for i in scored], fontsize=7, padding=2, rotation=90)
        # no ground truth of this group in the modality: a hatched outline, not a bar of height 0.0
        absent = [i for i, v in enumerate(vals) if v is None]
        if absent:
            ax.bar(x[absent], [top * 0.06] * len(absent), width, fill=False, hatch="///", edgecolor=colour, lw=0.8)
            for i in absent:
                ax.text(x[i], top * 0.07, "no GT", ha="center", va="bottom", fontsize=7, rotation=90, color="#555")
    ax.set_xticks(np.arange(len(mods)), mods)
    ax.set(
        ylabel="mAP50",
        ylim=(0, top * 1.15),
        title=f"mAP50 per modality ({result['split']} split; hatched = no ground truth)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _bar_value(v: float) -> str:
    """A bar's label: three decimals, or two significant digits below 0.001 (demo scores), so only 0.0 reads 0.000."""
    return f"{v:.3f}" if v == 0 or v >= 0.001 else f"{v:.1e}"
