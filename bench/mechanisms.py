"""What do MedROV's mechanisms buy on the demo sources, measured against their known truth?

The demo generator writes the full truth of every synthetic image (``<demo.out>/truth``, with a sources file that
converts it into a fully annotated Omnis with the same splits). From one shared warm start (plain training), each
arm trains the same budget with the same seed on the demo sources, where several classes are present but not
annotated (presence M=0: kidneys in SynthAbdomenCT, liver and spleen in SynthKidneyCT, spleen in the MRI):

    off         no mechanism
    presence    presence-aware prompt sampling (M=0 classes of a tile's source are never negative prompts)
    labels      pseudo-labels (confident predictions away from every GT box, M=0 -> pseudo ground truth)
    negatives   image-feature negatives (offline the only image tower is a random tiny CLIP: a plumbing check)
    all         the three together
    oracle      trained on the full truth (upper bound)

Every arm is evaluated on the fully annotated test split (from the truth): mAP50 over the (source, class) pairs
with M=0 in the demo and over those with M=1, base classes only (novel ones are held out of every arm). Prints one
table with the seconds per arm; ``--seeds 0,1`` repeats the off arm to show run-to-run noise.

Pseudo-label quality against the truth, per epoch: each arm named in ``--quality`` keeps one checkpoint per epoch;
each checkpoint is the teacher of the rule (``medrov.model.pseudo.decide``, the function training calls) on the
un-augmented train images, all of their source's truth classes prompted, the demo's annotated boxes as ground
truth. Its pseudo-labels are matched (IoU >= 0.5, same class) to the truth objects the demo leaves unannotated
(M=0): precision, recall and count per epoch, at the params' C and at each ``--quality-c`` (calibration: a
YOLO-style sigmoid score rarely reaches 0.9 on a small CPU teacher).

An arm may carry its own overrides: ``labels:pseudo.conf_c=0.5`` (comma-free; several ``:``-separated).

    python bench/mechanisms.py [--work /tmp/medrov-mechanisms] [--arms off,presence,labels,all,oracle]
                               [--warm-epochs 3] [--warm-weights W] [--epochs 7] [--seeds 0,1]
                               [--quality labels,all] [--quality-c 0.5,0.7] [-S pseudo.conf_c=0.5]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrov.config import load_params  # noqa: E402
from medrov.env import apply_offline_env  # noqa: E402

# pseudo.labels, pseudo.negatives, pseudo.presence_sampling per arm; the oracle trains on the truth, mechanisms off
ARMS = {
    "off": (False, False, False),
    "presence": (False, False, True),
    "labels": (True, False, False),
    "negatives": (False, True, False),
    "all": (True, True, True),
    "oracle": (False, False, False),
}


def pair_scores(
    gt: dict, dt: list[dict], image_source: dict[str, str], presence, novel: set[int], shown: float = 0.25
) -> dict:
    """mAP50 over (source, class) pairs grouped by their demo presence value, from COCO-format files, and the
    recall at the score from which a user is shown boxes (``shown``, ``evaluate.overlay_conf``): AP only ranks, so a
    class trained as background can keep its AP while scoring too low to be shown at all.

    Args:
        gt: COCO ground truth (``images`` with ``file_name``, ``annotations``) of the fully annotated split.
        dt: COCO detections on the same images.
        image_source: ``file_name`` -> source name.
        presence: the demo's presence matrix as a DataFrame (sources x class names, in class id order).
        novel: class ids held out of training (left out of both groups).

    Returns:
        ``{"m0": mAP50 | None, "m1": mAP50 | None, "m0_recall": R | None, "m1_recall": R | None,
        "pairs": {"source/class": {"m": M, "ap50": AP, "recall": R at ``shown``, "boxes": n}}}``.
    """
    from medrov.model.evaluate import ap_per_class, match

    names = list(presence.columns)
    by_image: dict[int, dict[str, list]] = {im["id"]: {"gt": [], "dt": []} for im in gt["images"]}
    for a in gt["annotations"]:
        by_image[a["image_id"]]["gt"].append(a)
    for d in dt:
        by_image[d["image_id"]]["dt"].append(d)
    xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]  # noqa: E731
    per_source: dict[str, list[dict]] = {}
    for im in gt["images"]:
        g, d = by_image[im["id"]]["gt"], by_image[im["id"]]["dt"]
        pred_cls = np.array([x["category_id"] for x in d], int)
        conf = np.array([x["score"] for x in d], float)
        target = np.array([x["category_id"] for x in g], int)
        tp = match(
            np.array([xyxy(x["bbox"]) for x in d], float).reshape(-1, 4),
            conf,
            pred_cls,
            np.array([xyxy(x["bbox"]) for x in g], float).reshape(-1, 4),
            target,
        )
        per_source.setdefault(image_source[im["file_name"]], []).append(
            {"tp": tp, "conf": conf, "pred": pred_cls, "target": target}
        )
    pairs: dict[str, dict] = {}
    for source, stats in per_source.items():
        tp = np.concatenate([s["tp"] for s in stats])
        conf = np.concatenate([s["conf"] for s in stats])
        pred = np.concatenate([s["pred"] for s in stats])
        target = np.concatenate([s["target"] for s in stats])
        classes, ap, _ = ap_per_class(tp, conf, pred, target)
        for c, a in zip(classes, ap[:, 0]):
            if int(c) in novel or source not in presence.index:
                continue
            boxes = int((target == c).sum())
            # match() gives each truth box to at most one prediction, the most confident that overlaps it
            found = int((tp[:, 0].astype(bool) & (pred == c) & (conf >= shown)).sum())
            pairs[f"{source}/{names[int(c)]}"] = {
                "m": int(presence.loc[source].iloc[int(c)]),
                "ap50": float(a),
                "recall": found / boxes if boxes else None,
                "boxes": boxes,
            }
    group = lambda m, key="ap50": [p[key] for p in pairs.values() if p["m"] == m and p[key] is not None]  # noqa: E731
    mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
    return {
        "m0": mean(group(0)),
        "m1": mean(group(1)),
        "m0_recall": mean(group(0, "recall")),
        "m1_recall": mean(group(1, "recall")),
        "pairs": pairs,
    }


def score_weights(weights, eval_params, coco: Path, image_source: dict, presence, novel: set, shown: float) -> dict:
    """Evaluate ``weights`` on the test split of ``eval_params``' data (the truth) into ``coco`` and score it by
    presence group (:func:`pair_scores`)."""
    from medrov.model.evaluate import evaluate

    evaluate(weights, eval_params, split="test", coco_dir=coco)
    return pair_scores(
        json.loads((coco / "coco_gt.json").read_text()),
        json.loads((coco / "coco_dt.json").read_text()),
        image_source,
        presence,
        novel,
        shown,
    )


def pseudo_quality(
    truth_gt: dict,
    dt: list[dict],
    image_source: dict[str, str],
    presence,
    novel: set[int],
    conf_c: float,
    iou_t: float,
    nms_iou: float,
) -> dict:
    """Precision and recall, against the truth, of the pseudo-labels the rule makes from a teacher's detections.

    Args:
        truth_gt: COCO ground truth of the fully annotated split (every object of every class).
        dt: the teacher's COCO detections on the same images (every truth class of the source prompted).
        image_source: ``file_name`` -> source name.
        presence: the demo's presence matrix (sources x class names in class id order): M=1 boxes are the ground
            truth the rule sees, M=0 truth objects are the ones pseudo-labels should find.
        novel: held-out class ids (never pseudo-labelled targets here: training never prompts them).
        conf_c, iou_t, nms_iou: the rule's C, T and NMS IoU.

    Returns:
        ``{"labels": n, "correct": n, "missing": n truth M=0 objects, "precision": p | None, "recall": r | None}``.
    """
    import torch
    from torchvision.ops import box_iou

    from medrov.model.pseudo import ImageInput, Rule, decide

    sources = list(presence.index)
    m = presence.to_numpy(int)
    nc = m.shape[1]
    rule = Rule(conf_c=conf_c, iou_t=iou_t, nms_iou=nms_iou, labels=True, negatives=False)
    xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]  # noqa: E731
    by_image: dict[int, dict[str, list]] = {im["id"]: {"gt": [], "dt": []} for im in truth_gt["images"]}
    for a in truth_gt["annotations"]:
        by_image[a["image_id"]]["gt"].append(a)
    for d in dt:
        if d["score"] >= conf_c:
            by_image[d["image_id"]]["dt"].append(d)
    labels = correct = missing = 0
    for im in truth_gt["images"]:
        source = image_source.get(im["file_name"])
        if source not in sources:
            continue
        s = sources.index(source)
        g, d = by_image[im["id"]]["gt"], by_image[im["id"]]["dt"]
        seen = [a for a in g if m[s, a["category_id"]] == 1]  # what the demo annotates
        hidden = [a for a in g if m[s, a["category_id"]] == 0 and a["category_id"] not in novel]
        missing += len(hidden)
        if not d:
            continue
        decided = decide(
            [
                ImageInput(
                    boxes=np.array([xyxy(x["bbox"]) for x in d], float),
                    scores=np.array([x["score"] for x in d], float),
                    slots=np.array([x["category_id"] for x in d], int),
                    gt_boxes=np.array([xyxy(a["bbox"]) for a in seen], float).reshape(-1, 4),
                    gt_slots=np.array([a["category_id"] for a in seen], int),
                    slot_classes=np.arange(nc),
                    tiles=np.array([[0.0, 0.0, 1e9, 1e9]]),
                    tile_sources=np.array([s]),
                    size=(10**9, 10**9),
                )
            ],
            m,
            rule,
        ).targets
        decided = [t for t in decided if t.cls not in novel]
        labels += len(decided)
        free = [True] * len(hidden)
        for t in sorted(decided, key=lambda t: -t.score):  # greedy by confidence, as the metric matches
            cand = [j for j, a in enumerate(hidden) if free[j] and a["category_id"] == t.cls]
            if not cand:
                continue
            ious = box_iou(
                torch.tensor([t.box], dtype=torch.float64),
                torch.tensor([xyxy(hidden[j]["bbox"]) for j in cand], dtype=torch.float64),
            )[0]
            best = int(ious.argmax())
            if float(ious[best]) >= 0.5:
                free[cand[best]] = False
                correct += 1
    return {
        "labels": labels,
        "correct": correct,
        "missing": missing,
        "precision": correct / labels if labels else None,
        "recall": correct / missing if missing else None,
    }


def prepare(work: Path) -> tuple[Path, Path]:
    """Demo sources and their truth, converted: (demo Omnis, truth Omnis)."""
    from medrov.data import convert, demo

    params = load_params(overrides=["data.workers=2"])
    raw = work / "raw"
    if not (demo.truth_dir(params.demo, raw) / "sources.yaml").is_file():
        demo.generate(params.demo, raw)
    root = Path(__file__).resolve().parents[1]
    demo_file = work / "sources.yaml"
    demo_file.write_text((root / "data" / "sources.yaml").read_text().replace("raw/synthetic/", f"{raw}/"))
    out = {}
    for name, sources in (("demo", demo_file), ("truth", demo.truth_dir(params.demo, raw) / "sources.yaml")):
        out[name] = work / name / "omnis"
        if not (out[name] / "omnis.yaml").is_file():
            convert.run(params.data, sources_file=sources, out_dir=out[name], progress=False)
    return out["demo"], out["truth"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/medrov-mechanisms"))
    ap.add_argument("--arms", default="off,presence,labels,all,oracle")
    ap.add_argument("--warm-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--warm-weights", type=Path, help="reuse this warm start instead of training one")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="arms already trained in --work with the same settings are scored again, not trained again",
    )
    ap.add_argument("--seeds", default="0", help="seeds of the off arm (the others use the first)")
    ap.add_argument("--quality", default="labels,all", help="arms whose pseudo-labels are scored per epoch")
    ap.add_argument("--quality-c", default="0.5,0.7", help="further C values the pseudo-labels are scored at")
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument(
        "--score",
        action="append",
        default=[],
        metavar="NAME=WEIGHTS",
        help="only score already trained models against the truth (no training); repeatable",
    )
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    apply_offline_env()
    import pandas as pd
    import yaml
    from _reuse import finished

    from medrov.model.evaluate import evaluate
    from medrov.model.train import train

    work = args.work.resolve()
    demo_omnis, truth_omnis = prepare(work)
    presence = pd.read_csv(demo_omnis / "presence.csv", index_col=0)
    novel = set(int(c) for c in yaml.safe_load((demo_omnis / "omnis.yaml").read_text()).get("novel", []))
    image_source = dict(pd.read_parquet(truth_omnis / "manifest.parquet", columns=["image", "source"]).values)
    seeds = [int(s) for s in args.seeds.split(",")]
    base = [
        f"text.encoder={args.encoder}",
        f"text.cache_dir={work / 'text-cache'}",
        "tracking.enabled=false",
        "evaluate.metrics=null",
        "evaluate.plots=null",
        *args.overrides,
    ]
    mechanisms_off = ["pseudo.labels=false", "pseudo.negatives=false", "pseudo.presence_sampling=false"]
    shown = load_params(overrides=base).evaluate.overlay_conf  # the score from which a user is shown a box
    if args.score:
        eval_params = load_params(overrides=[*base, f"train.data={truth_omnis / 'omnis.yaml'}"])
        scored = {}
        for item in args.score:
            name, weights = item.split("=", 1)
            coco = work / "coco" / f"score-{name}"
            scored[name] = score_weights(weights, eval_params, coco, image_source, presence, novel, shown)
        print("\nmAP50 on the fully annotated demo test split (truth), base classes, by demo presence M")
        pairs = sorted({p for r in scored.values() for p in r["pairs"]})
        print(f"recall (R0, R1): truth boxes found with score >= {shown} (evaluate.overlay_conf)")
        print(f"{'model':>12} {'M=0':>7} {'M=1':>7} {'R0':>6} {'R1':>6}  " + "  ".join(pairs))
        for name, r in scored.items():
            print(
                f"{name:>12} {r['m0'] or 0:7.3f} {r['m1'] or 0:7.3f}"
                + f" {r['m0_recall'] or 0:6.3f} {r['m1_recall'] or 0:6.3f}  "
                + "  ".join(
                    f"{r['pairs'][p]['ap50']:.3f}(M={r['pairs'][p]['m']})" if p in r["pairs"] else "-" for p in pairs
                )
            )
        (work / "scores.json").write_text(json.dumps(scored, indent=2))
        return
    warm_start = []
    if args.warm_weights:
        warm_start = [f"train.profiles.demo.model={args.warm_weights.resolve()}"]
    elif args.warm_epochs:
        t0 = time.perf_counter()
        params = load_params(
            overrides=[
                *base,
                f"train.data={demo_omnis / 'omnis.yaml'}",
                *mechanisms_off,
                f"train.project={work / 'runs' / 'warm'}",
                f"train.profiles.demo.epochs={args.warm_epochs}",
            ]
        )
        warm = train(params)
        warm_start = [f"train.profiles.demo.model={warm['weights']}"]
        print(f"[warm] {args.warm_epochs} epochs in {time.perf_counter() - t0:.0f} s -> {warm['weights']}", flush=True)
    runs = [(arm, seeds[0]) for arm in args.arms.split(",")] + [("off", s) for s in seeds[1:]]
    quality_arms = set(filter(None, args.quality.split(",")))
    quality_c = [float(c) for c in args.quality_c.split(",") if c]
    results = {}
    for spec, seed in runs:
        # ":" before a dotted key starts the next override (a value such as local-dir:/path keeps its colon)
        arm, *arm_overrides = re.split(r":(?=[A-Za-z_][\w.]*=)", spec)
        labels, negatives, presence_sampling = ARMS[arm]
        data = truth_omnis if arm == "oracle" else demo_omnis
        key = spec if seed == seeds[0] else f"{spec} seed {seed}"
        slug = key.replace(" ", "-").replace(":", "_").replace("=", "")
        keep_epochs = spec in quality_arms or arm in quality_arms
        params = load_params(
            overrides=[
                *base,
                *warm_start,
                f"train.data={data / 'omnis.yaml'}",
                f"train.project={work / 'runs' / slug}",
                f"train.profiles.demo.epochs={args.epochs}",
                f"train.profiles.demo.seed={seed}",
                f"pseudo.labels={str(labels).lower()}",
                f"pseudo.negatives={str(negatives).lower()}",
                f"pseudo.presence_sampling={str(presence_sampling).lower()}",
                *(["train.profiles.demo.extra.save_period=1"] if keep_epochs else []),
                *arm_overrides,
            ]
        )
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        info = finished(params) if args.reuse else None
        if info is None:
            info = train(params)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        else:  # an interrupted bench goes on where it stopped: same arm, same settings, already trained
            seconds, cpu = float(info["seconds"]), float("nan")
            print(f"[{key}] reused {info['weights']} (trained in {seconds:.0f} s)", flush=True)
        eval_params = load_params(overrides=[*base, f"train.data={truth_omnis / 'omnis.yaml'}"])
        coco = work / "coco" / slug
        scores = score_weights(info["weights"], eval_params, coco, image_source, presence, novel, shown)
        quality = {}
        if keep_epochs:
            rule = params.pseudo
            for epoch_weights in sorted(
                Path(info["weights"]).parent.glob("epoch*.pt"), key=lambda w: int(w.stem[len("epoch") :])
            ):
                epoch = int(epoch_weights.stem[len("epoch") :]) + 1  # ultralytics numbers them from 0
                qdir = work / "coco" / f"{slug}-train-epoch{epoch}"
                if not (args.reuse and (qdir / "coco_dt.json").is_file()):  # same checkpoint, same predictions
                    evaluate(epoch_weights, eval_params, split="train", coco_dir=qdir)
                gt_train = json.loads((qdir / "coco_gt.json").read_text())
                dt_train = json.loads((qdir / "coco_dt.json").read_text())
                quality[epoch] = {
                    str(c): pseudo_quality(
                        gt_train, dt_train, image_source, presence, novel, c, rule.iou_t, rule.nms_iou
                    )
                    for c in sorted({rule.conf_c, *quality_c})
                }
                q = quality[epoch][str(rule.conf_c)]
                print(f"[{key}] epoch {epoch}: C={rule.conf_c} {q}", flush=True)
        results[key] = {
            **scores,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "pseudo_in_force": info.get("pseudo"),
            "pseudo_quality": quality,
        }
        print(f"[{key}] M=0 {scores['m0']} M=1 {scores['m1']} ({seconds:.0f} s)", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    ref = results.get("off")
    print(
        "\nmAP50 on the fully annotated demo test split (truth), base classes; pairs (source, class) by demo presence M"
    )
    print(f"recall: truth boxes found with score >= {shown} (evaluate.overlay_conf: what a user is shown)")
    print(
        f"{'arm':>14} {'M=0':>7} {'d off':>7} {'M=1':>7} {'d off':>7} {'R0':>6} {'R1':>6}"
        f" {'worst M=1 pair':>28} {'s':>6} {'x off':>6}"
    )
    for key, r in results.items():
        worst = ""
        if ref and key != "off":
            drops = {
                p: r["pairs"][p]["ap50"] - v["ap50"] for p, v in ref["pairs"].items() if v["m"] == 1 and p in r["pairs"]
            }
            if drops:
                p = min(drops, key=drops.get)
                worst = f"{p} {drops[p]:+.3f}"
        d0 = f"{(r['m0'] or 0) - (ref['m0'] or 0):+.3f}" if ref and key != "off" else ""
        d1 = f"{(r['m1'] or 0) - (ref['m1'] or 0):+.3f}" if ref and key != "off" else ""
        ratio = r["seconds"] / ref["seconds"] if ref else float("nan")
        print(
            f"{key:>14} {r['m0'] or 0:7.3f} {d0:>7} {r['m1'] or 0:7.3f} {d1:>7} {r.get('m0_recall') or 0:6.3f}"
            f" {r.get('m1_recall') or 0:6.3f} {worst:>28} {r['seconds']:6.0f} {ratio:6.2f}"
        )
    if ref and "oracle" in results:
        gap = (results["oracle"]["m0"] or 0) - (ref["m0"] or 0)
        for key, r in results.items():
            if key not in ("off", "oracle") and gap > 0:
                print(
                    f"{key}: recovers {100 * ((r['m0'] or 0) - (ref['m0'] or 0)) / gap:.0f} % of the off-to-oracle M=0 gap"  # noqa: E501
                )
    for key, r in results.items():
        if not r["pseudo_quality"]:
            continue
        print(f"\npseudo-labels of {key} vs the truth's unannotated (M=0) objects, per epoch (train split)")
        cs = list(next(iter(r["pseudo_quality"].values())))
        print(f"{'epoch':>5} " + " ".join(f"{'C=' + c + ' n/P/R':>24}" for c in cs))
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        for epoch, by_c in r["pseudo_quality"].items():
            print(
                f"{epoch:>5} "
                + " ".join(
                    f"{by_c[c]['labels']:>8}/{fmt(by_c[c]['precision']):>6}/{fmt(by_c[c]['recall']):>6}" + " " * 2
                    for c in cs
                )
            )
    print(
        "per pair [ap50, recall]: "
        + json.dumps(
            {
                k: {
                    p: [round(v["ap50"], 3), None if v["recall"] is None else round(v["recall"], 3)]
                    for p, v in r["pairs"].items()
                }
                for k, r in results.items()
            }
        )
    )


if __name__ == "__main__":
    main()
