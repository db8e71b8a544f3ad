"""The full-size slide benchmark's builder (benchmarks/full_size_slide.py), at a small size: a
40x pyramid of JPEG tiles that OpenSlide reads, whose 4 um/px level is the real patches."""

import sys

import numpy as np
import pytest
from PIL import Image

from idc_inference import slide_files, slide_tiles
from tests.commands import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import full_size_slide  # noqa: E402
from bench_data import sample_patches  # noqa: E402

WIDTH, HEIGHT = 8_000, 6_000  # 2 x 1.5 mm at 0.25 um/px: 10 x 8 cells of 200 um (the last half)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    bank = sample_patches()[0]["image"]
    layout = full_size_slide.TissueLayout(bank, WIDTH, HEIGHT, 0.25, 0.4, seed=0)
    path = tmp_path_factory.mktemp("full_size") / "small_40x.tiff"
    info = full_size_slide.write_slide(path, layout, quality=80, threads=2)
    return path, layout, info


def test_openslide_reads_the_40x_pyramid_of_jpeg_tiles(built):
    import openslide
    import tifffile

    path, _, info = built
    with openslide.OpenSlide(str(path)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert slide.level_dimensions == ((8000, 6000), (2000, 1500), (500, 375), (125, 94))
        assert slide.level_downsamples[:3] == (1.0, 4.0, 16.0)
        assert slide.level_downsamples[3] == pytest.approx(64, rel=0.01)  # 6000 / 94
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and len(tif.pages) == 4
        for page in tif.pages:
            assert page.compression == tifffile.COMPRESSION.JPEG and page.tilewidth == 256
    assert [level["tiles"] for level in info["levels"]] == [32 * 24, 8 * 6, 2 * 2, 1]
    assert info["file_bytes"] == path.stat().st_size
    # The map reads the 4 um/px level as it is.
    geometry = slide_tiles.TileGeometry.for_slide(slide_files.open_slide(path))
    assert (geometry.level, geometry.resampling_factor) == (2, 1.0)


def test_tissue_is_real_patches_in_blobs_at_every_level(built):
    import openslide

    path, layout, info = built
    assert layout.cells.shape == (8, 10) and layout.tissue_fraction == pytest.approx(0.4)
    placed = layout.cells[layout.cells >= 0]
    assert len(np.unique(placed)) > 0.9 * len(placed)  # different patches, not one repeated
    with openslide.OpenSlide(str(path)) as slide:
        level2 = np.asarray(slide.read_region((0, 0), 2, (500, 375)))[..., :3].astype(float)
        level0 = np.asarray(slide.read_region((0, 0), 0, (8000, 800)))[..., :3].astype(float)
        level3 = np.asarray(slide.read_region((0, 0), 3, (125, 94)))[..., :3].astype(float)
    # Level 2 (4 um/px) is the patches at their cells, up to JPEG's loss.
    canvas = layout.region(0, 0, 500, 375)
    row, col = np.argwhere(layout.cells >= 0)[0]
    patch = layout.bank[layout.cells[row, col]]
    np.testing.assert_array_equal(canvas[row * 50 : row * 50 + 50, col * 50 : col * 50 + 50], patch)
    assert np.abs(level2 - canvas).mean() < 4
    glass = layout.cells == -1
    cell_means = level2[:350].reshape(7, 50, 10, 50, 3).mean(axis=(1, 3, 4))
    assert cell_means[glass[:7]].min() > 250 and cell_means[~glass[:7]].mean() < 235
    # Level 0 is level 2 enlarged 16x; level 3 its 4:1 area average.
    enlarged = np.repeat(np.repeat(canvas[:50], 16, axis=0), 16, axis=1)
    assert np.abs(level0 - enlarged).mean() < 4
    averaged = np.asarray(Image.fromarray(canvas).reduce(4), float)
    assert np.abs(level3 - averaged).mean() < 4
    tissue_tiles = info["levels"][0]["tiles_with_tissue"]
    assert tissue_tiles == sum(
        layout.has_tissue(tx * 16, ty * 16, 16, 16) for ty in range(24) for tx in range(32)
    )
