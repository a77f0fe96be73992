"""Overlay grids of predictions vs truth: boxes land where they should, low scores are left out."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medrov.model.overlays import PALETTE, Panel, draw_panel, pick, write_grid


def test_pick_spreads_over_the_sorted_images():
    images = [f"img_{i:02d}.png" for i in range(10)]
    assert pick(images[::-1], 3) == ["img_00.png", "img_04.png", "img_09.png"]
    assert pick(images, 0) == [] and pick(images[:2], 5) == images[:2]


def _panel(tmp_path, scores):
    path = tmp_path / "im.png"
    Image.fromarray(np.full((100, 100), 40, np.uint8)).save(path)
    return Panel(
        path,
        "src im",
        gt_boxes=np.array([[10, 10, 50, 50]]),
        gt_names=["liver"],
        pred_boxes=np.array([[60, 60, 90, 90], [5, 60, 30, 90]]),
        pred_names=["spleen", "liver"],
        pred_scores=np.asarray(scores),
        classes=["liver", "spleen"],
    )


def test_predictions_are_drawn_in_their_class_colour_from_the_score_on(tmp_path):
    img = np.asarray(draw_panel(_panel(tmp_path, [0.9, 0.1]), size=100, conf=0.25)).astype(int)
    top = 14  # title strip
    spleen, liver = np.array(PALETTE[1]), np.array(PALETTE[0])
    assert (img[top + 60, 70:80] == spleen).all(axis=1).any()  # the confident spleen box's top edge
    assert not (img[top + 60, 10:25] == liver).all(axis=1).any()  # the 0.1 liver box is not drawn
    assert (img[top + 10, 10:50] == liver).all(axis=1).any()  # dashed truth edge of the liver
    assert (img[top + 30, 25:35] == 40).all()  # inside the boxes the image is untouched


def test_grid_has_one_tile_per_panel(tmp_path):
    out = write_grid([_panel(tmp_path, [0.9, 0.9])] * 5, tmp_path / "grid" / "overlays.png", conf=0.25, size=64, cols=4)
    with Image.open(out) as grid:
        assert grid.size == (4 * 64, 2 * (64 + 14) + 16)
    assert write_grid([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
