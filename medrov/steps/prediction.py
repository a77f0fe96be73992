"""The ``predict`` step: a detector from the registry or a weights file, then boxes and overlays per input.

The weights carry a training record (:mod:`medrov.model.record`): the text encoder and the normalisation they
were trained with. Prompts are embedded by the encoder the params give only when it is that encoder (else the
step refuses, unless told otherwise), and volumes are scaled with the recorded window and percentiles unless
overridden. Weights with no record (older ones) get the params, with one warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from medrov import tracking
from medrov.config import Params
from medrov.steps.common import default_weights, prompter

log = logging.getLogger("medrov.predict")


def _matching_prompter(params: Params, detector, allow_encoder_mismatch: bool):
    """The params' prompter, checked against the encoder the weights were trained with; and how it was checked."""
    from medrov.model.record import check_encoder

    made = prompter(params)
    recorded = (detector.record or {}).get("encoder")
    check = check_encoder(
        recorded, made.describe(), params.text.encoder, detector.weights, allow_mismatch=allow_encoder_mismatch
    )
    return made, check


def load_detector(
    params: Params, weights: str | None = None, threads: int | None = None, allow_encoder_mismatch: bool = False
):
    """The detector to predict with: an MLflow model URI (``models:/medrov@champion``, ``runs:/...``), a weights
    file, or by default the registry's champion, else the latest model of the active profile.

    Returns:
        (detector, what the weights were: the URI or the file path, how its prompt encoder was checked).

    Raises:
        EncoderError: the params give another text encoder than the weights were trained with (unless
            ``allow_encoder_mismatch``), or no encoder can be loaded.
    """
    from medrov.model.detector import Detector, set_inference_threads

    if not weights:  # the registry's champion when there is one, else the latest model of the active profile
        weights = tracking.champion_uri(params)
    check = None
    if weights and weights.startswith(("models:/", "runs:/")):
        # its prompts come from the model's embedding table, made by the training encoder itself
        detector = tracking.load_pyfunc(params, weights).unwrap_python_model().detector
        check = "the model's own embedding table" if detector.open_vocabulary else None
    else:
        detector = Detector(default_weights(params, weights), threads=threads)
        weights = str(detector.weights)
        if detector.open_vocabulary:
            detector.prompter, check = _matching_prompter(params, detector, allow_encoder_mismatch)
    if detector.record is None:
        log.warning(
            "weights %s carry no training record (trained before it was kept): using text.encoder and "
            "data.ct_window/mri_percentiles from the params",
            detector.weights,
        )
    if threads:  # also for a registry model, whose Detector was built without it
        set_inference_threads(threads)
    return detector, weights, check


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
    ct_window: Any = None,
    mri_percentiles: Any = None,
    allow_encoder_mismatch: bool = False,
) -> dict[str, Any]:
    """Detect ``prompts`` on a picture, volume, DICOM series or folder; one JSON and overlay PNG(s) per input.

    Args:
        ct_window, mri_percentiles: ``(low, high)`` or ``"LO,HI"`` overriding the recorded normalisation.
        allow_encoder_mismatch: embed prompts with the params' encoder even when the weights were trained with
            another one.

    Returns:
        The summary of :func:`medrov.model.predict.predict_path` with ``model`` (the weights used),
        ``encoder_check`` (see :func:`medrov.model.record.check_encoder`) and ``normalisation`` first.

    Raises:
        ConfigError: an override is not an increasing pair (percentiles within 0..100).
        EncoderError: see :func:`load_detector`.
    """
    from medrov.model.predict import predict_path
    from medrov.model.record import resolve_normalisation

    # a bad override fails before any model is loaded
    resolve_normalisation(params, None, ct_window, mri_percentiles)
    detector, used, check = load_detector(params, weights, threads, allow_encoder_mismatch)
    normalisation = resolve_normalisation(params, detector.record, ct_window, mri_percentiles)
    summary = predict_path(
        detector,
        path,
        list(prompts),
        out_dir,
        imgsz=imgsz,
        conf=conf,
        modality=modality,
        normalisation=normalisation,
        encoder_check=check,
        model=used,
    )
    return {"model": used, "encoder_check": check, "normalisation": normalisation.to_json(), **summary}
