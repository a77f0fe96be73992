"""Do MedROV's mechanisms recover classes that a source does not annotate? Real data: ../shared/data/bccd.

BCCD's training images are split into two sources that each drop one class's annotations (source A keeps no
white blood cells, source B no platelets), so the presence matrix has zeros there; validation and test stay fully
annotated. From one warm-up teacher (mechanisms off), the same budget is trained per arm, then evaluated on the
test split. Prints mAP50 per class for each arm, the differences to the "off" arm, and the training time per batch
of each arm against "off" (same run, same data). Arms (``pseudo.labels``, ``pseudo.negatives``,
``pseudo.presence_sampling``):

    off         nothing: the missing classes are trained as background wherever they are sampled as negatives
    presence    presence-aware prompt sampling only (an M=0 class is never a negative prompt of its source)
    labels      pseudo-labels only (the paper's rule)
    mechanisms  pseudo-labels + presence-aware sampling (the project's default)
    both        pseudo-labels + image-feature negatives (+ presence sampling; negatives need an image tower)

An arm may carry overrides after ``:``, e.g. ``labels:pseudo.conf_c=0.5``; ``pseudo.conf_c=calibrated`` is the
calibrated rule: C = the lowest teacher score from which the teacher's detections on the (fully annotated) val
split are at least ``--calibrate-precision`` precise (IoU 0.5, all classes pooled), printed with each class's own;
``pseudo.conf_c=calibrated-class`` gives each class its own such C (``pseudo.conf_c_class``; the pooled one for
the rest).

``--closed-set-epochs N`` adds MedROV's other claim on real data: on the full (unsplit) BCCD, open-vocabulary
YOLO-World and the closed-set YOLOv8 baseline of the same scale, each trained N epochs from scratch at the same
image size and batch, evaluated on the same test split.

    python bench/missing_labels.py [--work /tmp/medrov-missing] [--encoder minilm|tiny-clip|local-dir:PATH]
                                   [--arms off,presence,labels,labels:pseudo.conf_c=calibrated,mechanisms]
                                   [--warmup-epochs 30] [--closed-set-epochs 30] [-S train.profiles.demo.epochs=10]

With a text-only encoder (MiniLM) the negatives arm runs with negatives off (and says so); ``tiny-clip`` builds the
test suite's randomly initialised CLIP so that the image-tower path runs, but its features carry no meaning.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrov import paths  # noqa: E402
from medrov.config import load_params  # noqa: E402
from medrov.env import apply_offline_env  # noqa: E402

DROPPED = {"BCCD_A": "white blood cell", "BCCD_B": "platelets"}
ARMS = {
    "off": (False, False, False),
    "presence": (False, False, True),
    "labels": (True, False, False),
    "mechanisms": (True, False, True),
    "both": (True, True, True),
}


def calibrated_c(weights: str, params, work: Path, precision: float) -> tuple[float, dict[str, float]]:
    """The calibrated C: lowest score from which the teacher's val detections reach ``precision`` (pooled), and
    the same threshold per class (for the record)."""
    from medrov.model.evaluate import evaluate, match

    coco = work / "coco" / "calibration-val"
    evaluate(weights, params, split="val", coco_dir=coco)
    gt = json.loads((coco / "coco_gt.json").read_text())
    dt = json.loads((coco / "coco_dt.json").read_text())
    names = {c["id"]: c["name"].split("/", 1)[0] for c in gt["categories"]}
    xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]  # noqa: E731
    by_image: dict[int, tuple[list, list]] = {im["id"]: ([], []) for im in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]][0].append(a)
    for x in dt:
        by_image[x["image_id"]][1].append(x)
    scores, hits, classes = [], [], []
    for g, d in by_image.values():
        if not d:
            continue
        tp = match(
            np.array([xyxy(x["bbox"]) for x in d], float).reshape(-1, 4),
            np.array([x["score"] for x in d], float),
            np.array([x["category_id"] for x in d], int),
            np.array([xyxy(a["bbox"]) for a in g], float).reshape(-1, 4),
            np.array([a["category_id"] for a in g], int),
        )[:, 0]
        scores += [x["score"] for x in d]
        hits += list(tp)
        classes += [x["category_id"] for x in d]
    scores, hits, classes = np.array(scores), np.array(hits, bool), np.array(classes)
    per_class = {
        names[int(c)]: precision_threshold(scores[classes == c], hits[classes == c], precision)
        for c in np.unique(classes)
    }
    return precision_threshold(scores, hits, precision), per_class


def precision_threshold(scores: np.ndarray, hits: np.ndarray, precision: float) -> float:
    """The lowest score s such that the detections scoring >= s are at least ``precision`` true (1.0: none)."""
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    s, h = np.asarray(scores, float)[order], np.asarray(hits, bool)[order]
    prec = np.cumsum(h) / np.arange(1, len(h) + 1)
    ok = np.flatnonzero(prec >= precision)
    return float(s[ok[-1]]) if ok.size else 1.0


def convert_bccd(work: Path) -> Path:
    from medrov.data import convert

    omnis = work / "bccd" / "omnis"
    if (omnis / "manifest.parquet").is_file():
        return omnis
    bccd = paths.shared_data_dir() / "bccd"
    if not bccd.is_dir():
        raise SystemExit(f"{bccd} not found")
    sources = work / "bccd" / "sources.yaml"
    sources.parent.mkdir(parents=True, exist_ok=True)
    sources.write_text(f"sources:\n  - name: BCCD\n    root: {bccd / 'BCCD'}\n    split: imagesets\n")
    convert.run(load_params(overrides=["data.workers=2"]).data, sources_file=sources, out_dir=omnis, progress=False)
    return omnis


def derive(src: Path, out: Path) -> Path:
    """Two partially annotated training sources + fully annotated val/test, as an Omnis folder."""
    import pandas as pd
    import yaml

    if out.exists():
        shutil.rmtree(out)
    spec = yaml.safe_load((src / "omnis.yaml").read_text())
    names = {int(k): v for k, v in spec["names"].items()}
    by_name = {v.split("/", 1)[0]: k for k, v in names.items()}
    manifest = pd.read_parquet(src / "manifest.parquet")
    boxes = pd.read_parquet(src / "boxes.parquet")
    train = manifest[manifest["split"] == "train"].sort_values("image").reset_index(drop=True)
    rows, lists = [], {"train": [], "val": [], "test": []}
    for i, r in train.iterrows():
        source = "BCCD_A" if i % 2 == 0 else "BCCD_B"
        dropped = by_name[DROPPED[source]]
        image = Path(r["image"].replace("images/BCCD/", f"images/{source}/"))
        label = Path(r["label"].replace("labels/BCCD/", f"labels/{source}/"))
        (out / image).parent.mkdir(parents=True, exist_ok=True)
        (out / label).parent.mkdir(parents=True, exist_ok=True)
        (out / image).symlink_to((src / r["image"]).resolve())
        kept = [
            ln for ln in (src / r["label"]).read_text().splitlines() if ln.strip() and int(ln.split()[0]) != dropped
        ]
        (out / label).write_text("\n".join(kept) + ("\n" if kept else ""))
        # the image's presence row is its new source's (a manifest of per-image presence names it explicitly)
        record = {**r.to_dict(), "image": str(image), "label": str(label), "source": source, "n_boxes": len(kept)}
        if "presence_row" in record:
            record["presence_row"] = source
        rows.append(record)
        lists["train"].append(str((out / image)))
    for split in ("val", "test"):
        for _, r in manifest[manifest["split"] == split].iterrows():
            for key in ("image", "label"):
                (out / r[key]).parent.mkdir(parents=True, exist_ok=True)
                (out / r[key]).symlink_to((src / r[key]).resolve())
            rows.append(r.to_dict())
            lists[split].append(str(out / r["image"]))
    new_manifest = pd.DataFrame(rows)
    new_manifest.to_parquet(out / "manifest.parquet")
    keep_boxes = boxes[boxes["image"].isin(set(manifest.loc[manifest["split"] != "train", "image"]))]
    keep_boxes.to_parquet(out / "boxes.parquet")
    presence = pd.read_csv(src / "presence.csv", index_col=0)
    base = presence.loc["BCCD"]
    table = pd.DataFrame([base.rename(s) for s in ("BCCD", *DROPPED)])
    for s, cls in DROPPED.items():
        table.loc[s, cls] = 0
    table.index.name = "source"
    table.to_csv(out / "presence.csv")
    for split, files in lists.items():
        (out / f"{split}.txt").write_text("\n".join(files) + "\n")
    spec.update({"novel": [], "train": "train.txt", "val": "val.txt", "test": "test.txt"})
    spec["sources"] = {s: "microscopy" for s in table.index}
    spec.pop("path", None)
    (out / "omnis.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/medrov-missing"))
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--arms", default="off,presence,labels,labels:pseudo.conf_c=calibrated,mechanisms")
    ap.add_argument("--calibrate-precision", type=float, default=0.9)
    ap.add_argument("--teacher", type=Path, help="the arms start from this model (no warm-up)")
    ap.add_argument("--reuse", action="store_true", help="arms already done in --work are not trained again")
    ap.add_argument("--closed-set-epochs", type=int, default=0, help="also compare open vs closed set on full BCCD")
    ap.add_argument(
        "--warmup-epochs",
        type=int,
        default=0,
        help="first train this many epochs with the mechanisms off; every arm then starts from that model "
        "(MedROV fine-tunes a pretrained detector: an untrained one is never confident)",
    )
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    apply_offline_env()
    from _reuse import finished

    from medrov.model.evaluate import evaluate
    from medrov.model.train import train

    work = args.work.resolve()
    omnis = derive(convert_bccd(work), work / "missing" / "omnis")
    encoder = args.encoder
    if encoder == "tiny-clip":
        from tests.tiny_models import build_tiny_clip

        encoder = f"local-dir:{build_tiny_clip(work / 'tiny-clip')}"
    base = [
        f"train.data={omnis / 'omnis.yaml'}",
        f"text.encoder={encoder}",
        f"text.cache_dir={work / 'text-cache'}",
        "train.profiles.demo.imgsz=320",
        "train.profiles.demo.epochs=10",
        "train.profiles.demo.batch=8",
        "evaluate.metrics=null",
        "evaluate.plots=null",
    ]
    if args.teacher:
        base.append(f"train.profiles.demo.model={args.teacher.resolve()}")
    elif args.warmup_epochs:
        params = load_params(
            overrides=[
                *base,
                f"train.project={work / 'runs' / 'warmup'}",
                "pseudo.labels=false",
                "pseudo.negatives=false",
                *args.overrides,
                f"train.profiles.demo.epochs={args.warmup_epochs}",
            ]
        )
        warm = (finished(params) if args.reuse else None) or train(params)
        base.append(f"train.profiles.demo.model={warm['weights']}")
        print(f"[warmup] {args.warmup_epochs} epochs -> {warm['weights']}", flush=True)
    results = {}
    calibration = None
    for spec in filter(None, args.arms.split(",")):
        arm, *arm_overrides = spec.split(":")
        labels, negatives, presence_sampling = ARMS[arm]
        if {"pseudo.conf_c=calibrated", "pseudo.conf_c=calibrated-class"} & set(arm_overrides):
            if calibration is None:
                if not (args.warmup_epochs or args.teacher):
                    raise SystemExit("pseudo.conf_c=calibrated needs a teacher (--warmup-epochs or --teacher)")
                teacher = base[-1].split("=", 1)[1]  # the warm-up's weights, appended last
                calibration = calibrated_c(
                    teacher, load_params(overrides=[*base, *args.overrides]), work, args.calibrate_precision
                )
                print(
                    f"[calibration] teacher val precision >= {args.calibrate_precision}: C = {calibration[0]:.3f}"
                    f" (per class {json.dumps({k: round(v, 3) for k, v in calibration[1].items()})})",
                    flush=True,
                )
            pooled = f"pseudo.conf_c={calibration[0]:.4f}"
            per_class = "pseudo.conf_c_class=" + json.dumps({k: round(v, 4) for k, v in calibration[1].items()})
            calibrated = {"pseudo.conf_c=calibrated": [pooled], "pseudo.conf_c=calibrated-class": [pooled, per_class]}
            arm_overrides = [x for o in arm_overrides for x in calibrated.get(o, [o])]
        slug = spec.replace(":", "_").replace("=", "")
        params = load_params(
            overrides=[
                *base,
                f"train.project={work / 'runs' / slug}",
                f"pseudo.labels={str(labels).lower()}",
                f"pseudo.negatives={str(negatives).lower()}",
                f"pseudo.presence_sampling={str(presence_sampling).lower()}",
                *args.overrides,
                *arm_overrides,
            ]
        )
        saved = work / "results" / f"{slug}.json"
        if args.reuse and saved.is_file():  # an interrupted bench goes on where it stopped
            results[spec] = json.loads(saved.read_text())
            print(f"[{spec}] reused {saved}", flush=True)
            continue
        timing = {"batches": 0, "seconds": 0.0, "pseudo": []}

        def epoch_start(trainer):
            timing["t0"] = time.perf_counter()

        def epoch_end(trainer):
            timing["seconds"] += time.perf_counter() - timing["t0"]
            timing["batches"] += len(trainer.train_loader)

        def fit_end(trainer):
            timing["pseudo"].append(dict(getattr(trainer, "pseudo_metrics", {}) or {}))

        info = train(
            params,
            callbacks={
                "on_train_epoch_start": [epoch_start],
                "on_train_epoch_end": [epoch_end],
                "on_fit_epoch_end": [fit_end],
            },
        )
        res = evaluate(info["weights"], params, split="test")
        results[spec] = {
            "conf_c": params.pseudo.conf_c,
            "class": res.get("class", {}),
            "all": (res.get("all") or {}).get("map50"),
            "ms_per_batch": 1000 * timing["seconds"] / max(timing["batches"], 1),
            "pseudo_labels": sum(p.get("pseudo/labels", 0) for p in timing["pseudo"]),
            "negatives": sum(p.get("pseudo/negatives", 0) for p in timing["pseudo"]),
            # the mechanisms' own time on the same batches: a ratio that machine noise cannot skew
            "mechanisms_ms_per_batch": float(
                np.mean([p.get("pseudo/ms_per_batch", 0.0) for p in timing["pseudo"]] or [0.0])
            ),
            "pseudo_in_force": info.get("pseudo"),
        }
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(results[spec], indent=2))
        print(f"[{spec}] done: mAP50 {results[spec]['all']}, {results[spec]['ms_per_batch']:.0f} ms/batch", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    classes = sorted({c for r in results.values() for c in r["class"]})
    ref = results.get("off")
    print(f"\nmAP50 on the fully annotated BCCD test split (dropped: {DROPPED})")
    print(
        f"{'arm':>34} "
        + " ".join(f"{c:>18}" for c in classes)
        + f" {'all':>8} {'ms/batch':>9} {'x off':>6} {'x in-run':>8} {'pseudo':>7} {'neg':>5}"
    )
    for arm, r in results.items():
        cells = []
        for c in classes:
            v = r["class"].get(c, 0.0)
            d = "" if ref is None or arm == "off" else f" ({v - ref['class'].get(c, 0.0):+.3f})"
            cells.append(f"{v:.3f}{d}".rjust(18))
        ratio = r["ms_per_batch"] / ref["ms_per_batch"] if ref else float("nan")
        inside = r["ms_per_batch"] / max(r["ms_per_batch"] - r["mechanisms_ms_per_batch"], 1e-9)
        print(
            f"{arm + ' C=' + format(r['conf_c'], '.3g'):>34} "
            + " ".join(cells)
            + f" {r['all'] or 0:8.3f} {r['ms_per_batch']:9.0f} {ratio:6.2f} {inside:8.2f} "
            f"{int(r['pseudo_labels']):7d} {int(r['negatives']):5d}"
        )

    if args.closed_set_epochs:
        open_vs_closed(work, base, args)


def open_vs_closed(work: Path, base: list[str], args) -> None:
    """YOLO-World (open vocabulary) vs the closed-set YOLOv8 of the same scale on the full BCCD, equal budget."""
    from _reuse import finished

    from medrov.model.evaluate import evaluate
    from medrov.model.train import train

    full = convert_bccd(work)
    common = [
        o
        for o in base
        if not o.startswith(("train.data=", "train.profiles.demo.model=", "train.profiles.demo.epochs="))
    ]
    rows = {}
    for kind in ("open-vocabulary", "closed-set"):
        params = load_params(
            overrides=[
                *common,
                f"train.data={full / 'omnis.yaml'}",
                f"train.project={work / 'runs' / 'full'}",
                f"train.profiles.demo.epochs={args.closed_set_epochs}",
                "pseudo.labels=false",
                "pseudo.negatives=false",
                *args.overrides,
            ]
        )
        t0 = time.perf_counter()
        info = finished(params, kind == "closed-set") if args.reuse else None
        if info is None:
            info = train(params, closed_set=kind == "closed-set")
            seconds = time.perf_counter() - t0
        else:
            seconds = float(info["seconds"])
        res = evaluate(info["weights"], params, split="test")
        rows[kind] = {
            "base": (res.get("base") or {}).get("map50"),
            "all": (res.get("all") or {}).get("map50"),
            "all_95": (res.get("all") or {}).get("map50_95"),
            "class": res.get("class", {}),
            "seconds": seconds,
        }
        print(f"[{kind}] test mAP50 {rows[kind]['all']} ({seconds:.0f} s)", flush=True)
    (work / "open_vs_closed.json").write_text(json.dumps(rows, indent=2))
    classes = sorted({c for r in rows.values() for c in r["class"]})
    print(f"\nfull BCCD, {args.closed_set_epochs} epochs each from scratch, test split (same image size and batch)")
    head = " ".join(f"{c:>18}" for c in classes)
    print(f"{'model':>16} {head} {'base':>7} {'mAP50':>7} {'mAP50-95':>8} {'s':>6}")
    for kind, r in rows.items():
        print(
            f"{kind:>16} "
            + " ".join(f"{r['class'].get(c, 0.0):18.3f}" for c in classes)
            + f" {r['base'] or 0:7.3f} {r['all'] or 0:7.3f} {r['all_95'] or 0:8.3f} {r['seconds']:6.0f}"
        )
    gain = (rows["open-vocabulary"]["base"] or 0) - (rows["closed-set"]["base"] or 0)
    print(f"open vocabulary - closed set, base mAP50: {gain:+.3f} (MedROV reports about +0.03)")


if __name__ == "__main__":
    main()
