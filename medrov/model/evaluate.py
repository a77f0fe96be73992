"""The ``evaluate`` step: open-vocabulary mAP on an Omnis split.

Each source is evaluated with the classes it annotates (presence M=1) as text prompts, the usual protocol of
multi-dataset detection (a source's unannotated classes cannot be scored). Novel classes were held out of training;
here they are prompted like any other class. Reported: mAP50 and mAP50-95 over base, novel and base+novel
classes, for the whole split, per modality and per source; PR curves and a per-modality bar chart as PNGs.
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
from medrov.data.presence import annotated_classes, read_presence
from medrov.errors import ConfigError
from medrov.model.detector import Detector

log = logging.getLogger(__name__)
IOUV = np.linspace(0.5, 0.95, 10)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match(pred_boxes, pred_cls, gt_boxes, gt_cls) -> np.ndarray:
    """(n_pred, 10) true-positive matrix at IoU 0.5:0.95: each GT matched at most once, best IoU first
    (the COCO/ultralytics rule)."""
    tp = np.zeros((len(pred_boxes), len(IOUV)), dtype=bool)
    if not len(pred_boxes) or not len(gt_boxes):
        return tp
    iou = _iou(np.asarray(gt_boxes, float), np.asarray(pred_boxes, float)) * (np.asarray(gt_cls)[:, None] == np.asarray(pred_cls)[None, :])
    for k, thr in enumerate(IOUV):
        gi, pi = np.nonzero(iou >= thr)
        if not len(gi):
            continue
        order = np.argsort(-iou[gi, pi], kind="stable")
        gi, pi = gi[order], pi[order]
        _, first_p = np.unique(pi, return_index=True)
        keep = np.sort(first_p)
        gi, pi = gi[keep], pi[keep]
        order = np.argsort(-iou[gi, pi], kind="stable")
        gi, pi = gi[order], pi[order]
        _, first_g = np.unique(gi, return_index=True)
        tp[pi[first_g], k] = True
    return tp


def summarise(stats: list[dict[str, np.ndarray]], novel: set[int]) -> dict[str, Any]:
    """mAP50 / mAP50-95 over all, base and novel classes that have ground truth in ``stats``."""
    from ultralytics.utils.metrics import ap_per_class

    target = np.concatenate([s["target"] for s in stats]) if stats else np.zeros(0)
    if not len(target):
        return {"images": len(stats), "boxes": 0}
    tp = np.concatenate([s["tp"] for s in stats])
    conf = np.concatenate([s["conf"] for s in stats])
    pred = np.concatenate([s["pred"] for s in stats])
    *_, ap, classes, _p, _r, _f1, x, prec = ap_per_class(tp, conf, pred, target)
    out: dict[str, Any] = {"images": len(stats), "boxes": int(len(target)), "classes": int(len(classes))}
    for group, mask in (("all", np.ones(len(classes), bool)), ("base", ~np.isin(classes, list(novel))), ("novel", np.isin(classes, list(novel)))):
        if mask.any():
            out[group] = {"map50": float(ap[mask, 0].mean()), "map50_95": float(ap[mask].mean()), "classes": int(mask.sum())}
    out["_curves"] = {"x": x, "prec": prec, "classes": classes, "ap50": ap[:, 0]}
    return out


def _strip(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def evaluate(weights: str | Path, params: Params, split: str | None = None, out_metrics: str | Path | None = None,
             plots_dir: str | Path | None = None, imgsz: int | None = None, prompter=None) -> dict[str, Any]:
    """Evaluate ``weights`` on a split of the Omnis dataset named by ``params.train.data``.

    ``prompter`` reuses an already loaded text encoder (the trainer's, for per-epoch evaluation); by default the
    encoder of ``params.text`` is loaded.
    """
    from medrov.model.build import Prompter, prompt_name
    from medrov.text import load_encoder

    ep: EvaluateParams = params.evaluate
    split = split or ep.split
    root = paths.project_root()
    data_file = Path(params.train.data) if Path(params.train.data).is_absolute() else root / params.train.data
    if not data_file.is_file():
        raise ConfigError(f"{data_file}: dataset file not found (run `medrov convert` first)")
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
    by_name = {prompt_name(n): i for i, n in names.items()}

    cache = None if params.text.cache_dir is None else (root / params.text.cache_dir)
    detector = Detector(weights)
    if detector.open_vocabulary:
        detector.prompter = prompter or Prompter(load_encoder(params.text.encoder, params.text.fallback), cache)
    size = imgsz or _train_imgsz(weights) or 640
    gt = {img: g for img, g in boxes.groupby("image")}
    stats: dict[str, dict[str, np.ndarray]] = {}
    start = time.time()
    for source, rows in manifest.groupby("source"):
        annotated = annotated_classes(presence, source)
        class_ids = sorted(by_name[c] for c in annotated if c in by_name)
        if not class_ids:
            log.warning("evaluate: source %s annotates no vocabulary class; skipped", source)
            continue
        detector.set_vocabulary([names[c] for c in class_ids])
        images = list(rows["image"])
        dets = detector.predict([data_dir / p for p in images], imgsz=size, conf=ep.conf, iou=ep.iou, max_det=ep.max_det)
        for img, det in zip(images, dets):
            g = gt.get(img)
            g = g[g["class_id"].isin(class_ids)] if g is not None else None
            gt_boxes = g[["x0", "y0", "x1", "y1"]].to_numpy(float) if g is not None else np.zeros((0, 4))
            gt_cls = g["class_id"].to_numpy(int) if g is not None else np.zeros(0, int)
            pred_cls = np.array([by_name[n] for n in det.names], dtype=int)
            stats[img] = {"tp": match(det.boxes, pred_cls, gt_boxes, gt_cls), "conf": det.scores, "pred": pred_cls, "target": gt_cls}
    seconds = time.time() - start
    info = manifest.set_index("image")
    result: dict[str, Any] = {"split": split, "weights": str(weights), "open_vocabulary": detector.open_vocabulary,
                              "imgsz": size, "images": len(stats), "seconds": round(seconds, 1)}
    if detector.open_vocabulary:
        result["encoder"] = detector.prompter.describe()
    overall = summarise(list(stats.values()), novel)
    result.update({k: overall.get(k) for k in ("all", "base", "novel") if k in overall})
    curves = overall.get("_curves")
    if curves is not None:
        result["class"] = {prompt_name(names[int(c)]): float(ap) for c, ap in zip(curves["classes"], curves["ap50"])}
    result["modality"] = {m: _strip(summarise([stats[i] for i in g.index if i in stats], novel)) for m, g in info.groupby("modality")}
    result["source"] = {s: _strip(summarise([stats[i] for i in g.index if i in stats], novel)) for s, g in info.groupby("source")}
    if out_metrics or ep.metrics:
        path = Path(out_metrics or root / ep.metrics)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    if plots_dir or ep.plots:
        _plots(overall, result, names, novel, Path(plots_dir or root / ep.plots))
    log.info("evaluate: mAP50 all %s base %s novel %s", *(result.get(k, {}).get("map50") for k in ("all", "base", "novel")))
    return result


def _train_imgsz(weights) -> int | None:
    from medrov.model.ultra import prepare_ultralytics
    from medrov.model.weights import trusted

    try:
        prepare_ultralytics()
        from ultralytics.nn.tasks import torch_safe_load

        ckpt, _ = torch_safe_load(str(weights), safe_only=not trusted())  # weights are data: weights_only unless trusted
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
        for group, mask, colour in (("base", ~np.isin(classes, list(novel)), "#4C72B0"), ("novel", np.isin(classes, list(novel)), "#C44E52")):
            if mask.any():
                ax.plot(x, prec[mask].mean(0), color=colour, lw=2.5, label=f"{group} ({mask.sum()} classes) mAP50 {curves['ap50'][mask].mean():.3f}")
                for row in prec[mask]:
                    ax.plot(x, row, color=colour, lw=0.5, alpha=0.3)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"PR at IoU 0.5 ({result['split']} split)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pr_curve.png", dpi=110)
    plt.close(fig)

    mods = sorted(result["modality"])
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(mods)), 4))
    width = 0.27
    for k, (group, colour) in enumerate((("all", "#55A868"), ("base", "#4C72B0"), ("novel", "#C44E52"))):
        vals = [result["modality"][m].get(group, {}).get("map50", np.nan) for m in mods]
        ax.bar(np.arange(len(mods)) + (k - 1) * width, vals, width, label=group, color=colour)
    ax.set_xticks(np.arange(len(mods)), mods)
    ax.set(ylabel="mAP50", ylim=(0, 1), title="mAP50 per modality (missing bar = no such class)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "map50_per_modality.png", dpi=110)
    plt.close(fig)
