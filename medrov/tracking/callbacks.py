"""The epoch callback, shaped like ultralytics' own integrations (``ultralytics/utils/callbacks/mlflow.py``):
a callable for ``on_fit_epoch_end`` that logs by run id, on rank zero only, and never stops a training.

It knows no model code: the open-vocabulary evaluation of each epoch is a function handed in by the caller
(the train step), which returns flat metrics (:func:`medrov.tracking.store.eval_metrics`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from medrov.config import Params
from medrov.tracking.store import log_metrics, tracking_uri

log = logging.getLogger(__name__)

EpochEval = Callable[[Any], dict[str, float]]  # trainer -> metrics of the epoch's weights


class EpochLogger:
    """``on_fit_epoch_end`` callback: ultralytics' losses, metrics and learning rates per epoch, pseudo-label
    counts, and the metrics of ``epoch_eval`` (when given and ``tracking.epoch_eval`` is on).

    Args:
        params: the run's params (tracking store, ``tracking.epoch_eval``).
        run_id: the MLflow run to log into.
        epoch_eval: trainer -> metrics; returning ``None`` turns it off for the rest of the training.
    """

    def __init__(self, params: Params, run_id: str, epoch_eval: Callable[[Any], dict[str, float] | None] | None = None):
        self.run_id = run_id
        self.uri = tracking_uri(params.tracking)
        self.epoch_eval = epoch_eval if params.tracking.epoch_eval else None
        self.prompter = None
        self._after_last_epoch = False
        self._last_step = 0
        self._client = None

    def __call__(self, trainer) -> None:
        from ultralytics.utils import RANK

        if RANK not in {-1, 0}:
            return
        self.prompter = getattr(trainer, "prompter", None) or self.prompter
        # ultralytics calls this once more after the loop, for the final validation of best.pt
        final = self._after_last_epoch
        self._after_last_epoch = bool(trainer.stop)
        try:
            from mlflow import MlflowClient

            self._client = self._client or MlflowClient(tracking_uri=self.uri)
            if final:  # the validation of best.pt
                metrics = {f"best/{k}": float(v) for k, v in (trainer.metrics or {}).items()}
            else:
                metrics = {
                    k: float(v)
                    for k, v in {
                        **trainer.label_loss_items(trainer.tloss, prefix="train"),
                        **(trainer.metrics or {}),
                        **(getattr(trainer, "lr", None) or {}),
                        # pseudo-labels / negatives per (source, class) of the epoch
                        **(getattr(trainer, "pseudo_metrics", None) or {}),
                    }.items()
                }
            if self.epoch_eval is not None and not final:
                extra = self.epoch_eval(trainer)
                if extra is None:
                    self.epoch_eval = None
                metrics.update(extra or {})
            # ultralytics counts epochs from 1 (its log and results.csv); trainer.epoch is 0-based. The validation
            # of best.pt goes at the last epoch's step, not one past it
            step = self._last_step if final else int(trainer.epoch) + 1
            self._last_step = step
            log_metrics(self._client, self.run_id, metrics, step=step)
        except Exception as exc:  # a tracking hiccup must not cost a training
            log.warning("mlflow: epoch %s metrics not logged (%s: %s)", trainer.epoch, type(exc).__name__, exc)
