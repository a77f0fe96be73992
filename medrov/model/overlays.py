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


# ---------------------------------------------------------------- predict: one frame, and a montage of a volume

MIN_OVERLAY_PX = 512  # overlays are upscaled until their longer side reaches this, so captions stay readable
MONTAGE_SLICES = 9  # slices of a volume shown in its montage, evenly spaced from the first to the last


def label_colour(label: str) -> tuple[int, int, int]:
    """A colour of the label's name (a hash, not its position in the prompt list: stable across runs)."""
    import zlib

    rng = np.random.default_rng(zlib.crc32(label.encode()))
    return tuple(int(v) for v in rng.integers(64, 256, 3))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # a Pillow without FreeType has only the small bitmap font
        return ImageFont.load_default()


def upscale_factor(width: int, height: int, min_px: int = MIN_OVERLAY_PX) -> int:
    """The smallest whole factor that brings the longer side to ``min_px`` (1 for images already that large);
    whole, with nearest-neighbour resampling, so every voxel stays a crisp square and boxes scale exactly."""
    return max(1, -(-int(min_px) // max(1, int(width), int(height))))


def draw_overlay(image: np.ndarray, det, min_px: int = MIN_OVERLAY_PX):
    """The frame in RGB, upscaled to at least ``min_px`` on its longer side, each box outlined and captioned
    ``label score`` in a font sized to the image.

    Args:
        image: uint8 (H, W) grey or (H, W, 3) RGB.
        det: :class:`~medrov.model.detector.Detections` in the frame's pixel coordinates.
        min_px: minimum length of the longer side of the result.
    """
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.asarray(image)).convert("RGB")
    factor = upscale_factor(*canvas.size, min_px=min_px)
    if factor > 1:
        canvas = canvas.resize((canvas.width * factor, canvas.height * factor), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(12, round(max(canvas.size) / 40)))
    width = max(1, round(max(canvas.size) / 256))
    for box, score, label in zip(det.boxes, det.scores, det.names):
        x0, y0, x1, y1 = (float(v) * factor for v in box)
        colour = label_colour(label)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        text = f"{label} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), text, font=font)
        # caption above the box, or inside it when the box touches the top edge
        dy = bottom - top + 2 if y0 >= bottom - top + 2 else 0
        draw.rectangle([left, top - dy, right + 2, bottom - dy], fill=colour)
        draw.text((x0 + 1, y0 - dy), text, fill=(0, 0, 0), font=font)
    return canvas


def sample_slices(n_slices: int, n: int = MONTAGE_SLICES) -> list[int]:
    """``n`` slice indices spread evenly from the first slice to the last (all of them when there are fewer)."""
    if n_slices <= 0 or n <= 0:
        return []
    return [int(k) for k in np.unique(np.linspace(0, n_slices - 1, min(n, n_slices)).round().astype(int))]


def montage(tiles: list, captions: list[str], footer: str, cols: int | None = None):
    """Tiles (PIL images of one size) in a grid, each under its caption strip, with a footer line.

    Args:
        tiles: the drawn slices (e.g. by :func:`draw_overlay`), all the same size.
        captions: one line per tile, e.g. ``slice 12: 2 boxes``.
        footer: one line under the grid, e.g. the window the slices were normalised with.
        cols: tiles per row (default: the square root of the count, rounded up).
    """
    from PIL import Image, ImageDraw

    if not tiles:
        raise ValueError("a montage needs at least one tile")
    cols = cols or int(np.ceil(np.sqrt(len(tiles))))
    rows = -(-len(tiles) // cols)
    width, height = tiles[0].size
    font = _font(max(14, round(width / 24)))
    strip = font.getbbox("Ag")[3] + 8 if hasattr(font, "getbbox") else 20
    sheet = Image.new("RGB", (cols * width, rows * (height + strip) + strip), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for k, (tile, caption) in enumerate(zip(tiles, captions)):
        x, y = (k % cols) * width, (k // cols) * (height + strip)
        draw.text((x + 4, y + 3), caption, fill=(235, 235, 235), font=font)
        sheet.paste(tile, (x, y + strip))
    # a narrow sheet (one slice) gets a smaller footer font rather than a cut-off line
    size = max(14, round(width / 24))
    while size > 10 and draw.textlength(footer, font=_font(size)) > sheet.width - 8:
        size -= 1
    draw.text((4, rows * (height + strip) + 3), footer, fill=(235, 235, 235), font=_font(size))
    return sheet
