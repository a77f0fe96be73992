"""Boxes from label masks (connected components) and box checks against the image."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medrov.data.boxes import Box, check_box, mask_to_boxes, slice_boxes


def _extents(pairs):
    return sorted((idx, b.x0, b.y0, b.x1, b.y1) for idx, b in pairs)


# ---------------------------------------------------------------- mask_to_boxes


def test_single_pixel_object_has_unit_size():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[4, 7] = 1  # row 4 (y), column 7 (x)
    boxes = mask_to_boxes(mask)
    assert len(boxes) == 1
    idx, box = boxes[0]
    assert idx == 1
    assert box.label == "1"
    assert (box.x0, box.y0, box.x1, box.y1) == (7, 4, 8, 5)
    assert box.width == 1 and box.height == 1
    xc, yc, w, h = box.to_yolo(10, 10)
    assert xc == pytest.approx((7 + 0.5) / 10)
    assert yc == pytest.approx((4 + 0.5) / 10)
    assert w == pytest.approx(0.1)
    assert h == pytest.approx(0.1)


def test_to_yolo_non_square_image():
    box = Box("x", 2, 1, 6, 3)
    assert box.to_yolo(20, 10) == pytest.approx((0.2, 0.2, 0.2, 0.2))


def test_rectangle_extent_is_in_pixel_edges():
    mask = np.zeros((8, 12), dtype=np.int32)
    mask[2:5, 3:6] = 3  # rows 2..4, columns 3..5
    ((idx, box),) = mask_to_boxes(mask)
    assert idx == 3
    assert box.label == "3"
    assert (box.x0, box.y0, box.x1, box.y1) == (3, 2, 6, 5)
    assert box.width == 3 and box.height == 3


def test_two_components_of_one_id_components_vs_slice():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[1:3, 1:3] = 1
    mask[6:9, 5:8] = 1
    comps = mask_to_boxes(mask, mode="components")
    assert _extents(comps) == [(1, 1, 1, 3, 3), (1, 5, 6, 8, 9)]
    sl = mask_to_boxes(mask, mode="slice")
    assert _extents(sl) == [(1, 1, 1, 8, 9)]


def test_diagonal_pixels_and_connectivity():
    mask = np.zeros((5, 5), dtype=np.uint8)
    mask[1, 1] = 1
    mask[2, 2] = 1
    eight = mask_to_boxes(mask, connectivity=2)
    assert _extents(eight) == [(1, 1, 1, 3, 3)]
    four = mask_to_boxes(mask, connectivity=1)
    assert _extents(four) == [(1, 1, 1, 2, 2), (1, 2, 2, 3, 3)]


def test_touching_objects_of_different_ids_get_their_own_boxes():
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:6, 1:4] = 1  # columns 1..3
    mask[3:8, 4:9] = 2  # columns 4..8, touching id 1 along a full edge
    boxes = mask_to_boxes(mask, mode="components")
    assert _extents(boxes) == [(1, 1, 2, 4, 6), (2, 4, 3, 9, 8)]
    assert {b.label for _, b in boxes} == {"1", "2"}
    assert _extents(mask_to_boxes(mask, mode="slice")) == [(1, 1, 2, 4, 6), (2, 4, 3, 9, 8)]


def test_non_contiguous_ids_and_large_ids():
    mask = np.zeros((6, 6), dtype=np.int32)
    mask[0, 0] = 5
    mask[5, 5] = 117
    assert _extents(mask_to_boxes(mask)) == [(5, 0, 0, 1, 1), (117, 5, 5, 6, 6)]


def test_min_pixels_drops_small_components():
    mask = np.zeros((12, 12), dtype=np.uint8)
    mask[0, 0] = 1  # 1 pixel
    mask[5:7, 5:7] = 1  # 4 pixels
    mask[9:12, 9:12] = 1  # 9 pixels
    assert len(mask_to_boxes(mask, min_pixels=1)) == 3
    assert _extents(mask_to_boxes(mask, min_pixels=4)) == [(1, 5, 5, 7, 7), (1, 9, 9, 12, 12)]
    assert _extents(mask_to_boxes(mask, min_pixels=5)) == [(1, 9, 9, 12, 12)]
    assert mask_to_boxes(mask, min_pixels=10) == []


def test_min_pixels_in_slice_mode_counts_all_pixels_of_the_id():
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[0, 0] = 1
    mask[5, 5] = 1
    assert _extents(mask_to_boxes(mask, mode="slice", min_pixels=2)) == [(1, 0, 0, 6, 6)]
    assert mask_to_boxes(mask, mode="slice", min_pixels=3) == []


def test_empty_mask_gives_no_boxes():
    assert mask_to_boxes(np.zeros((7, 9), dtype=np.uint8)) == []
    assert mask_to_boxes(np.zeros((7, 9), dtype=np.uint8), mode="slice") == []


def test_bool_and_float_masks():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 2] = True
    assert _extents(mask_to_boxes(mask)) == [(1, 2, 1, 3, 3)]
    fmask = mask.astype(np.float32) * 2
    assert _extents(mask_to_boxes(fmask)) == [(2, 2, 1, 3, 3)]


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), (1, 2, 3, 4)])
def test_non_2d_raises(shape):
    with pytest.raises(ValueError, match="2D"):
        mask_to_boxes(np.ones(shape, dtype=np.uint8))


# ---------------------------------------------------------------- check_box


def test_check_box_fine_box_unchanged():
    box = Box("liver", 1.0, 2.0, 9.0, 8.0)
    fixed, reason = check_box(box, 10, 10)
    assert fixed == box
    assert reason is None


def test_check_box_full_image_box_is_fine():
    box = Box("liver", 0.0, 0.0, 10.0, 5.0)
    assert check_box(box, 10, 5) == (box, None)


def test_check_box_partially_outside_is_clipped():
    fixed, reason = check_box(Box("liver", -3.0, 2.0, 12.0, 15.0), 10, 8)
    assert fixed == Box("liver", 0.0, 2.0, 10.0, 8.0)
    assert reason is not None and "clipped" in reason
    assert "liver" in reason


@pytest.mark.parametrize(
    "coords",
    [(11.0, 1.0, 15.0, 5.0), (-5.0, 1.0, 0.0, 5.0), (1.0, -9.0, 5.0, -1.0), (2.0, 10.0, 4.0, 12.0)],
)
def test_check_box_entirely_outside_is_rejected(coords):
    fixed, reason = check_box(Box("spleen", *coords), 10, 10)
    assert fixed is None
    assert reason and "outside" in reason


@pytest.mark.parametrize("coords", [(5.0, 1.0, 5.0, 4.0), (1.0, 3.0, 4.0, 3.0), (6.0, 1.0, 2.0, 4.0)])
def test_check_box_zero_or_negative_size_is_rejected(coords):
    fixed, reason = check_box(Box("spleen", *coords), 10, 10)
    assert fixed is None
    assert reason and "size" in reason


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_box_non_finite_is_rejected(bad):
    fixed, reason = check_box(Box("spleen", 1.0, bad, 4.0, 5.0), 10, 10)
    assert fixed is None
    assert reason and "non-finite" in reason


@pytest.mark.parametrize("mode", ["components", "slice"])
def test_box_coordinates_are_plain_ints_in_both_modes(mode):
    """Box coordinates go into JSON state files: numpy integers there fail the whole item."""
    labels = np.zeros((3, 8, 8), dtype=np.uint8)
    labels[1, 2:5, 3:7] = 2
    found = slice_boxes(labels, mode=mode)
    ((_, box),) = found[1]
    coords = (box.x0, box.y0, box.x1, box.y1)
    assert coords == (3, 2, 7, 5)
    assert all(type(v) is int for v in coords)
    json.dumps(coords)
    assert all(type(k) is int for k in found)
