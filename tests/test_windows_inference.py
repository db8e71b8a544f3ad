"""A neighbourhood network's windows at inference: what the slide program reads around a tile is
what training built from the Kaggle grid, pixel for pixel, and P(IDC) follows.

The oracle is the demo slide (data/demo_slide/8955.tiff): the 495 Kaggle patches of patient 8955
laid out at their grid positions in a lossless pyramidal TIFF, with white where there is no
patch. A window of 3 x 3 patches assembled from the PNG files by `input_pipeline.windows` (what
training feeds the network) must equal the 150 x 150 region map_slide.py reads around the tile,
including at the slide's edge (white beyond it). The network is a one-epoch tiny run with
data.window=3 (alpha 0.25, 32 px, the tests' tiny real set), trained once per session.
"""

import pathlib

import numpy as np
import pytest

from idc_inference import model as model_lib
from idc_inference import patch_files, run_records, slide_files, slide_maps, slide_tiles, tiles
from idc_inference.predictor import Predictor
from input_pipeline import windows
from input_pipeline.patches import find_png_files, load_patch, parse_patch_name
from tests.conftest import tiny_data_dir
from tests.test_train import tiny_config
from trainer import train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_SLIDE = REPO / "data" / "demo_slide" / "8955.tiff"
DEMO_PATCHES = REPO / "data" / "demo_slide" / "8955"


@pytest.fixture(scope="module")
def demo_patches():
    """The demo patient's files, their decoded patches, and grid positions."""
    files, _ = find_png_files([DEMO_PATCHES])
    names = [parse_patch_name(f.name) for f in files]
    images = np.stack([load_patch(f).image for f in files])
    patient = np.array([n.patient for n in names])
    x = np.array([n.x for n in names])
    y = np.array([n.y for n in names])
    return files, images, patient, x, y


def test_a_window_from_the_kaggle_grid_equals_the_window_read_from_the_demo_slide(demo_patches):
    files, images, patient, x, y = demo_patches
    from_grid = windows.assemble_windows(images, windows.window_rows(patient, x, y, 3))
    slide = slide_files.open_slide(DEMO_SLIDE)
    geometry = slide_tiles.TileGeometry.for_slide(slide)
    assert (geometry.level, geometry.resampling_factor) == (0, 1.0)
    reader = slide_tiles.TileReader(slide, geometry)
    try:
        from_slide = np.stack([reader.read(a - 1, b - 1, window=3) for a, b in zip(x, y)])
    finally:
        reader.close()
    # Windows that reach beyond the slide's right or bottom edge (white there) are among them.
    width, height = slide.dimensions
    assert ((x - 1 + 100 > width) | (y - 1 + 100 > height)).any()
    np.testing.assert_array_equal(from_slide, from_grid)
    np.testing.assert_array_equal(windows.centre_of(from_slide), images)
    # The PNG source of predict.py builds the same windows from the files' names.
    source = tiles.PngFiles(files, window=3)
    picks = np.linspace(0, len(files) - 1, 25).astype(int)
    for i in picks:
        np.testing.assert_array_equal(source.read(int(i)).image, from_grid[i])
    assert source.no_position == []


def test_png_windows_show_a_file_without_a_position_alone(tmp_path, demo_patches):
    files = demo_patches[0]
    stray = tmp_path / "scan_0001.png"
    stray.write_bytes(files[0].read_bytes())
    source = tiles.PngFiles([*files[:4], stray], window=3)
    assert source.no_position == [4]
    window = source.read(4).image
    assert (window[:50].min(), window[100:].min()) == (255, 255)  # white around it
    np.testing.assert_array_equal(windows.centre_of(window[None])[0], load_patch(stray).image)


@pytest.fixture(scope="module")
def window_run(tmp_path_factory) -> pathlib.Path:
    """A one-epoch tiny neighbourhood run (data.window=3)."""
    workdir = tmp_path_factory.getbasetemp() / "tiny_window_run"
    if not (workdir / "summary.json").is_file():
        config = tiny_config(tiny_data_dir(tmp_path_factory), num_epochs=1)
        config.data.window = 3
        train_and_evaluate(config, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def window_predictor(window_run) -> Predictor:
    return Predictor.from_workdir(window_run, batch_size=64)[0]


def test_slide_windows_get_the_p_idc_of_the_png_windows(window_predictor, demo_patches):
    assert (window_predictor.window, window_predictor.input_size) == (3, 150)
    files, images, patient, x, y = demo_patches
    from_png = patch_files.predict_files(window_predictor, files, keep_images=True)
    assert len(from_png.files) == 495 and not from_png.errors
    np.testing.assert_array_equal(from_png.images, images)  # the centres are kept
    slide = slide_files.open_slide(DEMO_SLIDE)
    left = np.array([n.x - 1 for n in from_png.names], float)
    top = np.array([n.y - 1 for n in from_png.names], float)
    result, _, _ = slide_maps.predict_slide_tiles(slide, window_predictor, left, top)
    np.testing.assert_array_equal(result.p_idc, from_png.p_idc)
    # The neighbours matter: the centre alone, white around, gets other P(IDC).
    alone = window_predictor(
        windows.assemble_windows(
            images, np.where(np.arange(9) == 4, np.arange(len(images))[:, None], -1)
        )
    )
    assert np.abs(alone - from_png.p_idc).max() > 1e-4


def test_exported_window_weights_load_and_predict_windows(
    window_run, window_predictor, tmp_path, demo_patches
):
    images, patient, x, y = demo_patches[1:]
    output = tmp_path / "window.safetensors"
    record = run_records.export_workdir(window_run, output, with_patients=False)
    assert record["input"]["window"] == 3
    assert record["input"]["size"] == 150
    model = model_lib.load(output, tta=False)
    assert (model.window, model.input_size, model.describe()["window"]) == (3, 150, 3)
    batch = windows.assemble_windows(images, windows.window_rows(patient, x, y, 3)[:20])
    np.testing.assert_allclose(model.predict(batch), window_predictor(batch), atol=1e-6)
    twice = np.repeat(np.repeat(batch, 2, axis=1), 2, axis=2)  # the same 600 um at 2 um/px
    assert model.predict(twice).shape == (20,)
    with pytest.raises(ValueError, match="square"):
        model.predict(batch[:, :, :100])


def test_a_window_model_takes_patches_with_their_places_and_refuses_them_bare(
    window_run, tmp_path, demo_patches
):
    files, images, patient, x, y = demo_patches
    output = tmp_path / "window.safetensors"
    run_records.export_workdir(window_run, output, with_patients=False)
    model = model_lib.load(output, tta=False)
    with pytest.raises(ValueError, match="predict_patches"):
        model.predict(images[:4])
    from_files = model.predict_files(files)
    by_place = {(n.x, n.y): p for n, p in zip(from_files.names, from_files.p_idc)}
    got = model.predict_patches(images, x, y)
    np.testing.assert_allclose(got, [by_place[(a, b)] for a, b in zip(x, y)], atol=1e-6)
    with pytest.raises(ValueError, match="one x and one y"):
        model.predict_patches(images, x[:-1], y)
