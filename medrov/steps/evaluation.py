"""The ``evaluate`` step: open-vocabulary mAP of some weights, as an MLflow run nested under their training."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from medrov import paths, tracking
from medrov.config import Params
from medrov.errors import MedrovError
from medrov.steps.common import RUN_FILE, quiet_params
from medrov.tracking.provenance import TAG

log = logging.getLogger(__name__)


def train_run_of(weights: Path) -> str | None:
    """The MLflow run that trained ``weights`` (``runs/<p>/weights/best.pt`` -> ``runs/<p>/mlflow.json``)."""
    parents = Path(weights).resolve().parents
    record = parents[1] / RUN_FILE if len(parents) > 1 else None
    if record is None or not record.is_file():
        return None
    with contextlib.suppress(ValueError, OSError):
        return json.loads(record.read_text()).get("run_id")
    return None


def evaluate(
    weights: str | Path,
    params: Params,
    split: str | None = None,
    out_metrics: str | Path | None = None,
    plots_dir: str | Path | None = None,
    train_run_id: str | None = None,
    quiet: bool = False,
    weights_label: str | None = None,
    prompter=None,
) -> dict[str, Any]:
    """:func:`medrov.model.evaluate.evaluate` as an ``evaluate`` run, nested under (and tagged with) the train run
    of the weights when it is in this store.

    Args:
        weights: the checkpoint to evaluate.
        params: the run's params (``evaluate``, ``train.data``, ``text``, ``tracking``).
        split: train, val or test (default ``evaluate.split``).
        out_metrics: metrics JSON (default ``evaluate.metrics``).
        plots_dir: folder for the PNGs (default ``evaluate.plots``).
        train_run_id: the run that trained the weights (default: from the run folder of the weights).
        quiet: write no metrics file or plots outside MLflow.
        weights_label: how the run's tags name the weights (default: their path).
        prompter: an already loaded text encoder to reuse.

    Returns:
        The evaluation result, with ``mlflow_run_id`` when tracked.
    """
    from medrov.model import evaluate as model_eval

    split = split or params.evaluate.split
    run_params = quiet_params(params) if quiet else params
    if not params.tracking.enabled:
        return model_eval.evaluate(
            weights, run_params, split=split, out_metrics=out_metrics, plots_dir=plots_dir, prompter=prompter
        )
    client = tracking.connect(params.tracking)
    train_run = tracking.existing_run(client, train_run_id or train_run_of(Path(weights)))
    tags = {
        f"{TAG}split": split,
        f"{TAG}weights": weights_label or str(weights),
        f"{TAG}train_run_id": train_run.info.run_id if train_run else "none (weights not trained in this store)",
    }
    with tracking.step_run(
        params,
        "evaluate",
        parent_run_id=train_run.info.run_id if train_run else None,
        tags=tags,
        run_name=f"evaluate-{split}",
    ) as run:
        with tempfile.TemporaryDirectory(prefix="medrov-eval-") as tmp:
            default_plots = None if quiet or not params.evaluate.plots else paths.resolve(params.evaluate.plots)
            plots = (Path(plots_dir) if plots_dir else default_plots) or Path(tmp) / "plots"
            result = model_eval.evaluate(
                weights, run_params, split=split, out_metrics=out_metrics, plots_dir=plots, prompter=prompter
            )
            tracking.log_evaluation(client, run.info.run_id, result, split, params)
            tracking.log_dir(client, run.info.run_id, plots, "plots", ("*.png",))
    result["mlflow_run_id"] = run.info.run_id
    return result


def epoch_metrics(params: Params, trainer) -> dict[str, float] | None:
    """The open-vocabulary metrics of a training's latest weights on ``promote.split`` (for the epoch logger);
    None when they cannot be measured (the logger then stops asking)."""
    from medrov.model.evaluate import evaluate as model_evaluate

    weights = Path(trainer.last)
    if not weights.is_file():
        return {}
    split = params.promote.split
    try:
        result = model_evaluate(
            weights,
            quiet_params(params),
            split=split,
            prompter=getattr(trainer, "prompter", None),
            imgsz=int(trainer.args.imgsz),
        )
    except MedrovError as exc:
        log.warning("mlflow: per-epoch evaluation off (%s)", exc)
        return None
    return tracking.eval_metrics(result, f"epoch/{split}")


def gate_evaluation(params: Params, run_id: str, weights: Path, prompter) -> str | None:
    """Evaluate new weights on ``promote.split`` now, while the model, the encoder and torch are warm in this
    process, so ``medrov promote`` finds its gating metrics instead of loading everything again to measure them.
    A failure only logs: promote then evaluates by itself."""
    try:
        result = evaluate(
            weights,
            params,
            split=params.promote.split,
            train_run_id=run_id,
            quiet=True,
            weights_label=f"runs:/{run_id}/weights/{weights.name}",
            prompter=prompter,
        )
    except MedrovError as exc:
        log.warning(
            "promote gate: %s evaluation after training skipped (%s); promote will evaluate", params.promote.split, exc
        )
        return None
    log.info(
        "promote gate: %s mAP50 %.4f recorded as evaluate run %s",
        params.promote.split,
        result.get("all", {}).get("map50", float("nan")),
        result["mlflow_run_id"],
    )
    return result["mlflow_run_id"]
