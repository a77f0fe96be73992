"""Does ``medrov tune`` find signal in the pseudo-label thresholds (T, C)? The sweep on the demo experiment.

From one warm start (plain training on the demo sources, as in ``bench/mechanisms.py``), ``medrov tune`` (the
real step: a local Ray, ASHA, every trial a tracked training nested under the sweep's MLflow run) sweeps T and C
with every mechanism on. Each trial validates per epoch on ``--val``:

    truth   the val split of the demo's full truth (``train.val_data``): every object of every class annotated,
            so the objective also sees the classes the sources leave unannotated (M=0), which pseudo-labels are for
    demo    the demo's own val split, scored on annotated (M=1) pairs only (the default of a project without a
            fully annotated val set): it cannot see what pseudo-labels recover

Then every trial's best checkpoint is scored on the truth's fully annotated test split, as ``bench/mechanisms.py``
scores its arms: mAP50 and the recall at ``evaluate.overlay_conf`` over the (source, class) pairs with M=0 and
with M=1. Prints the sweep table, best minus worst on each column, and the best config ``medrov tune`` chose.
Compare the spreads with the run-to-run noise of the mechanisms bench's off arm (two seeds).

    python bench/tune_sweep.py [--work /tmp/medrov-tune] [--warm-weights W | --warm-epochs 3] [--epochs 6]
                               [--samples 8] [--grace 3] [--conf-c 0.3,0.95] [--iou-t 0.2,0.4] [--val truth|demo]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from medrov.config import load_params  # noqa: E402
from medrov.env import apply_offline_env  # noqa: E402


def spread(rows: list[dict], key: str) -> float | None:
    """Best minus worst of a column over the trials that have it."""
    values = [r[key] for r in rows if r.get(key) is not None]
    return max(values) - min(values) if len(values) > 1 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/medrov-tune"))
    ap.add_argument("--warm-weights", type=Path, help="the warm start (default: train one, --warm-epochs)")
    ap.add_argument("--warm-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6, help="per trial (ASHA's max_t)")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--grace", type=int, default=3, help="epochs before ASHA may stop a trial")
    ap.add_argument("--conf-c", default="0.3,0.95", help="C range (uniform)")
    ap.add_argument("--iou-t", default="0.2,0.4", help="T range (uniform)")
    ap.add_argument("--val", choices=("truth", "demo"), default="truth")
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    apply_offline_env()
    import pandas as pd
    import yaml
    from mechanisms import prepare, score_weights

    from medrov import tune
    from medrov.model.train import train

    work = args.work.resolve()
    demo_omnis, truth_omnis = prepare(work)
    base = [
        f"text.encoder={args.encoder}",
        f"text.cache_dir={work / 'text-cache'}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
        "tracking.epoch_eval=false",
        "evaluate.metrics=null",
        "evaluate.plots=null",
        f"train.data={demo_omnis / 'omnis.yaml'}",
        *args.overrides,
    ]
    if args.warm_weights:
        warm = args.warm_weights.resolve()
    else:
        params = load_params(
            overrides=[
                *base,
                "tracking.enabled=false",
                "pseudo.labels=false",
                "pseudo.negatives=false",
                "pseudo.presence_sampling=false",
                f"train.project={work / 'runs' / 'warm'}",
                f"train.profiles.demo.epochs={args.warm_epochs}",
            ]
        )
        warm = Path(train(params)["weights"])
        print(f"[warm] {args.warm_epochs} epochs -> {warm}", flush=True)
    c_lo, c_hi = (float(v) for v in args.conf_c.split(","))
    t_lo, t_hi = (float(v) for v in args.iou_t.split(","))
    space = {"pseudo.iou_t": {"uniform": [t_lo, t_hi]}, "pseudo.conf_c": {"uniform": [c_lo, c_hi]}}
    params = load_params(
        overrides=[
            *base,
            f"train.profiles.demo.model={warm}",
            *([f"train.val_data={truth_omnis / 'omnis.yaml'}"] if args.val == "truth" else []),
            f"tune.epochs={args.epochs}",
            f"tune.grace_period={args.grace}",
            f"tune.num_samples={args.samples}",
            f"tune.space={json.dumps(space)}",
            f"tune.storage={work / 'ray'}",
            f"tune.best={work / 'tune_best.yaml'}",
        ]
    )
    t0 = time.perf_counter()
    summary = tune.run(params)
    seconds = time.perf_counter() - t0
    print(f"[tune] {len(summary['trials'])} trials in {seconds:.0f} s; best {summary['best']}", flush=True)

    presence = pd.read_csv(demo_omnis / "presence.csv", index_col=0)
    novel = set(int(c) for c in yaml.safe_load((demo_omnis / "omnis.yaml").read_text()).get("novel", []))
    image_source = dict(pd.read_parquet(truth_omnis / "manifest.parquet", columns=["image", "source"]).values)
    eval_params = load_params(overrides=[*base, "tracking.enabled=false", f"train.data={truth_omnis / 'omnis.yaml'}"])
    shown = eval_params.evaluate.overlay_conf
    rows = []
    for trial in summary["trials"]:
        row = {
            "trial": trial["trial"],
            "iou_t": trial["config"]["pseudo.iou_t"],
            "conf_c": trial["config"]["pseudo.conf_c"],
            "epochs": trial["epochs"],
            "objective": trial["objective"],
        }
        if trial.get("weights"):
            coco = work / "coco" / trial["trial"]
            scores = score_weights(trial["weights"], eval_params, coco, image_source, presence, novel, shown)
            row.update({k: scores[k] for k in ("m0", "m0_recall", "m1", "m1_recall")})
        rows.append(row)
    rows.sort(key=lambda r: -(r["objective"] or 0))
    out = {"summary": summary, "rows": rows, "seconds": seconds, "val": args.val}
    (work / "sweep.json").write_text(json.dumps(out, indent=2, default=str))
    objective = "val mAP50 (truth: every class)" if args.val == "truth" else "val mAP50 (M=1 pairs)"
    print(f"\n`medrov tune`: {len(rows)} trials from one warm start, objective {objective}; truth test split, base")
    print(f"classes, by demo presence M; recall at score >= {shown}")
    print(f"{'T':>6} {'C':>6} {'epochs':>6} {'objective':>9} {'M=0 AP':>7} {'M=0 R':>6} {'M=1 AP':>7} {'M=1 R':>6}")
    fmt = lambda v, w: f"{v:{w}.3f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    for r in rows:
        print(
            f"{r['iou_t']:6.3f} {r['conf_c']:6.3f} {r['epochs']:>6} {fmt(r['objective'], 9)}"
            f" {fmt(r.get('m0'), 7)} {fmt(r.get('m0_recall'), 6)} {fmt(r.get('m1'), 7)} {fmt(r.get('m1_recall'), 6)}"
        )
    full = [r for r in rows if r["epochs"] == args.epochs]  # trials ASHA let run the whole budget
    print(
        f"best - worst over the {len(full)} full-budget trials: "
        + ", ".join(
            f"{name} {fmt(spread(full, key), 0)}"
            for name, key in (("objective", "objective"), ("M=0 AP", "m0"), ("M=0 R", "m0_recall"), ("M=1 AP", "m1"))
        )
    )
    print(f"best: {summary['best']} ({summary['metric']} {summary['best_score']:.4f}) -> {summary['best_file']}")


if __name__ == "__main__":
    main()
