"""The overlay's pixels against a per-pixel loop: low P(IDC) is painted faintly, not hidden."""

import matplotlib
import numpy as np
import pytest

from idc_inference import overlay


def test_alpha_ramps_from_a_faint_floor_to_full_opacity():
    p = np.array([0.0, 0.1, 0.19, 0.25, 0.5, 0.9, np.nan])
    alpha = overlay.alpha_ramp(p, 0.6)
    expected = [0.6 * (0.2 + 0.8 * min(v / 0.5, 1.0)) for v in p[:-1]] + [0.0]
    np.testing.assert_allclose(alpha, expected, rtol=1e-6)
    assert alpha[0] > 0 and np.all(np.diff(alpha[:-1]) >= 0)


def test_blend_paints_every_predicted_tile_and_leaves_the_rest():
    rng = np.random.default_rng(0)
    thumbnail = rng.integers(0, 256, (24, 30, 3), np.uint8)
    cols, rows = np.array([0, 1, 2, 0, 4]), np.array([0, 0, 1, 2, 2])
    p_idc = np.array([0.02, 0.15, 0.4, 0.8, np.nan], np.float32)
    size, downsample = (16.0, 16.0), (2.0, 2.0)  # a tile covers 8 x 8 thumbnail pixels
    index = overlay.tile_index_raster(thumbnail.shape[:2], downsample, cols, rows, size)
    out = overlay.blend(thumbnail, index, p_idc, 0.6)
    turbo = matplotlib.colormaps["turbo"]
    expected = thumbnail.astype(np.float64).copy()
    for y in range(24):
        for x in range(30):
            col, row = int((x + 0.5) * 2 // 16), int((y + 0.5) * 2 // 16)
            tile = [k for k in range(5) if cols[k] == col and rows[k] == row]
            if not tile or np.isnan(p_idc[tile[0]]):
                continue
            p = float(p_idc[tile[0]])
            a = 0.6 * (0.2 + 0.8 * min(p / 0.5, 1.0))
            colour = np.array(turbo(p)[:3]) * 255
            expected[y, x] = thumbnail[y, x] * (1 - a) + colour * a
    np.testing.assert_allclose(out, np.round(expected), atol=1)
    low = index == 0  # the tile at P(IDC) 0.02: faint, yet painted
    assert np.abs(out[low].astype(int) - thumbnail[low]).max() > 5
    untouched = (index == -1) | (index == 4)  # no tile, or a tile without P(IDC)
    np.testing.assert_array_equal(out[untouched], thumbnail[untouched])


@pytest.mark.parametrize("opacity", [0.3, 1.0])
def test_opacity_scales_the_whole_ramp(opacity):
    np.testing.assert_allclose(
        overlay.alpha_ramp(np.array([0.0, 1.0]), opacity), [0.2 * opacity, opacity], rtol=1e-6
    )
