"""MLflow tracking and the model registry, as an adapter that knows no model code.

- :mod:`~medrov.tracking.store`: where runs live (``MLFLOW_TRACKING_URI``, ``tracking.uri``, or the embedded
  ``sqlite:///<project>/mlflow.db``), one run per step (:func:`step_run`), metrics and artifacts by run id;
- :mod:`~medrov.tracking.provenance`: git commit, DVC hash of the Omnis data, presence md5, encoder tags;
- :mod:`~medrov.tracking.callbacks`: the ``on_fit_epoch_end`` logger, shaped like ultralytics' integrations;
- :mod:`~medrov.tracking.registry`: the promotion gate (:func:`decide`), promote, rollback, list.

The steps that train, evaluate and package models use this from :mod:`medrov.steps`; the pyfunc packaging is
:mod:`medrov.model.pyfunc`. MLflow itself is imported lazily, inside the functions.
"""

from medrov.tracking.callbacks import EpochLogger
from medrov.tracking.provenance import TAG, data_tags, dvc_hash, encoder_tags, git_commit, md5_file, run_tags
from medrov.tracking.registry import decide, gate_from_metrics, gating_metrics, list_models, promote, rollback
from medrov.tracking.store import (
    champion_uri,
    check_server,
    connect,
    describe_run,
    eval_metrics,
    existing_run,
    experiment_id,
    guard,
    is_server,
    load_pyfunc,
    log_dataset,
    log_dir,
    log_evaluation,
    log_metrics,
    log_params,
    metric_key,
    record_evaluation,
    settings_in_force,
    step_run,
    tracking_uri,
)

__all__ = [
    "TAG",
    "EpochLogger",
    "champion_uri",
    "check_server",
    "connect",
    "data_tags",
    "decide",
    "describe_run",
    "dvc_hash",
    "encoder_tags",
    "eval_metrics",
    "existing_run",
    "experiment_id",
    "gate_from_metrics",
    "gating_metrics",
    "git_commit",
    "guard",
    "is_server",
    "list_models",
    "load_pyfunc",
    "log_dir",
    "log_evaluation",
    "log_metrics",
    "log_dataset",
    "log_params",
    "md5_file",
    "metric_key",
    "promote",
    "record_evaluation",
    "rollback",
    "run_tags",
    "settings_in_force",
    "step_run",
    "tracking_uri",
]
