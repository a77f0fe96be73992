"""What several steps share: where a profile's run lives, default weights, the configured prompter."""

from __future__ import annotations

from pathlib import Path

from medrov import paths
from medrov.config import Params
from medrov.errors import MedrovError

RUN_FILE = "mlflow.json"  # next to medrov.json in runs/<profile>: which MLflow run a model directory belongs to


def run_record(params: Params, profile: str | None = None, closed_set: bool = False) -> Path:
    """``runs/<profile>/mlflow.json``: the tracking URI and run id of the profile's latest tracked training."""
    from medrov.model.train import run_dir

    return run_dir(params, profile, closed_set) / RUN_FILE


def default_weights(params: Params, weights: str | Path | None = None, closed_set: bool = False) -> Path:
    """Explicit weights, else the latest model of the active training profile.

    Raises:
        MedrovError: no weights given and the profile has no trained model.
    """
    from medrov.model.train import run_dir

    if weights:
        return paths.resolve(weights)
    run = run_dir(params, closed_set=closed_set) / "weights"
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise MedrovError(f"no trained model in {run} (run `medrov train` or pass --weights)")


def prompter(params: Params, spec: str | None = None):
    """A :class:`~medrov.model.build.Prompter` of ``spec`` (default ``text.encoder``) with the configured cache."""
    from medrov.model.build import Prompter
    from medrov.text import load_encoder

    cache = None if params.text.cache_dir is None else paths.resolve(params.text.cache_dir)
    return Prompter(load_encoder(spec or params.text.encoder, params.text.fallback), cache)


def quiet_params(params: Params) -> Params:
    """A copy of params whose evaluation writes no metrics file and no plots (those belong to the DVC stage)."""
    copy = params.model_copy(deep=True)
    copy.evaluate.metrics = None
    copy.evaluate.plots = None
    return copy
