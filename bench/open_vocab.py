"""Is the vocabulary still open after fine-tuning? Novel-class mAP50 and the effect of unseen synonyms.

Evaluates one model on a split twice or more: with the catalogue prompts (base classes were trained on, novel
classes held out), then with some classes prompted by a word training never saw (default: "erythrocyte" for red
blood cell, "leukocyte" for white blood cell, "thrombocyte" for platelets, "hepar" for liver, "renal mass" for
kidney tumor). Prints AP50 per class for each prompt set and the change. No target: figures only.

    python bench/open_vocab.py [--weights runs/demo/weights/best.pt] [--split test]
                               [--swap "red blood cell=erythrocyte"] [-S train.data=...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrov.config import load_params  # noqa: E402
from medrov.env import apply_offline_env  # noqa: E402

SWAPS = {
    "red blood cell": "erythrocyte",
    "white blood cell": "leukocyte",
    "platelets": "thrombocyte",
    "liver": "hepar",
    "kidney tumor": "renal mass",
}


def compare(weights: Path, params, split: str, swaps: dict[str, str]) -> list[dict]:
    """Rows (class, novel, AP50 with catalogue prompts, AP50 with the swapped prompt) for every class with GT."""
    from medrov.model.evaluate import evaluate

    base = evaluate(weights, params, split=split, out_metrics=None, plots_dir=None)
    swapped = evaluate(weights, params, split=split, out_metrics=None, plots_dir=None, prompts=swaps)
    import yaml

    from medrov import paths
    from medrov.model.build import prompt_name

    spec = yaml.safe_load(paths.resolve(params.train.data).read_text())
    novel = {
        prompt_name(spec["names"][int(c)] if int(c) in spec["names"] else spec["names"][str(c)])
        for c in spec.get("novel", [])
    }
    rows = []
    for name, ap in sorted(base.get("class", {}).items()):
        rows.append(
            {
                "class": name,
                "prompt": swaps.get(name, name),
                "novel": name in novel,
                "ap50": ap,
                "ap50_swapped": swapped.get("class", {}).get(name, float("nan")),
            }
        )
    return rows, base, swapped


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--swap", action="append", default=[], help="'class=prompt' (default: the built-in synonyms)")
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    apply_offline_env()
    params = load_params(overrides=[*args.overrides, "evaluate.metrics=null", "evaluate.plots=null"])
    weights = args.weights or Path(params.train.project) / params.train.profile / "weights" / "best.pt"
    swaps = dict(s.split("=", 1) for s in args.swap) if args.swap else SWAPS
    rows, base, swapped = compare(weights, params, args.split, swaps)
    print(f"\nopen vocabulary on {args.split} ({weights}): mAP50 with catalogue prompts / with swapped prompts")
    for group in ("base", "novel", "all"):
        if group in base:
            print(f"  {group:6s} {base[group]['map50']:.4f} / {swapped.get(group, {}).get('map50', float('nan')):.4f}")
    print("\n| class | split | prompt | AP50 | AP50 swapped | change |\n|---|---|---|---|---|---|")
    for r in rows:
        change = r["ap50_swapped"] - r["ap50"] if r["prompt"] != r["class"] else 0.0
        print(
            f"| {r['class']} | {'novel' if r['novel'] else 'base'} | {r['prompt']} | {r['ap50']:.4f} | "
            f"{r['ap50_swapped']:.4f} | {change:+.4f} |"
        )


if __name__ == "__main__":
    main()
