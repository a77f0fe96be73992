"""The ``tune_trial`` step: one Ray Tune trial, a short tracked training nested under the sweep's run.

The trial's values are applied as dotted params overrides, it trains in its own folder (absolute paths: Ray
changes the working directory of trials) through :func:`medrov.steps.training.train`, so its MLflow run carries
the flattened params and provenance of any training, and reports the validation metric every epoch so ASHA can
stop weak trials early.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medrov.config import Params, with_overrides
from medrov.errors import TuneFailed
from medrov.steps.common import run_record
from medrov.steps.training import train
from medrov.tracking.provenance import TAG


def override(key: str, value: Any) -> str:
    """A dotted override whose value reads back as the same YAML scalar (JSON is YAML)."""
    return f"{key}={json.dumps(value)}"


def tune_trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    root: str,
    trials_dir: str | None = None,
    profile: str,
    epochs: int,
    metric: str,
    device: str,
    tracking: dict[str, str],
) -> None:
    """One Ray Tune trial: train ``profile`` for ``epochs`` with the trial's overrides, report ``metric`` per epoch.

    Args:
        config: the trial's values by dotted params key.
        base: the sweep's params (JSON), which every trial starts from.
        root: the project root of the driver.
        trials_dir: where each trial trains, a folder per trial name (``<tune.storage>/<sweep>/trials``, shared
            storage on a cluster); None: Ray's trial folder, which for a reused actor is a temporary working
            directory of the Ray session, deleted with it.
        profile: the training profile; epochs: its epochs here; metric: the ultralytics metric to report.
        device: the device override (never the profile's own list: Ray assigned the trial its GPUs, or none).
        tracking: ``uri`` and ``parent_run_id`` of the sweep's MLflow run.
    """
    if Path(root).is_dir():  # Ray starts trials in their own folder: relative params paths mean the driver's project
        os.environ["MEDROV_ROOT"] = root
    from ray import tune

    from medrov.env import apply_offline_env

    apply_offline_env()
    context = tune.get_context()
    if trials_dir:
        trial_dir = (Path(trials_dir) / context.get_trial_name()).resolve()
        trial_dir.mkdir(parents=True, exist_ok=True)
    else:
        trial_dir = Path(context.get_trial_dir()).resolve()
    overrides = [
        *(override(k, v) for k, v in config.items()),
        f"train.profile={profile}",
        f"train.project={trial_dir}",
        f"train.profiles.{profile}.epochs={epochs}",
        f"train.profiles.{profile}.device={device}",
        f"tracking.uri={tracking['uri']}",
        # the objective is ultralytics' validation metric of each epoch: no second, open-vocabulary evaluation
        "tracking.epoch_eval=false",
    ]
    params = with_overrides(Params.model_validate(base), overrides)
    record = run_record(params, profile)
    run_ids: list[str] = []

    def report(trainer) -> None:
        values = {k: float(v) for k, v in (trainer.metrics or {}).items()}
        if metric not in values:
            raise TuneFailed(f"the trainer reported no {metric!r} (it has {sorted(values)})")
        if not run_ids and record.is_file():  # written by the train step when its run starts
            run_ids.append(json.loads(record.read_text())["run_id"])
        tune.report(
            {
                "objective": values[metric],
                "epoch": int(trainer.epoch) + 1,
                "mlflow_run_id": run_ids[0] if run_ids else None,
                "run_dir": str(trainer.save_dir),
            }
        )

    trial_tags = {f"{TAG}tune_trial": context.get_trial_name(), f"{TAG}tune_parent_run_id": tracking["parent_run_id"]}
    try:
        train(
            params,
            parent_run_id=tracking["parent_run_id"],
            profile=profile,
            callbacks={"on_fit_epoch_end": [report]},
            run_name=context.get_trial_name(),
            tags=trial_tags,
        )
    except SystemExit:  # Ray ends a trial it stops (ASHA, or max_t reached) with sys.exit(0) inside report()
        if not run_ids and record.is_file():
            run_ids.append(json.loads(record.read_text())["run_id"])
        if run_ids:  # the run context marked it FAILED on the way out: it was stopped, not broken
            from mlflow import MlflowClient

            client = MlflowClient(tracking["uri"])
            client.set_tag(run_ids[0], "tune.stopped_by_scheduler", "true")
            client.set_terminated(run_ids[0], "FINISHED")
        raise
