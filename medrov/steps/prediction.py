"""The ``predict`` step: a detector from the registry or a weights file, then boxes and overlays per input."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from medrov import tracking
from medrov.config import Params
from medrov.steps.common import default_weights, prompter


def load_detector(params: Params, weights: str | None = None, threads: int | None = None):
    """The detector to predict with: an MLflow model URI (``models:/medrov@champion``, ``runs:/...``), a weights
    file, or by default the registry's champion, else the latest model of the active profile.

    Returns:
        (detector, what the weights were: the URI or the file path).
    """
    from medrov.model.detector import Detector, set_inference_threads

    if not weights:  # the registry's champion when there is one, else the latest model of the active profile
        weights = tracking.champion_uri(params)
    if weights and weights.startswith(("models:/", "runs:/")):
        # its prompts come from the model's embedding table
        detector = tracking.load_pyfunc(params, weights).unwrap_python_model().detector
    else:
        detector = Detector(default_weights(params, weights), threads=threads)
        weights = str(detector.weights)
        if detector.open_vocabulary:
            detector.prompter = prompter(params)
    if threads:  # also for a registry model, whose Detector was built without it
        set_inference_threads(threads)
    return detector, weights


def predict(
    params: Params,
    path: str | Path,
    prompts: Sequence[str],
    out_dir: str | Path,
    weights: str | None = None,
    conf: float = 0.25,
    imgsz: int = 640,
    modality: str = "auto",
    threads: int | None = None,
) -> dict[str, Any]:
    """Detect ``prompts`` on a picture, volume, DICOM series or folder; one JSON and overlay PNG(s) per input.

    Returns:
        The summary of :func:`medrov.model.predict.predict_path` with ``model`` (the weights used) first.
    """
    from medrov.model.predict import predict_path

    detector, used = load_detector(params, weights, threads)
    summary = predict_path(detector, path, list(prompts), out_dir, imgsz=imgsz, conf=conf, modality=modality)
    return {"model": used, **summary}
