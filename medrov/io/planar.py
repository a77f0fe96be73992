"""2D images and masks: PNG/JPEG/BMP/GIF through Pillow, TIFF through tifffile, ``.mat`` variables via scipy.

Geometry of a 2D image is its pixel grid: rows top to bottom, columns left to right, as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrov.errors import SourceReadError

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
PLANE_SUFFIXES = (*PIL_SUFFIXES, *TIFF_SUFFIXES, ".mat")


@dataclass
class Plane:
    """A 2D array ``(rows, cols[, channels])`` and where it came from."""

    array: np.ndarray
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)


def _pick_frame(array: np.ndarray, frames: int, frame: int | None, path: Path) -> np.ndarray:
    if frames <= 1:
        if frame not in (None, 0):
            raise SourceReadError(f"frame {frame} requested but the file has one page", path)
        return array
    if frame is None:
        raise SourceReadError(f"{frames} pages/frames: the recipe must choose one (frames)", path)
    if not 0 <= frame < frames:
        raise SourceReadError(f"frame {frame} out of range (the file has {frames})", path)
    return array[frame]


def _read_tiff(path: Path, frame: int | None) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            array = tif.asarray()
        # a leading axis that is not a colour axis is a stack of pages (tifffile may merge pages into a series)
        stacked = array.ndim == 4 or (array.ndim == 3 and array.shape[-1] not in (3, 4))
        array = _pick_frame(array, array.shape[0] if stacked else 1, frame, path)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise SourceReadError(f"cannot read TIFF ({type(exc).__name__}: {exc})", path) from exc
    return array


def _read_pil(path: Path, frame: int | None, as_mask: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            frames = int(getattr(img, "n_frames", 1))
            if frames > 1 or frame not in (None, 0):
                _pick_frame(np.empty(frames), frames, frame, path)  # validates the index
                img.seek(frame or 0)
            img.load()
            if as_mask and img.mode in ("P", "PA", "RGB", "RGBA", "LA"):
                # palette masks (GIF, indexed PNG; Pillow turns later GIF frames into RGB): grey level of each
                # pixel, so 0/255 masks stay 0/255
                img = img.convert("L")
            elif img.mode in ("P", "PA", "LA", "CMYK", "YCbCr"):
                img = img.convert("RGB")
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError, EOFError) as exc:
        raise SourceReadError(f"cannot read image ({type(exc).__name__}: {exc})", path) from exc
    return array


def read_plane(path: str | Path, frame: int | None = None, key: str | None = None, as_mask: bool = False) -> Plane:
    """Read one 2D image or mask.

    Args:
        path: a PNG/JPEG/BMP/GIF/TIFF file, or a ``.mat`` file with ``key``.
        frame: page of a multi-page TIFF or frame of an animated GIF (required when there are several).
        key: variable of a ``.mat`` file.
        as_mask: palette images become their grey levels (a mask) rather than RGB (a photo).

    Raises:
        SourceReadError: unreadable file, unsupported suffix, wrong frame, empty or non-finite array.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceReadError("file not found", path)
    name = path.name.lower()
    if name.endswith(".mat"):
        from medrov.io.matlab import read_mat

        if not key:
            raise SourceReadError("a .mat file needs the variable name to read (label_key)", path)
        array = read_mat(path, key)
    elif name.endswith(TIFF_SUFFIXES):
        array = _read_tiff(path, frame)
    elif name.endswith(PIL_SUFFIXES):
        array = _read_pil(path, frame, as_mask)
    else:
        raise SourceReadError(f"unknown 2D image format (expected one of {', '.join(PLANE_SUFFIXES)})", path)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
        raise SourceReadError(f"unexpected image shape {array.shape}: several pages? choose one with frames", path)
    if array.ndim not in (2, 3) or array.size == 0:
        raise SourceReadError(f"unexpected image shape {array.shape}", path)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise SourceReadError("image has NaN or inf pixels", path)
    return Plane(array, path, {"format": name.rsplit(".", 1)[-1]})
