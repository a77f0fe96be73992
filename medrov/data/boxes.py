"""Boxes: from label masks (connected components) and from annotation coordinates, with checks.

Internally a box is ``(x0, y0, x1, y1)`` in pixel *edges*: a mask component spanning columns 3..5 has
x0 = 3 and x1 = 6, so a one-pixel object has width 1, not 0. YOLO output is normalised centre/size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of one class in pixel-edge coordinates."""

    label: str
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def to_yolo(self, image_width: int, image_height: int) -> tuple[float, float, float, float]:
        """Normalised (x_center, y_center, width, height)."""
        return (
            (self.x0 + self.x1) / 2.0 / image_width,
            (self.y0 + self.y1) / 2.0 / image_height,
            self.width / image_width,
            self.height / image_height,
        )


def _in_plane_structure(connectivity: int) -> np.ndarray:
    """3D structuring element that connects pixels within a slice only (never across slices)."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, connectivity)
    return structure


_STRUCTURES = {1: _in_plane_structure(1), 2: _in_plane_structure(2)}


def slice_boxes(
    labels: np.ndarray,
    mode: str = "components",
    connectivity: int = 2,
    min_pixels: int = 1,
) -> dict[int, list[tuple[int, Box]]]:
    """Boxes of every nonzero label id in every slice of a (slices, rows, cols) label volume.

    Works on the whole volume at once (one connected-component pass per label id, connectivity within each
    slice only), which is much cheaper than slice-by-slice calls.

    Args:
        labels: 3D integer array ``(z, y, x)``, 0 = background, other values = label ids.
        mode: ``components`` gives one box per connected component of each id in each slice; ``slice`` one box
            per id per slice enclosing all its pixels (the MedROV reference behaviour).
        connectivity: 1 = 4-neighbourhood, 2 = 8-neighbourhood.
        min_pixels: components (or, in ``slice`` mode, per-slice masks) with fewer pixels are dropped.

    Returns:
        ``{slice index: [(label_id, Box), ...]}`` for slices with at least one box; ``Box.label`` holds the id
        as a string (the caller maps it to a class).
    """
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D (slices, rows, cols) label array, got shape {labels.shape}")
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iub":
        lab = lab.astype(np.int64)
    out: dict[int, list[tuple[int, Box]]] = {}
    top = int(lab.max()) if lab.size else 0
    if top <= 0:
        return out
    # one pass finds each id's bounding box; components are then searched only inside that crop
    for idx, bbox in enumerate(ndimage.find_objects(lab.astype(np.int32, copy=False), max_label=top), start=1):
        if bbox is None:
            continue
        crop = lab[bbox] == idx
        z0, y0, x0 = bbox[0].start, bbox[1].start, bbox[2].start
        if mode == "slice":
            counts = crop.sum(axis=(1, 2))
            rows_any, cols_any = crop.any(axis=2), crop.any(axis=1)
            for dz in np.flatnonzero(counts >= min_pixels):
                ys, xs = np.flatnonzero(rows_any[dz]), np.flatnonzero(cols_any[dz])
                box = Box(str(idx), int(x0 + xs[0]), int(y0 + ys[0]), int(x0 + xs[-1] + 1), int(y0 + ys[-1] + 1))
                out.setdefault(z0 + int(dz), []).append((idx, box))
            continue
        components, n = ndimage.label(crop, structure=_STRUCTURES[connectivity])
        sizes = np.bincount(components.ravel(), minlength=n + 1) if min_pixels > 1 else None
        for comp, sl in enumerate(ndimage.find_objects(components), start=1):
            if sl is None or (sizes is not None and sizes[comp] < min_pixels):
                continue
            z, r, c = sl
            box = Box(str(idx), x0 + c.start, y0 + r.start, x0 + c.stop, y0 + r.stop)
            out.setdefault(z0 + z.start, []).append((idx, box))
    return out


def mask_to_boxes(
    label_image: np.ndarray,
    mode: str = "components",
    connectivity: int = 2,
    min_pixels: int = 1,
) -> list[tuple[int, Box]]:
    """Boxes of every nonzero label id in one 2D label image (see :func:`slice_boxes` for the arguments)."""
    if label_image.ndim != 2:
        raise ValueError(f"expected a 2D label image, got shape {label_image.shape}")
    return slice_boxes(np.asarray(label_image)[None], mode, connectivity, min_pixels).get(0, [])


def check_box(box: Box, image_width: int, image_height: int) -> tuple[Box | None, str | None]:
    """Repair or reject an annotated box against its image.

    Returns ``(box, None)`` when it is fine, ``(clipped_box, reason)`` when it stuck out and was clipped,
    ``(None, reason)`` when it is unusable (not finite, zero or negative size, entirely outside).
    """
    coords = (box.x0, box.y0, box.x1, box.y1)
    desc = f"{box.label} box ({', '.join(f'{v:g}' for v in coords)})"
    if not all(math.isfinite(v) for v in coords):
        return None, f"{desc} has non-finite coordinates"
    if box.x1 <= box.x0 or box.y1 <= box.y0:
        return None, f"{desc} has zero or negative size"
    if box.x1 <= 0 or box.y1 <= 0 or box.x0 >= image_width or box.y0 >= image_height:
        return None, f"{desc} lies outside the {image_width}x{image_height} image"
    if box.x0 < 0 or box.y0 < 0 or box.x1 > image_width or box.y1 > image_height:
        clipped = Box(
            box.label,
            max(box.x0, 0.0),
            max(box.y0, 0.0),
            min(box.x1, float(image_width)),
            min(box.y1, float(image_height)),
        )
        return clipped, f"{desc} extends outside the {image_width}x{image_height} image: clipped"
    return box, None
