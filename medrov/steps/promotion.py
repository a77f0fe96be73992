"""The ``promote`` step (and the registry verbs around it): the gate of :mod:`medrov.tracking.registry`, with
this step measuring a candidate that has no evaluation on the gating split yet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medrov import tracking
from medrov.config import Params
from medrov.errors import TrackingError
from medrov.steps.common import run_record
from medrov.steps.evaluation import evaluate


def default_run_id(params: Params) -> str:
    """The run of the active profile's model (``runs/<profile>/mlflow.json``).

    Raises:
        TrackingError: the profile has no tracked training.
    """
    record = run_record(params)
    if not record.is_file():
        raise TrackingError("no tracked training of this profile (run `medrov train`, or pass --run-id)", record)
    return json.loads(record.read_text())["run_id"]


def promote(params: Params, run_id: str | None = None, split: str | None = None) -> dict[str, Any]:
    """Register a train run's model as ``challenger``; ``champion`` moves to it only when it wins the gate.

    Args:
        params: the params (``promote``, ``tracking``, ``evaluate`` thresholds of the gating evaluation).
        run_id: the train run (default: the active profile's latest tracked training).
        split: the gating split (default ``promote.split``).

    Returns:
        The decision with its reason and numbers (see :func:`medrov.tracking.registry.promote`).
    """

    def measure(weights: Path, gate_split: str, train_run_id: str, label: str) -> None:
        evaluate(weights, params, split=gate_split, train_run_id=train_run_id, quiet=True, weights_label=label)

    return tracking.promote(params, run_id or default_run_id(params), split=split, measure=measure)


def rollback(params: Params) -> dict[str, Any]:
    """Point ``champion`` back at the version the current champion replaced."""
    return tracking.rollback(params)


def list_models(params: Params) -> list[dict[str, Any]]:
    """The registered versions with aliases, gating metrics and decisions."""
    return tracking.list_models(params)
