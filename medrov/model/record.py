"""The training record kept inside a checkpoint: which text encoder and which intensity normalisation the weights
were trained with, so ``predict`` embeds prompts and scales volumes as training did.

The record is plain data (strings, numbers, lists) under the key :data:`RECORD_KEY` of the ultralytics
checkpoint dict, so it travels with the ``.pt`` file (copied, logged to MLflow, registered) and still loads with
``weights_only=True``. Weights written before records were kept have none: callers fall back to params.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medrov.config import Params
from medrov.errors import ConfigError, EncoderError

log = logging.getLogger(__name__)

RECORD_KEY = "medrov"
RECORD_VERSION = 1


def training_record(params: Params, encoder: dict[str, Any] | None) -> dict[str, Any]:
    """What predict needs to match training: the encoder (``describe()`` of the training prompter, None for a
    closed-set model) and the normalisation of ``params.data`` that convert used for the training slices."""
    return {
        "version": RECORD_VERSION,
        "encoder": dict(encoder) if encoder else None,
        "normalisation": {
            "ct_window": [float(v) for v in params.data.ct_window],
            "mri_percentiles": [float(v) for v in params.data.mri_percentiles],
        },
    }


def write_record(weights: str | Path, record: dict[str, Any]) -> None:
    """Store ``record`` in the checkpoint at ``weights`` (rewritten atomically; the model itself is unchanged).

    Raises:
        ModelError: the file is not a loadable ultralytics checkpoint.
    """
    import torch

    from medrov.model.weights import read_checkpoint

    path = Path(weights)
    ckpt = read_checkpoint(path)
    ckpt[RECORD_KEY] = record
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def record_of(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The training record of a loaded checkpoint dict, None when it has none (older weights)."""
    record = ckpt.get(RECORD_KEY) if isinstance(ckpt, dict) else None
    return record if isinstance(record, dict) else None


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Normalisation:
    """The intensity normalisation predict applies to volumes, and where each setting came from."""

    ct_window: tuple[float, float]
    mri_percentiles: tuple[float, float]
    ct_window_from: str = "params"  # "weights" (the training record), "override" (--window) or "params"
    mri_percentiles_from: str = "params"

    def to_json(self) -> dict[str, Any]:
        return {
            "ct_window": list(self.ct_window),
            "mri_percentiles": list(self.mri_percentiles),
            "from": {"ct_window": self.ct_window_from, "mri_percentiles": self.mri_percentiles_from},
        }


def check_range(value: Any, what: str, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """``"LO,HI"`` or a pair -> ``(lo, hi)`` with lo < hi (and inside ``bounds``).

    Raises:
        ConfigError: not two numbers, not increasing, or out of bounds (the message names ``what``).
    """
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be two numbers LO,HI, got {value!r}") from None
    if not low < high:
        raise ConfigError(f"{what} must have LO < HI, got {low:g},{high:g}")
    if bounds and not (bounds[0] <= low and high <= bounds[1]):
        raise ConfigError(f"{what} must lie in [{bounds[0]:g}, {bounds[1]:g}], got {low:g},{high:g}")
    return low, high


def resolve_normalisation(
    params: Params,
    record: dict[str, Any] | None,
    ct_window: Any = None,
    mri_percentiles: Any = None,
) -> Normalisation:
    """Each setting from the override when given, else from the training record, else from ``params.data``.

    Raises:
        ConfigError: an override or a recorded value is not an increasing pair (percentiles within 0..100).
    """
    recorded = (record or {}).get("normalisation") or {}
    chosen: dict[str, tuple[tuple[float, float], str]] = {}
    for key, override, bounds in (
        ("ct_window", ct_window, None),
        ("mri_percentiles", mri_percentiles, (0.0, 100.0)),
    ):
        if override is not None:
            flag = "--window" if key == "ct_window" else "--percentiles"
            chosen[key] = (check_range(override, flag, bounds), "override")
        elif recorded.get(key) is not None:
            chosen[key] = (check_range(recorded[key], f"the weights' recorded {key}", bounds), "weights")
        else:
            chosen[key] = (tuple(float(v) for v in getattr(params.data, key)), "params")
    return Normalisation(
        chosen["ct_window"][0], chosen["mri_percentiles"][0], chosen["ct_window"][1], chosen["mri_percentiles"][1]
    )


def check_encoder(
    recorded: dict[str, Any] | None,
    current: dict[str, Any],
    configured: str,
    weights: str | Path,
    allow_mismatch: bool = False,
) -> str:
    """Compare the encoder the params give now with the one the weights were trained with.

    Prompts embedded by another encoder land in another embedding space: the detector's text branch would read
    them as noise, so a different model is refused unless ``allow_mismatch``. The same model with other files
    (a reinstall, a copied directory: another file signature) only warns, as the pyfunc does.

    Args:
        recorded: ``describe()`` of the training encoder (from the record), None for weights with no record.
        current: ``describe()`` of the encoder the params give (``text.encoder``, or its fallback).
        configured: the ``text.encoder`` value, for the message.
        weights: the weights file, for the message.
        allow_mismatch: predict with the params' encoder even when it is another model.

    Returns:
        ``"match"``, ``"same model, other files"``, ``"mismatch allowed"`` or ``"no record"``.

    Raises:
        EncoderError: another encoder model than the training one, and ``allow_mismatch`` is off (names both).
    """
    if not recorded:
        return "no record"
    if current.get("identity") == recorded.get("identity"):
        return "match"
    if current.get("spec") == recorded.get("spec") and current.get("dim") == recorded.get("dim"):
        log.warning(
            "text encoder %s: same model as the training encoder %s, other files",
            current.get("identity"),
            recorded.get("identity"),
        )
        return "same model, other files"
    if allow_mismatch:
        log.warning(
            "text encoder %s differs from the training encoder %s: predicting anyway (--allow-encoder-mismatch)",
            current.get("identity"),
            recorded.get("identity"),
        )
        return "mismatch allowed"
    raise EncoderError(
        f"trained with text encoder {recorded.get('identity')} ({recorded.get('dim')}-d) but the params give "
        f"{current.get('identity')} ({current.get('dim')}-d, text.encoder={configured}): set "
        f"text.encoder={recorded.get('spec')} or pass --allow-encoder-mismatch",
        weights,
    )
