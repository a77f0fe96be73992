"""3D -> 2D: the one path from a read volume to the axial slices the detector sees, shared by convert and predict.

Both steps call :func:`volume_slices` (reorient, normalise per modality, axial stack), so slice ``k`` of a volume
given to ``medrov predict`` is pixel for pixel slice ``k`` that ``medrov convert`` wrote for training, under the
same window or percentiles.
"""

from __future__ import annotations

import numpy as np

from medrov.data.normalise import normalise_volume
from medrov.io.geometry import Volume, reorient


def axial_stack(array: np.ndarray) -> np.ndarray:
    """``(x, y, z)`` of a reoriented (L, P, S) volume -> ``(z, y, x)``, one contiguous copy.

    Each slice ``[k]`` is then a (rows, cols) image whose rows run anterior -> posterior and whose columns run
    patient right -> left: the radiological view. Image and label volumes go through this same transpose.
    """
    return np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0))


def volume_slices(
    volume: Volume,
    modality: str,
    ct_window: tuple[float, float],
    mri_percentiles: tuple[float, float],
) -> np.ndarray:
    """The uint8 axial slices ``(z, rows, cols)`` of a volume: reoriented to L, P, S, normalised, stacked.

    Args:
        volume: as read (any orientation; an already reoriented volume is left as it is).
        modality: ``ct`` gets the HU window, any other modality the percentile scale of the whole volume.
        ct_window: HU ``(low, high)`` mapped to 0..255.
        mri_percentiles: percentiles of the volume mapped to 0..255.
    """
    oriented = reorient(volume)
    pixels = normalise_volume(oriented.array, modality, tuple(ct_window), tuple(mri_percentiles))
    return axial_stack(pixels)
