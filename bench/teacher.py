"""Which teacher should decide the pseudo-labels? Agreement and cost of the three, on the same training batches.

On each training batch of a (pre-trained) model, the decisions of an extra no-grad pass of the EMA weights
(``ema``) and of the current weights (``model``, the reference code) are compared with the decisions taken from
the training forward itself (``student``, no extra pass). Prints, per teacher, the Jaccard agreement of the
decided boxes with the student's (same image, same prompt slot, IoU >= 0.5) and the time per batch against the
training step measured in the same run.

    python bench/teacher.py --weights /tmp/medrov-missing/runs/warmup/demo/weights/best.pt \\
        --data /tmp/medrov-missing/missing/omnis/omnis.yaml [--batches 20] [-S pseudo.conf_c=0.5]

(``bench/missing_labels.py --warmup-epochs N`` leaves such a model and dataset behind.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrov.config import load_params  # noqa: E402
from medrov.env import apply_offline_env  # noqa: E402


class _Enough(Exception):
    pass


def _boxes(decisions):
    return [(t.image, t.slot, np.array(t.box)) for t in decisions.targets] + [
        (n.image, n.cls, np.array(n.box)) for n in decisions.negatives
    ]


def agreement(a, b) -> tuple[int, int, int]:
    """(matched, |a|, |b|): greedy one-to-one matches with the same image and slot and IoU >= 0.5."""
    used, matched = set(), 0
    for img, slot, box in a:
        for j, (img2, slot2, box2) in enumerate(b):
            if j in used or img2 != img or slot2 != slot:
                continue
            ix = max(0.0, min(box[2], box2[2]) - max(box[0], box2[0]))
            iy = max(0.0, min(box[3], box2[3]) - max(box[1], box2[1]))
            inter = ix * iy
            union = (box[2] - box[0]) * (box[3] - box[1]) + (box2[2] - box2[0]) * (box2[3] - box2[1]) - inter
            if union > 0 and inter / union >= 0.5:
                used.add(j)
                matched += 1
                break
    return matched, len(a), len(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/medrov-teacher"))
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    apply_offline_env()
    from medrov.model import mechanisms
    from medrov.model.pseudo import decide
    from medrov.model.train import train

    params = load_params(
        overrides=[
            f"train.data={args.data.resolve()}",
            f"train.profiles.demo.model={args.weights.resolve()}",
            f"train.project={args.work.resolve()}",
            "train.profiles.demo.imgsz=320",
            "train.profiles.demo.batch=8",
            "pseudo.teacher=student",
            "pseudo.negatives=false",
            *args.overrides,
        ]
    )
    stats = {"ema": [0, 0, 0, 0.0], "model": [0, 0, 0, 0.0]}
    step = {"seconds": 0.0, "batches": 0, "student": 0.0}
    pending = {}
    original = mechanisms.Mechanisms.__call__

    def call(self, trainer, batch):
        for name in ("ema", "model"):
            self.teacher = name
            start = time.perf_counter()
            y = self._teacher_predictions(trainer, batch)
            pending[name] = decide(self._inputs(batch, y), self.presence, self.rule, np.random.default_rng(0))
            stats[name][3] += time.perf_counter() - start
        self.teacher = "student"
        step["t0"] = time.perf_counter()
        step["student0"] = self.seconds
        return original(self, trainer, batch)

    def batch_end(trainer):
        mech = trainer._mechanisms
        step["seconds"] += time.perf_counter() - step["t0"]
        step["student"] += mech.seconds - step["student0"]
        step["batches"] += 1
        student = _boxes(mech.last_decisions)
        for name in ("ema", "model"):
            m, a, b = agreement(_boxes(pending[name]), student)
            stats[name][0] += m
            stats[name][1] += a
            stats[name][2] += b
        if step["batches"] >= args.batches:
            raise _Enough

    mechanisms.Mechanisms.__call__ = call
    try:
        train(params, callbacks={"on_train_batch_end": [batch_end]})
    except _Enough:
        pass
    n = max(step["batches"], 1)
    train_ms = 1000 * (step["seconds"] - step["student"]) / n  # the training step without any mechanism
    print(
        f"\n{n} batches, training step {train_ms:.0f} ms/batch; student hook {1000 * step['student'] / n:.1f} ms/batch "
        f"({(train_ms + 1000 * step['student'] / n) / train_ms:.3f}x)"
    )
    print(f"{'teacher':>8} {'boxes':>6} {'student':>8} {'matched':>8} {'jaccard':>8} {'ms/batch':>9} {'x step':>7}")
    for name, (m, a, b, sec) in stats.items():
        jac = m / max(a + b - m, 1)
        ms = 1000 * sec / n
        print(f"{name:>8} {a:6d} {b:8d} {m:8d} {jac:8.3f} {ms:9.1f} {(train_ms + ms) / train_ms:7.3f}")


if __name__ == "__main__":
    main()
