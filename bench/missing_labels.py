"""Do MedROV's mechanisms recover classes that a source does not annotate? Real data: ../shared/data/bccd.

BCCD's training images are split into two sources that each drop one class's annotations (source A keeps no
white blood cells, source B no platelets), so the presence matrix has zeros there; validation and test stay fully
annotated. The same budget is trained with the mechanisms off, with pseudo-labels, and with pseudo-labels plus
image-feature negatives, then evaluated on the test split. Prints mAP50 per class for each arm, the differences
to the "off" arm, and the training time per batch of each arm against "off" (same run, same data).

    python bench/missing_labels.py [--work /tmp/medrov-missing] [--encoder minilm|tiny-clip|local-dir:PATH]
                                   [--arms off,labels,both] [--warmup-epochs 15] [-S pseudo.conf_c=0.5]
                                   [-S train.profiles.demo.epochs=5]

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
ARMS = {"off": (False, False), "labels": (True, False), "both": (True, True)}


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
        rows.append({**r.to_dict(), "image": str(image), "label": str(label), "source": source})
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
    ap.add_argument("--arms", default="off,labels,both")
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
    if args.warmup_epochs:
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
        warm = train(params)
        base.append(f"train.profiles.demo.model={warm['weights']}")
        print(f"[warmup] {args.warmup_epochs} epochs -> {warm['weights']}", flush=True)
    results = {}
    for arm in args.arms.split(","):
        labels, negatives = ARMS[arm]
        params = load_params(
            overrides=[
                *base,
                f"train.project={work / 'runs' / arm}",
                f"pseudo.labels={str(labels).lower()}",
                f"pseudo.negatives={str(negatives).lower()}",
                *args.overrides,
            ]
        )
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
        results[arm] = {
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
        print(f"[{arm}] done: mAP50 {results[arm]['all']}, {results[arm]['ms_per_batch']:.0f} ms/batch", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    classes = sorted({c for r in results.values() for c in r["class"]})
    ref = results.get("off")
    print(f"\nmAP50 on the fully annotated BCCD test split (dropped: {DROPPED})")
    print(
        f"{'arm':>8} "
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
            f"{arm:>8} "
            + " ".join(cells)
            + f" {r['all'] or 0:8.3f} {r['ms_per_batch']:9.0f} {ratio:6.2f} {inside:8.2f} "
            f"{int(r['pseudo_labels']):7d} {int(r['negatives']):5d}"
        )


if __name__ == "__main__":
    main()
