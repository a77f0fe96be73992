"""Each verb once: the one door the CLI (hence DVC), the Prefect tasks and the Ray trials go through.

A step knows the model code (:mod:`medrov.model`) and the tracking adapter (:mod:`medrov.tracking`); callers
pass params (:class:`medrov.config.Params`) and get a summary back.
"""

from medrov.steps.evaluation import evaluate
from medrov.steps.prediction import load_detector, predict
from medrov.steps.promotion import list_models, promote, rollback
from medrov.steps.training import log_weights_run, train
from medrov.steps.tuning import tune_trial
from medrov.tracking import record_evaluation

__all__ = [
    "evaluate",
    "list_models",
    "load_detector",
    "log_weights_run",
    "predict",
    "promote",
    "record_evaluation",
    "rollback",
    "train",
    "tune_trial",
]
