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


_STRUCTURES = {1: ndimage.generate_binary_structure(2, 1), 2: ndimage.generate_binary_structure(2, 2)}


def mask_to_boxes(
    label_image: np.ndarray,
    mode: str = "components",
    connectivity: int = 2,
    min_pixels: int = 1,
) -> list[tuple[int, Box]]:
    """Boxes of every nonzero label id in a 2D label image.

    Args:
        label_image: 2D integer array, 0 = background, other values = label ids.
        mode: ``components`` gives one box per connected component of each id; ``slice`` one box per id
            enclosing all its pixels (the MedROV reference behaviour).
        connectivity: 1 = 4-neighbourhood, 2 = 8-neighbourhood.
        min_pixels: components with fewer pixels are dropped (noise in model-made label maps).

    Returns:
        ``(label_id, Box)`` pairs; ``Box.label`` holds the id as a string (the caller maps it to a class).
    """
    if label_image.ndim != 2:
        raise ValueError(f"expected a 2D label image, got shape {label_image.shape}")
    lab = np.asarray(label_image)
    if lab.dtype.kind not in "iub":
        lab = lab.astype(np.int64)
    out: list[tuple[int, Box]] = []
    # one pass finds each id's bounding slices; components are then searched only inside that crop
    top = int(lab.max()) if lab.size else 0
    if top <= 0:
        return out
    for idx, bbox in enumerate(ndimage.find_objects(lab.astype(np.int32, copy=False), max_label=top), start=1):
        if bbox is None:
            continue
        crop = lab[bbox] == idx
        rows, cols = bbox
        if mode == "slice":
            if int(crop.sum()) >= min_pixels:
                out.append((idx, Box(str(idx), cols.start, rows.start, cols.stop, rows.stop)))
            continue
        components, n = ndimage.label(crop, structure=_STRUCTURES[connectivity])
        if n == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        for comp, sl in enumerate(ndimage.find_objects(components), start=1):
            if sl is None or sizes[comp] < min_pixels:
                continue
            r, c = sl
            out.append(
                (idx, Box(str(idx), cols.start + c.start, rows.start + r.start, cols.start + c.stop, rows.start + r.stop))
            )
    return out


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
