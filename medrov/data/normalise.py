"""Per-modality intensity normalisation to 8-bit: small pure transforms on arrays."""

from __future__ import annotations

import numpy as np


def hu_window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """CT: clip Hounsfield units to ``[low, high]`` and map linearly to 0..255 (uint8)."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"HU window must have low < high, got {window}")
    scaled = (np.asarray(array, dtype=np.float32) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0, out=scaled).round().astype(np.uint8)


def percentile_scale(array: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """MRI and other unitless scans: robust min/max from percentiles of the whole volume, mapped to 0..255.

    A constant input maps to zeros rather than dividing by zero.
    """
    data = np.asarray(array, dtype=np.float32)
    low, high = np.percentile(data, [percentiles[0], percentiles[1]])
    if not high > low:
        return np.zeros(data.shape, dtype=np.uint8)
    return hu_window(data, (float(low), float(high)))


def to_uint8_image(array: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """2D photos: 8-bit gray or RGB passes through untouched; deeper images are percentile-scaled; RGBA drops alpha."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    return percentile_scale(array, percentiles)


def normalise_volume(
    array: np.ndarray,
    modality: str,
    ct_window: tuple[float, float],
    mri_percentiles: tuple[float, float],
) -> np.ndarray:
    """Dispatch by modality or normalisation kind: CT (``hu_window``, which a user modality may name) gets the HU
    window, every other volume the percentile scale."""
    if modality in ("ct", "hu_window"):
        return hu_window(array, ct_window)
    return percentile_scale(array, mri_percentiles)
