"""The DVC metric files: a few headline numbers per stage.

``dvc metrics show`` prints one table whose columns are the union of every file's keys, so each file keeps to
its headline under names no other file uses (``dvc exp show`` then heads its columns with the bare names, and
``--keep 'map50|base$|novel$'`` picks them): the table stays within 160 columns. The
detail lives in non-metric JSON beside each stage's outputs (``data/omnis/convert_summary.json``,
``reports/validate/validation.json``, ``runs/<profile>/medrov.json``, ``evaluate.detail``, ``reports/promote.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medrov import paths

WIDTH = 160  # the widest `dvc metrics show` line the files may produce (tests/unit/test_dvc_views.py)


def _map(group: Any, key: str = "map50") -> float | None:
    return round(float(group[key]), 4) if isinstance(group, dict) and group.get(key) is not None else None


def convert(summary: dict[str, Any]) -> dict[str, Any]:
    """Images and boxes written, inputs quarantined."""
    return {k: summary[k] for k in ("images", "boxes", "quarantined") if k in summary}


def validate(summary: dict[str, Any]) -> dict[str, Any]:
    """Whether the gate passed (the failed and warned checks: the detail)."""
    return {"success": summary["success"]} if "success" in summary else {}


def train(info: dict[str, Any]) -> dict[str, Any]:
    """Epochs done and ultralytics' own validation mAP50 of the run (its ``results.csv``, the whole vocabulary)."""
    val = info.get("val") or {}
    out: dict[str, Any] = {"epochs": info.get("epochs_done", info.get("epochs"))}
    if val.get("metrics/mAP50(B)") is not None:
        out["val_map50"] = round(float(val["metrics/mAP50(B)"]), 4)
    return out


def evaluate(result: dict[str, Any]) -> dict[str, Any]:
    """Base+novel mAP50 and mAP50-95, and mAP50 of base and of novel classes, on ``evaluate.split``."""
    out = {
        "map50": _map(result.get("all")),
        "map50_95": _map(result.get("all"), "map50_95"),
        "base": _map(result.get("base")),
        "novel": _map(result.get("novel")),
    }
    return {k: v for k, v in out.items() if v is not None}


def promote(result: dict[str, Any]) -> dict[str, Any]:
    """The registered version and the decision (the figures of both sides: the detail)."""
    return {k: result[k] for k in ("version", "decision") if result.get(k) is not None}


def write(path: str | Path | None, data: dict[str, Any]) -> Path | None:
    """Write ``data`` as indented JSON (a metric file or its detail); None writes nothing."""
    if path is None:
        return None
    target = paths.resolve(path, Path.cwd())
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return target
