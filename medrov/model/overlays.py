"""Overlay grids of test predictions: what the detector found (solid, with class and score) against the ground
truth (dashed), a few images per modality, so a person can see whether the boxes sit on the objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# one colour per class index in the prompt list of a source; truth is drawn in the same colour, dashed
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]


@dataclass
class Panel:
    """One image of the grid: its file, a title and boxes in its pixel coordinates (x0, y0, x1, y1)."""

    image: Path
    title: str
    gt_boxes: np.ndarray
    gt_names: list[str]
    pred_boxes: np.ndarray
    pred_names: list[str]
    pred_scores: np.ndarray
    classes: list[str] = field(default_factory=list)  # the prompts of the panel's source, for colours


def pick(images: list[str], n: int) -> list[str]:
    """``n`` images spread evenly over the sorted list (deterministic, not only the first volume's slices)."""
    images = sorted(images)
    if n <= 0 or not images:
        return []
    idx = np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int))
    return [images[i] for i in idx]


def _dashed(draw, box, colour, width: int, dash: int = 4) -> None:
    x0, y0, x1, y1 = box
    for a, b, horizontal, fixed in ((x0, x1, True, y0), (x0, x1, True, y1), (y0, y1, False, x0), (y0, y1, False, x1)):
        for start in np.arange(a, b, 2 * dash):
            end = min(start + dash, b)
            line = [start, fixed, end, fixed] if horizontal else [fixed, start, fixed, end]
            draw.line(line, fill=colour, width=width)


def draw_panel(panel: Panel, size: int, conf: float):
    """The panel as a ``size`` x ``size`` RGB image with its title strip."""
    from PIL import Image, ImageDraw

    img = Image.open(panel.image).convert("RGB")
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
    canvas = Image.new("RGB", (size, size + 14), (20, 20, 20))
    canvas.paste(img, (0, 14))
    draw = ImageDraw.Draw(canvas)
    colour = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(panel.classes)}
    shift = np.array([0, 14, 0, 14])
    for box, name in zip(np.asarray(panel.gt_boxes, float).reshape(-1, 4), panel.gt_names):
        _dashed(draw, box * scale + shift, colour.get(name, (255, 255, 255)), 1)
    keep = np.asarray(panel.pred_scores, float) >= conf
    for box, name, score in zip(
        np.asarray(panel.pred_boxes, float).reshape(-1, 4)[keep],
        np.asarray(panel.pred_names, object)[keep],
        np.asarray(panel.pred_scores)[keep],
    ):
        b = box * scale + shift
        draw.rectangle(b.tolist(), outline=colour.get(name, (255, 255, 255)), width=2)
        draw.text((b[0] + 2, b[1] + 1), f"{name[:10]} {score:.2f}", fill=colour.get(name, (255, 255, 255)))
    draw.text((2, 1), panel.title[:40], fill=(235, 235, 235))
    return canvas


def write_grid(panels: list[Panel], path: Path, conf: float = 0.25, size: int = 224, cols: int = 4) -> Path | None:
    """Write the panels as one PNG grid (rows of ``cols``) with a legend line; None when there is nothing."""
    from PIL import Image, ImageDraw

    if not panels:
        return None
    rows = -(-len(panels) // cols)
    tile = (size, size + 14)
    grid = Image.new("RGB", (cols * tile[0], rows * tile[1] + 16), (0, 0, 0))
    for k, panel in enumerate(panels):
        grid.paste(draw_panel(panel, size, conf), ((k % cols) * tile[0], (k // cols) * tile[1]))
    ImageDraw.Draw(grid).text(
        (4, rows * tile[1] + 2),
        f"solid: predictions with score >= {conf:g} (class, score); dashed: ground truth; colour = class",
        fill=(235, 235, 235),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
