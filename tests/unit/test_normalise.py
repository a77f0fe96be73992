"""Intensity normalisation: exact values on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from medrov.data.normalise import hu_window, normalise_volume, percentile_scale, to_uint8_image


def _expected_window(values, low, high):
    """The documented mapping, computed independently in float64: clip to [low, high], scale to 0..255, round."""
    v = np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low) * 255.0, 0, 255)
    return np.round(v).astype(np.uint8)


# ---------------------------------------------------------------- hu_window


def test_hu_window_exact_points_and_clipping():
    values = np.array([-3000.0, -1000.0, -500.0, -499.0, 0.0, 250.0, 500.0, 999.0, 1000.0, 1001.0, 40000.0])
    out = hu_window(values, (-500, 1000))
    assert out.dtype == np.uint8
    assert out.shape == values.shape
    # window edges map to the ends of the 8-bit range
    assert out[2] == 0 and out[8] == 255
    # clipping below and above
    assert out[0] == 0 and out[1] == 0
    assert out[9] == 255 and out[10] == 255
    # interior points: 0 HU -> 500/1500*255 = 85, 500 HU -> 1000/1500*255 = 170
    assert out[4] == 85
    assert out[6] == 170
    # 250 HU is exactly the middle: 127.5 rounds (half to even) to 128
    assert out[5] == 128
    np.testing.assert_array_equal(out, _expected_window(values, -500, 1000))


def test_hu_window_identity_window_rounds_to_nearest():
    values = np.array([0.0, 10.4, 10.6, 254.6, 255.0])
    np.testing.assert_array_equal(hu_window(values, (0, 255)), [0, 10, 11, 255, 255])


def test_hu_window_is_monotonic_and_keeps_shape():
    values = np.linspace(-1200, 1500, 2 * 3 * 50).reshape(2, 3, 50)
    out = hu_window(values, (-1000, 1000))
    assert out.shape == (2, 3, 50)
    assert out.dtype == np.uint8
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)
    np.testing.assert_array_equal(out, _expected_window(values, -1000, 1000))


def test_hu_window_accepts_integer_input():
    values = np.array([-1024, -500, 1000, 3071], dtype=np.int16)
    np.testing.assert_array_equal(hu_window(values, (-500.0, 1000.0)), [0, 0, 255, 255])


@pytest.mark.parametrize("window", [(100, 0), (50, 50), (1000.0, -500.0)])
def test_hu_window_invalid_window_raises(window):
    with pytest.raises(ValueError, match="low < high"):
        hu_window(np.zeros(4), window)


# ---------------------------------------------------------------- percentile_scale


def test_percentile_scale_maps_percentiles_to_range_ends():
    data = np.arange(1000, dtype=np.float64)  # 0.5th pct = 4.995, 99.5th pct = 994.005
    out = percentile_scale(data, (0.5, 99.5))
    assert out.dtype == np.uint8
    low, high = np.percentile(data, [0.5, 99.5])
    assert low == pytest.approx(4.995) and high == pytest.approx(994.005)
    assert np.all(out[data <= low] == 0)
    assert np.all(out[data >= high] == 255)
    # everything in between is strictly inside the range and follows the window formula
    assert out[5] <= 1 and out[994] >= 254
    np.testing.assert_array_equal(out, _expected_window(data, low, high))


def test_percentile_scale_is_robust_to_one_huge_outlier():
    data = np.arange(1000, dtype=np.float64)
    spiked = data.copy()
    spiked[-1] = 1e9
    base = percentile_scale(data, (0.5, 99.5))
    out = percentile_scale(spiked, (0.5, 99.5))
    # the outlier saturates, every other pixel keeps exactly the value it had without it
    assert out[-1] == 255
    np.testing.assert_array_equal(out[:-1], base[:-1])
    # and the middle of the range still lands in the middle (min/max scaling would squash it to 0)
    assert 120 <= out[500] <= 135


def test_percentile_scale_constant_input_gives_zeros():
    out = percentile_scale(np.full((3, 4, 5), 42.0), (0.5, 99.5))
    assert out.dtype == np.uint8
    assert out.shape == (3, 4, 5)
    assert not out.any()


# ---------------------------------------------------------------- to_uint8_image


def test_to_uint8_image_passes_uint8_gray_through():
    gray = np.array([[0, 7, 200], [255, 3, 128]], dtype=np.uint8)
    out = to_uint8_image(gray)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, gray)


def test_to_uint8_image_passes_uint8_rgb_through():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    rgb[0, 0] = (10, 20, 30)  # a low-contrast image must not be stretched
    out = to_uint8_image(rgb)
    assert out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out, rgb)


def test_to_uint8_image_low_contrast_uint8_is_not_stretched():
    gray = np.array([[100, 101], [102, 103]], dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8_image(gray), gray)


def test_to_uint8_image_drops_alpha():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 99
    out = to_uint8_image(rgba)
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_to_uint8_image_single_channel_is_squeezed():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    out = to_uint8_image(img)
    assert out.shape == (3, 4)
    np.testing.assert_array_equal(out, img[..., 0])


def test_to_uint8_image_scales_uint16():
    img = (np.arange(100, dtype=np.uint16) * 600).reshape(10, 10)  # 0 .. 59400
    out = to_uint8_image(img, (0.0, 100.0))
    assert out.dtype == np.uint8
    assert out.shape == (10, 10)
    assert out.min() == 0 and out.max() == 255
    assert out[0, 0] == 0 and out[-1, -1] == 255
    np.testing.assert_array_equal(out, _expected_window(img, 0, 59400))


def test_to_uint8_image_uint16_uses_percentiles():
    img = (np.arange(1000, dtype=np.uint16) * 50).reshape(20, 50)
    np.testing.assert_array_equal(to_uint8_image(img, (0.5, 99.5)), percentile_scale(img, (0.5, 99.5)))


def test_to_uint8_image_bool_mask():
    mask = np.array([[True, False], [False, True]])
    out = to_uint8_image(mask)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[255, 0], [0, 255]])


# ---------------------------------------------------------------- normalise_volume


def test_normalise_volume_ct_uses_hu_window():
    vol = np.array([-1000.0, -500.0, 250.0, 1000.0, 2000.0]).reshape(1, 1, 5)
    out = normalise_volume(vol, "ct", (-500.0, 1000.0), (0.5, 99.5))
    np.testing.assert_array_equal(out.ravel(), [0, 0, 128, 255, 255])
    np.testing.assert_array_equal(out, hu_window(vol, (-500.0, 1000.0)))


def test_normalise_volume_mri_uses_percentiles_not_hu():
    # arbitrary MRI units far outside any HU window: the HU window would saturate everything
    vol = np.linspace(5000.0, 6000.0, 1000).reshape(10, 10, 10)
    out = normalise_volume(vol, "mri", (-500.0, 1000.0), (0.0, 100.0))
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(out, percentile_scale(vol, (0.0, 100.0)))
    assert not np.array_equal(out, hu_window(vol, (-500.0, 1000.0)))


def test_normalise_volume_ct_does_not_depend_on_percentiles():
    vol = np.linspace(-1000.0, 1500.0, 60).reshape(3, 4, 5)
    a = normalise_volume(vol, "ct", (-500.0, 1000.0), (0.5, 99.5))
    b = normalise_volume(vol, "ct", (-500.0, 1000.0), (10.0, 20.0))
    np.testing.assert_array_equal(a, b)
