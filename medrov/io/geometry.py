"""Volume geometry shared by every 3D reader: the array with its affine, reorientation, finite-value check."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrov.errors import SourceReadError

# Orientation every volume is brought to before slicing. Axial slices of an LPS array, transposed, display in
# the radiological convention: patient anterior at the top, patient right on the left of the image.
SLICE_AXCODES = ("L", "P", "S")


@dataclass
class Volume:
    """A 3D array with the voxel-to-world (RAS+, mm) affine that places it."""

    array: np.ndarray
    affine: np.ndarray
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def axcodes(self) -> tuple[str, str, str]:
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))


def reorient(volume: Volume, axcodes: tuple[str, str, str] = SLICE_AXCODES) -> Volume:
    """Permute/flip the array so its axes follow ``axcodes``, using the affine (not the array order)."""
    import nibabel.orientations as nio

    current = nio.io_orientation(volume.affine)
    transform = nio.ornt_transform(current, nio.axcodes2ornt(axcodes))
    array = nio.apply_orientation(volume.array, transform)
    affine = volume.affine @ nio.inv_ornt_aff(transform, volume.array.shape)
    return Volume(array, affine, volume.path, dict(volume.meta))


def check_finite(array: np.ndarray, path: Path) -> None:
    """Refuse NaN or inf voxels (a float volume), naming the file."""
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise SourceReadError(f"{bad} of {array.size} voxels are NaN or inf", path)
