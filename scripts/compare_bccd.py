"""Open-vocabulary MedROV model vs the closed-set YOLOv8 baseline on the real BCCD data, same budget.

Converts ../shared/data/bccd alone into a scratch folder, trains both models with the same training profile
(default: the `demo` profile of params.yaml), evaluates both on BCCD's test split and prints mAP50 / mAP50-95.

    python scripts/compare_bccd.py [--profile demo] [--work /tmp/medrov-bccd] [-S train.profiles.demo.epochs=10]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrov import paths  # noqa: E402
from medrov.config import load_params  # noqa: E402
from medrov.env import apply_offline_env  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--work", type=Path, default=Path("/tmp/medrov-bccd"))
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    apply_offline_env()
    from medrov.data import convert
    from medrov.model.evaluate import evaluate
    from medrov.model.train import train

    bccd = paths.shared_data_dir() / "bccd"
    if not bccd.is_dir():
        raise SystemExit(f"{bccd} not found")
    work = args.work.resolve()
    (work / "data").mkdir(parents=True, exist_ok=True)
    sources = work / "data" / "sources.yaml"
    sources.write_text(f"sources:\n  - name: BCCD\n    root: {bccd / 'BCCD'}\n    split: imagesets\n")
    params = load_params(overrides=["data.workers=2", *args.overrides])
    convert.run(params.data, sources_file=sources, out_dir=work / "data" / "omnis", progress=False)
    overrides = [
        f"train.data={work / 'data' / 'omnis' / 'omnis.yaml'}",
        f"train.project={work / 'runs'}",
        f"train.profile={args.profile}",
        *args.overrides,
    ]
    params = load_params(overrides=overrides)
    rows = {}
    for closed in (False, True):
        info = train(params, closed_set=closed)
        res = evaluate(
            info["weights"],
            params,
            split="test",
            out_metrics=work / f"eval-{info['kind']}.json",
            plots_dir=work / f"plots-{info['kind']}",
        )
        rows[info["kind"]] = {g: res.get(g) for g in ("all", "base", "novel")} | {"train_seconds": info["seconds"]}
    print(json.dumps(rows, indent=2))
    for kind, r in rows.items():
        print(
            f"{kind:>16}: mAP50 all {r['all']['map50']:.4f}  base {r['base']['map50']:.4f}  "
            f"novel {(r['novel'] or {}).get('map50', float('nan')):.4f}  ({r['train_seconds']} s training)"
        )


if __name__ == "__main__":
    main()
