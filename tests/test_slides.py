"""Whole slides: reading through OpenSlide, tissue, the streaming pipeline, the map and its files.

The slide is data/demo_slide/8955.tiff: the 495 real Kaggle patches of patient 8955 (a
validation patient of the shipped model's split, never trained on), mosaicked at their
coordinates into a pyramidal tiled TIFF (data/make_demo_slide.py). Its PNGs are committed beside
it in the Kaggle layout, so the oracle is exact: tiles cut from the slide at the patch grid are
the PNGs' pixels, and must get the P(IDC) that `patch_files.predict_files` (what predict.py
runs) gives the PNGs. Variants (4x resolution, no scale, no tissue, truncated, a corrupt tile)
are written here from the same patches. Models: the session's tiny run
(tests/test_inference.py), and for the ROC AUC of the scale test the shipped model, when the
package has it.
"""

import csv
import importlib.util
import json
import pathlib
import shutil
import zipfile

import numpy as np
import pytest
import shapely
import shapely.geometry
from PIL import Image

from evaluation import metrics
from idc_inference import (
    overlay,
    patch_files,
    regions,
    slide_files,
    slide_labels,
    slide_maps,
    slide_outputs,
    slide_thumbnails,
    slide_tiff,
    slide_tiles,
    tiles,
    tissue,
)
from idc_inference.predictor import Predictor
from input_pipeline import splits
from input_pipeline.patches import (
    FILE_NAME_PATTERN,
    LoadedPatch,
    find_png_files,
)
from tests.commands import run_program
from tests.conftest import SHARED_DATA
from tests.test_inference import trained_tiny_workdir

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "data" / "demo_slide"
DEMO_PATIENT = "8955"
DEMO_SLIDE = DEMO_DIR / f"{DEMO_PATIENT}.tiff"
DEMO_PATCHES = DEMO_DIR / DEMO_PATIENT
DEMO_LABELS = DEMO_DIR / "labels.csv"


def make_demo_slide_module():
    spec = importlib.util.spec_from_file_location(
        "make_demo_slide", REPO / "data" / "make_demo_slide.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_demo = make_demo_slide_module()


def read_labels_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_tiff(path, image: np.ndarray, *, mpp, downsamples=None) -> pathlib.Path:
    """A small pyramidal TIFF of `image` (white beyond it)."""
    h, w = image.shape[:2]

    def region(x, y, rw, rh):
        out = np.full((rh, rw, 3), 255, np.uint8)
        sub = image[max(y, 0) : y + rh, max(x, 0) : x + rw]
        out[: sub.shape[0], : sub.shape[1]] = sub
        return out

    slide_tiff.write_pyramidal_tiff(
        path, w, h, region, mpp=mpp, downsamples=downsamples, compression_level=1
    )
    return pathlib.Path(path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> pathlib.Path:
    return trained_tiny_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_workdir(tiny_run, batch_size=64)[0]


# ----------------------------------------------------------------------------- the scale


def test_one_scale_constant_and_tiles_cover_one_kaggle_patch(tmp_path):
    assert slide_files.KAGGLE_PATCH_MPP == 4.0
    rng = np.random.default_rng(0)
    path = write_tiff(tmp_path / "s.tiff", rng.integers(0, 255, (300, 400, 3), np.uint8), mpp=0.25)
    slide = slide_files.open_slide(path)
    assert slide.vendor == "generic-tiff"
    assert slide.scale.mpp == pytest.approx(0.25) and "openslide.mpp" in slide.scale.source
    # 200 um of tissue: 800 pixels of a 40x scan, 50 of the Kaggle patches.
    assert slide.tile_size_level0() == pytest.approx((800.0, 800.0))
    given = slide_files.open_slide(path, mpp=0.5)
    assert given.scale.mpp == 0.5 and given.scale.source == "given (--mpp)"
    assert given.tile_size_level0() == pytest.approx((400.0, 400.0))


def fake_slide(level_mpps: list[float]) -> slide_files.Slide:
    slide = object.__new__(slide_files.Slide)
    slide.scale = slide_files.Scale(level_mpps[0], level_mpps[0], "test")
    slide.level_downsamples = tuple(m / level_mpps[0] for m in level_mpps)
    slide.level_dimensions = tuple((int(8000 / d), int(6000 / d)) for d in slide.level_downsamples)
    return slide


@pytest.mark.parametrize(
    "level_mpps, expected",
    [
        ([0.25, 1.0, 4.0, 16.0], 2),  # Aperio 40x: a level at exactly 4 um
        ([0.25, 1.0, 4.003, 16.0], 2),  # the same, rounded resolution tags
        ([0.5, 2.0, 8.0], 1),  # 20x: 2 um, area-averaged 2:1
        ([0.25, 0.5, 1.0, 2.0], 3),  # the coarsest level is still finer than 4 um
        ([1.0, 3.0, 9.0], 1),  # 3 um, resampled 4:3
        ([8.0, 16.0], 0),  # every level coarser: the finest, upsampled
    ],
)
def test_best_level_is_the_coarsest_not_coarser_than_the_target(level_mpps, expected):
    assert fake_slide(level_mpps).best_level(4.0) == expected


def test_tiles_are_resampled_by_area_and_exact_boxes_are_copied(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (330, 420, 3), np.uint8)
    # Level 0 at 2 um: a tile is 100 x 100 level-0 pixels, area-averaged 2:1.
    slide = slide_files.open_slide(write_tiff(tmp_path / "a.tiff", image, mpp=2.0, downsamples=[1]))
    geometry = slide_tiles.TileGeometry.for_slide(slide)
    assert (geometry.level, geometry.resampling_factor) == (0, 2.0)
    reader = slide_tiles.TileReader(slide, geometry)
    tile = reader.read(100, 150)
    mean = image[150:250, 100:200].reshape(50, 2, 50, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(tile.astype(float) - mean).max() <= 1.0  # PIL rounds in fixed point
    # Past the slide's edge the tile is white, as border patches are padded in training.
    edge = reader.read(400, 0)
    assert np.all(edge[:, 10:] == 255)
    reader.close()

    # At 3 um a tile is 66.67 pixels: PIL's area average over that exact box.
    slide = slide_files.open_slide(write_tiff(tmp_path / "b.tiff", image, mpp=3.0))
    reader = slide_tiles.TileReader(slide, slide_tiles.TileGeometry.for_slide(slide))
    tile = reader.read(0, 0)
    expected = Image.fromarray(image).resize(
        (50, 50), Image.Resampling.BOX, box=(0, 0, 200 / 3, 200 / 3)
    )
    np.testing.assert_array_equal(tile, np.asarray(expected))
    reader.close()

    # At 4 um the tile is the pixels themselves.
    slide = slide_files.open_slide(write_tiff(tmp_path / "c.tiff", image, mpp=4.0))
    reader = slide_tiles.TileReader(slide, slide_tiles.TileGeometry.for_slide(slide))
    np.testing.assert_array_equal(reader.read(50, 100), image[100:150, 50:100])
    reader.close()


# ----------------------------------------------------------------------------- the demo slide


def test_demo_slide_is_a_pyramidal_tiff_of_the_patients_patches():
    slide = slide_files.open_slide(DEMO_SLIDE)
    assert slide.vendor == "generic-tiff"
    assert (slide.scale.mpp_x, slide.scale.mpp_y) == (4.0, 4.0)
    assert slide.level_count >= 4
    assert DEMO_SLIDE.stat().st_size < 6e6  # a few MB
    files, missing = find_png_files([DEMO_PATCHES])
    assert not missing and len(files) == 495
    rows = read_labels_csv(DEMO_LABELS)
    assert len(rows) == 495 and sum(int(r["label"]) for r in rows) == 181
    assert {r["file"] for r in rows} == {f.name for f in files}


def test_demo_patient_is_a_test_patient_of_the_default_split():
    """The default model's split (patient, seed 0) of the merged 245-patient data never trained
    on patient 8955, and the committed PNGs are the originals, byte for byte."""
    subset = SHARED_DATA / "idc_subset" / "IDC_regular_ps50_idx5.zip"
    rest = SHARED_DATA / "idc_slides" / "IDC_regular_ps50_idx5_rest.zip"
    if not (subset.is_file() and rest.is_file()):
        pytest.skip(f"the real data zips are not at {SHARED_DATA} (needs ../shared)")
    names: dict[str, str] = {}
    for archive in (subset, rest):
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                names.setdefault(member.rsplit("/", 1)[-1], member)
    matches = [FILE_NAME_PATTERN.match(name) for name in names]
    patient = np.array([int(m.group(1)) for m in matches if m])
    label = np.array([int(m.group(4)) for m in matches if m])
    split = splits.by_patient(patient, label, 0, validation_fraction=0.15, test_fraction=0.15)
    assert (len(split.train), len(split.validation), len(split.test)) == (24319, 3272, 6094)
    assert int(DEMO_PATIENT) in set(patient[split.test].tolist())
    with zipfile.ZipFile(subset) as z:
        for path in find_png_files([DEMO_PATCHES])[0]:
            assert z.read(names[path.name]) == path.read_bytes(), path.name


def test_oracle_slide_tiles_reproduce_predict_files(predictor):
    """Tiles read from the slide at the patch grid are the PNGs' pixels, so their P(IDC) is
    predict.py's, bit for bit (same pixels, same compiled function, same batch positions)."""
    files, _ = find_png_files([DEMO_PATCHES])
    from_png = patch_files.predict_files(predictor, files, keep_images=True)
    assert len(from_png.files) == 495 and not from_png.errors
    left = np.array([(n.x - 1) for n in from_png.names], float)
    top = np.array([(n.y - 1) for n in from_png.names], float)
    slide = slide_files.open_slide(DEMO_SLIDE)
    result, geometry, _ = slide_maps.predict_slide_tiles(
        slide, predictor, left, top, keep_images=True
    )
    assert (geometry.level, geometry.resampling_factor) == (0, 1.0)
    assert not result.errors
    np.testing.assert_array_equal(result.images, from_png.images)  # the same pixels
    np.testing.assert_array_equal(result.heights, from_png.heights)  # border patches too
    np.testing.assert_array_equal(result.widths, from_png.widths)
    np.testing.assert_array_equal(result.p_idc, from_png.p_idc)  # hence the same P(IDC)


def test_tissue_keeps_the_kaggle_patches_and_finds_none_on_glass():
    slide = slide_files.open_slide(DEMO_SLIDE)
    thumbnail = slide_thumbnails.read_thumbnail(slide)
    assert thumbnail.level >= 1  # read from a low level, not from level 0
    mask = tissue.detect_tissue(thumbnail.image, thumbnail.mpp)
    grid = slide_tiles.tile_grid(slide, thumbnail, mask.mask)
    kept = grid.tissue_fraction >= slide_maps.MIN_TISSUE_FRACTION
    patch_cells = {(int(r["x"]) // 50, int(r["y"]) // 50) for r in read_labels_csv(DEMO_LABELS)}
    is_patch = np.array([(c, r) in patch_cells for c, r in zip(grid.cols, grid.rows)])
    # The data set's authors kept tissue patches only: the detector keeps 97% of them and adds
    # nothing where the slide is glass (every cell without a patch is white).
    assert (kept & is_patch).sum() >= 0.97 * len(patch_cells)
    assert not np.any(kept & ~is_patch)

    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(243, 2.5, (400, 600, 3)), 0, 255).astype(np.uint8)
    glass[100:103, 200:260] = (92, 90, 91)  # a hair: dark, not stained
    empty = tissue.detect_tissue(glass, 8.0)
    assert not empty.mask.any() and empty.area_mm2 == 0.0


def test_thumbnail_is_read_in_bounded_bands(monkeypatch):
    import openslide

    sizes = []
    original = openslide.OpenSlide.read_region

    def recording(self, location, level, size):
        sizes.append(size[0] * size[1])
        return original(self, location, level, size)

    monkeypatch.setattr(openslide.OpenSlide, "read_region", recording)
    slide = slide_files.open_slide(DEMO_SLIDE)
    whole = slide_thumbnails.read_thumbnail(slide)
    sizes.clear()
    banded = slide_thumbnails.read_thumbnail(slide, band_pixels=40_000)
    assert len(sizes) > 10 and max(sizes) <= 40_000 + 2 * whole.image.shape[1] * 2
    assert np.abs(banded.image.astype(int) - whole.image.astype(int)).max() <= 1


# ----------------------------------------------------------------------------- the pipeline


class FakeSource:
    unit = "item"

    def __init__(self, n, bad=()):
        self.n, self.bad = n, set(bad)

    def __len__(self):
        return self.n

    def read(self, i):
        if i in self.bad:
            return LoadedPatch(None, error=f"bad {i}")
        return LoadedPatch(np.full((50, 50, 3), i % 256, np.uint8), 50, 50)

    def name(self, i):
        return f"item {i}"


class FakePredictor:
    """P(IDC) = first pixel / 255; records how many batches are in flight at most."""

    batch_size = 4

    def __init__(self):
        self.in_flight = 0
        self.max_in_flight = 0

    def dispatch(self, images):
        import jax.numpy as jnp

        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        out = np.zeros(self.batch_size, np.float32)
        out[: len(images)] = images[:, 0, 0, 0] / 255.0
        predictor = self

        class Result:
            is_fully_addressable = True

            def __array__(self, dtype=None, copy=None):
                predictor.in_flight -= 1
                return np.asarray(jnp.asarray(out))

        return Result()


def test_stream_keeps_order_lists_unreadable_items_and_bounds_the_work_in_flight():
    source = FakeSource(103, bad={5, 50, 102})
    fake = FakePredictor()
    result = tiles.stream(source, fake, num_threads=3, keep_images=True, max_pending=2)
    expected = [i for i in range(103) if i not in {5, 50, 102}]
    np.testing.assert_array_equal(result.indices, expected)
    np.testing.assert_allclose(result.p_idc, np.array(expected) % 256 / 255.0, rtol=1e-6)
    assert result.errors == [(5, "bad 5"), (50, "bad 50"), (102, "bad 102")]
    assert result.images.shape == (100, 50, 50, 3)
    assert fake.max_in_flight <= 3 and fake.in_flight == 0
    assert result.images_per_second > 0
    reading_only = tiles.stream(FakeSource(7), None)
    assert np.isnan(reading_only.p_idc).all() and len(reading_only.indices) == 7


# ----------------------------------------------------------------------------- the map


@pytest.fixture(scope="module")
def demo_map(predictor, tmp_path_factory):
    """map_slide of the demo slide with its labels; every OpenSlide read recorded."""
    import openslide

    out = tmp_path_factory.mktemp("demo_map")
    reads = []
    original = openslide.OpenSlide.read_region

    def recording(self, location, level, size):
        reads.append((level, size[0], size[1]))
        return original(self, location, level, size)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openslide.OpenSlide, "read_region", recording)
        summary = slide_maps.map_slide(
            DEMO_SLIDE,
            out,
            predictor,
            model={"source": "tiny test run", "tta": False},
            threshold=0.5,
            labels=DEMO_LABELS,
        )
    return summary, out, reads


def test_map_writes_every_output_and_never_reads_the_slide_whole(demo_map):
    summary, out, reads = demo_map
    names = slide_outputs.output_names(DEMO_SLIDE)
    assert sorted(p.name for p in out.iterdir()) == sorted(names.values())
    tiles_read = [r for r in reads if r[0] == 0]
    assert tiles_read and max(w * h for _, w, h in tiles_read) <= 51 * 51
    w0, h0 = slide_files.open_slide(DEMO_SLIDE).dimensions
    assert max(w * h for _, w, h in reads) < w0 * h0 / 3  # the thumbnail: one low level
    with open(out / names["tiles_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(slide_outputs.TILE_CSV_COLUMNS)
    assert len(rows) == summary["tiles"]["predicted"] == summary["tiles"]["tissue"] >= 480
    for row in rows:
        assert int(row["predicted_label"]) == int(float(row["p_idc"]) >= 0.5)
    assert summary["tiles"]["idc"] == sum(int(r["predicted_label"]) for r in rows)
    on_disk = json.loads((out / names["summary"]).read_text())
    assert on_disk["tiles"]["geometry"]["level"] == 0
    assert on_disk["slide"]["mpp_x"] == 4.0 and on_disk["threshold"] == 0.5
    assert on_disk["model"]["source"] == "tiny test run"
    assert 0.0 <= on_disk["idc_fraction_of_tissue"] <= 1.0
    # Areas: tissue is the tissue share of the analysed tiles (0.04 mm2 each).
    tissue_mm2 = sum(float(r["tissue_fraction"]) for r in rows) * 0.2 * 0.2
    assert on_disk["tissue_area_mm2"] == pytest.approx(tissue_mm2, rel=1e-2)
    assert (out / names["unreadable"]).read_text() == ""
    with Image.open(out / names["overlay"]) as image:
        assert image.format == "PNG" and image.size[0] > 1000


def test_regions_are_valid_qupath_annotations_of_the_idc_tiles(demo_map):
    summary, out, _ = demo_map
    names = slide_outputs.output_names(DEMO_SLIDE)
    collection = json.loads((out / names["geojson"]).read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == summary["idc_regions"] > 0
    with open(out / names["tiles_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    idc = [r for r in rows if r["predicted_label"] == "1"]
    w0, h0 = slide_files.open_slide(DEMO_SLIDE).dimensions
    polygons = []
    for feature in features:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        properties = feature["properties"]
        assert properties["objectType"] == "annotation"
        assert properties["classification"]["name"] == "IDC"
        assert len(properties["classification"]["color"]) == 3
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.is_valid and polygon.area > 0
        minx, miny, maxx, maxy = polygon.bounds
        assert minx >= 0 and miny >= 0 and maxx <= w0 + 50 and maxy <= h0 + 50
        inside = [
            float(r["p_idc"])
            for r in idc
            if polygon.contains(shapely.Point(float(r["x"]) + 25, float(r["y"]) + 25))
        ]
        measurements = properties["measurements"]
        assert measurements["Tiles"] == len(inside)
        assert measurements["Mean P(IDC)"] == pytest.approx(np.mean(inside), abs=1e-6)
        assert measurements["Mean P(IDC)"] >= 0.5
        polygons.append(polygon)
    # Together the regions are exactly the IDC tiles.
    assert shapely.union_all(polygons).area == pytest.approx(len(idc) * 50 * 50)


def test_dice_against_the_labelled_idc_is_the_tile_overlap(demo_map):
    summary, out, _ = demo_map
    report = summary["labels"]
    assert report["labelled"] == 495 and report["labelled_idc"] == 181
    names = slide_outputs.output_names(DEMO_SLIDE)
    with open(out / names["tiles_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    predicted = {(int(r["x"]), int(r["y"])) for r in rows if r["predicted_label"] == "1"}
    truth = {(int(r["x"]), int(r["y"])) for r in read_labels_csv(DEMO_LABELS) if r["label"] == "1"}
    dice = 2 * len(predicted & truth) / (len(predicted) + len(truth))
    assert report["dice_regions_vs_labelled_idc"] == pytest.approx(dice, abs=1e-9)
    labelled = [r for r in rows if r["true_label"] != ""]
    assert len(labelled) == report["labelled_and_analysed"] == report["tiles"]["num_examples"]
    auc = metrics.roc_auc(
        np.array([int(r["true_label"]) for r in labelled]),
        np.array([float(r["p_idc"]) for r in labelled]),
    )
    assert report["tiles"]["roc_auc"] == pytest.approx(auc, abs=1e-5)


def test_smoothed_regions_stay_valid():
    cols = np.array([0, 1, 1, 2, 5, 5, 7])
    rows = np.array([0, 0, 1, 1, 5, 6, 7])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.2, 0.99])
    found = regions.idc_regions(cols, rows, (50.0, 50.0), p, 0.5)
    assert [r.tiles for r in found] == [4, 1, 1]
    assert found[0].mean_p_idc == pytest.approx(0.75)
    smooth = regions.idc_regions(cols, rows, (50.0, 50.0), p, 0.5, smooth_px=12.5)
    assert smooth and all(r.polygon.is_valid for r in smooth)
    collection = regions.to_geojson(smooth, mpp=4.0)
    assert all(f["geometry"]["type"] == "Polygon" for f in collection["features"])


def test_outputs_appear_together_or_not_at_all(predictor, tmp_path, monkeypatch):
    summary = slide_maps.map_slide(DEMO_SLIDE, tmp_path, predictor, threshold=0.5)
    names = slide_outputs.output_names(DEMO_SLIDE)
    before = {name: (tmp_path / name).read_bytes() for name in names.values()}

    def broken(*args, **kwargs):
        pathlib.Path(args[0]).write_bytes(b"half a PNG")
        raise RuntimeError("disk full")

    monkeypatch.setattr(overlay, "render_overlay", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        slide_maps.map_slide(DEMO_SLIDE, tmp_path, predictor, threshold=0.9)
    # The earlier, complete outputs are untouched and nothing half-written is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names.values())
    assert {name: (tmp_path / name).read_bytes() for name in names.values()} == before
    assert summary["threshold"] == 0.5


# ----------------------------------------------------------------------------- the scale


def scale_model():
    """The shipped model (8-view TTA off: the test is about the reader) when the package has
    it, else None."""
    from idc_inference import model

    if not model.SHIPPED_WEIGHTS.is_file():
        return None
    import idc_inference

    return idc_inference.load(tta=False, batch_size=64)


@pytest.fixture(scope="module")
def scaled_slides(tmp_path_factory):
    """The demo slide at 4x its resolution (1 um/px), with a scanner's pyramid (downsamples
    1, 2, 4, 8) and with one whose best level must be resampled (1, 3, 9)."""
    folder = tmp_path_factory.mktemp("scaled")
    written = {}
    for name, downsamples in (("x4", [1, 2, 4, 8]), ("x4_139", [1, 3, 9])):
        make_demo.write_demo_slide(
            DEMO_PATCHES,
            folder / f"{name}.tiff",
            scale=4,
            downsamples=downsamples,
            labels=folder / "labels_x4.csv",
            compression_level=1,
        )
        written[name] = folder / f"{name}.tiff"
    return written, folder / "labels_x4.csv"


def tile_p_idc(out: pathlib.Path, scale: int) -> dict[tuple[int, int], float]:
    """P(IDC) by grid cell (column, row) from the tiles CSV in `out`."""
    (path,) = out.glob("*.tiles.csv")
    with open(path, newline="") as f:
        return {
            (int(float(r["x"])) // (50 * scale), int(float(r["y"])) // (50 * scale)): float(
                r["p_idc"]
            )
            for r in csv.DictReader(f)
        }


def map_with_labels(slide, labels, predictor, out, threshold=0.5):
    return slide_maps.map_slide(slide, out, predictor, threshold=threshold, labels=labels)


def test_scale_the_reader_picks_the_right_level_and_reads_the_same_tissue(scaled_slides):
    written, labels_x4 = scaled_slides
    native = slide_files.open_slide(DEMO_SLIDE)
    x4 = slide_files.open_slide(written["x4"])
    x4_139 = slide_files.open_slide(written["x4_139"])
    assert x4.scale.mpp == 1.0 and x4.dimensions == (4 * 2900, 4 * 1950)
    # 1, 2, 4, 8 um: level 2 is exactly 4 um, read as it is (level 3, 8 um, is coarser than
    # the training scale; levels 0 and 1 would read 16 and 4 times the pixels for nothing).
    g = slide_tiles.TileGeometry.for_slide(x4)
    assert (g.level, g.level_mpp, g.resampling_factor) == (2, 4.0, 1.0)
    assert g.size_level0 == (200.0, 200.0)
    # 1, 3, 9 um: level 1 (3 um) area-averaged 4:3; level 2 (9 um) is coarser than training.
    g = slide_tiles.TileGeometry.for_slide(x4_139)
    assert g.level == 1 and g.level_mpp == pytest.approx(3.0, rel=1e-3)
    assert g.resampling_factor == pytest.approx(4 / 3, rel=1e-3)

    rows = read_labels_csv(DEMO_LABELS)
    left = np.array([float(r["x"]) for r in rows])
    top = np.array([float(r["y"]) for r in rows])
    images = {}
    for name, slide, scale in (("native", native, 1), ("x4", x4, 4), ("x4_139", x4_139, 4)):
        reader = slide_tiles.TileReader(slide, slide_tiles.TileGeometry.for_slide(slide))
        source = tiles.SlideTiles(reader, left * scale, top * scale)
        images[name] = tiles.stream(source, None, keep_images=True).images.astype(float)
        reader.close()
    # The same tissue at the same places: bicubic upsampling then 4:1 area averaging moves a
    # pixel by a few grey levels; the extra 4:3 resampling of the 3 um level blurs a little more.
    assert np.abs(images["x4"] - images["native"]).mean() < 6
    assert np.abs(images["x4_139"] - images["native"]).mean() < 15
    with open(labels_x4, newline="") as f:
        scaled = list(csv.DictReader(f))
    assert [(4 * int(r["x"]), 4 * int(r["y"])) for r in rows] == [
        (int(r["x"]), int(r["y"])) for r in scaled
    ]


def demo_labels_by_cell() -> dict[tuple[int, int], int]:
    """The demo slide's labels by grid cell (column, row)."""
    return {
        (int(r["x"]) // 50, int(r["y"]) // 50): int(r["label"])
        for r in read_labels_csv(DEMO_LABELS)
    }


def paired_auc_difference_interval(a, b, labels, resamples=500, seed=0):
    """95% percentile interval of ROC AUC(b) - ROC AUC(a) over bootstrap resamples of tiles: the
    null this test measures, how much the difference moves with which tiles are drawn."""
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        i = rng.integers(0, len(labels), len(labels))
        if 0 < labels[i].sum() < len(i):
            differences.append(metrics.roc_auc(labels[i], b[i]) - metrics.roc_auc(labels[i], a[i]))
    return np.quantile(differences, [0.025, 0.975])


def test_scale_4x_loses_no_discrimination_against_native_with_the_shipped_model(
    scaled_slides, tmp_path
):
    model = scale_model()
    if model is None:
        pytest.skip("the shipped model is not in this checkout (idc_inference/shipped/)")
    written, labels_x4 = scaled_slides
    maps = {
        "native": map_with_labels(DEMO_SLIDE, DEMO_LABELS, model.predictor, tmp_path / "native"),
        "x4": map_with_labels(written["x4"], labels_x4, model.predictor, tmp_path / "x4"),
        "x4_139": map_with_labels(
            written["x4_139"], labels_x4, model.predictor, tmp_path / "x4_139"
        ),
    }
    auc = {name: m["labels"]["tiles"]["roc_auc"] for name, m in maps.items()}
    assert maps["x4"]["tiles"]["geometry"]["level"] == 2
    assert maps["x4_139"]["tiles"]["geometry"]["level"] == 1
    assert auc["native"] > 0.85, auc  # a model that discriminates, or nothing is compared
    p = {name: tile_p_idc(tmp_path / name, 1 if name == "native" else 4) for name in maps}
    labels_of = demo_labels_by_cell()
    labelled_native = set(p["native"]) & set(labels_of)
    for name in ("x4", "x4_139"):
        # The labelled tiles both maps predicted (tissue found on each thumbnail differs at its
        # edge); the 4x scan read at the model's scale (and its 3 um level resampled 4:3) must
        # not be worse than the native slide beyond what the choice of tiles moves.
        common = sorted(labelled_native & set(p[name]))
        assert len(common) >= 0.95 * len(labelled_native)
        native = np.array([p["native"][c] for c in common])
        scaled = np.array([p[name][c] for c in common])
        labels = np.array([labels_of[c] for c in common])
        low, high = paired_auc_difference_interval(native, scaled, labels)
        assert high >= 0.0, (name, auc, low, high)
    common = sorted(set(p["native"]) & set(p["x4"]))
    a = np.array([p["native"][k] for k in common])
    b = np.array([p["x4"][k] for k in common])
    assert len(common) >= 480 and np.corrcoef(a, b)[0, 1] > 0.9  # 0.92 measured


def test_demo_patient_never_trained_the_shipped_model():
    from idc_inference import model

    if not model.SHIPPED_WEIGHTS.is_file():
        pytest.skip("the shipped model is not in this checkout (idc_inference/shipped/)")
    record = json.loads(model.SHIPPED_WEIGHTS.with_suffix(".json").read_text())
    patients = record["patients"]
    # A validation patient of the frozen-test split: it chose the threshold, the smoothing
    # width and the calibration, and never trained the network.
    assert int(DEMO_PATIENT) in patients["validation"]
    assert int(DEMO_PATIENT) not in patients["train"] + patients["test"]


# ----------------------------------------------------------------------------- the program


def map_program(*args):
    return run_program("map_slide.py", "--noprogress", *map(str, args), timeout=300)


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def assert_nothing_written(out: pathlib.Path):
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def assert_refused(result, out: pathlib.Path, *words: str):
    """Exit status 2, one `error:` line holding every word, and no output written."""
    assert result.returncode == 2
    line = one_error_line(result)
    assert all(word in line for word in words), (words, line)
    assert_nothing_written(out)


def test_program_help_says_what_it_reads_and_writes():
    result = run_program("map_slide.py", "--help")  # absl exits with 1 after the help
    for words in ("Reads:", "Writes", "overlay.png", "geojson", "tiles.csv", "summary.json"):
        assert words in result.stdout


def test_program_refuses_a_file_that_is_not_a_slide(tmp_path, tiny_run):
    not_a_slide = tmp_path / "scan.svs"
    not_a_slide.write_text("these are notes, not a slide\n")
    out = tmp_path / "out"
    result = map_program(f"--workdir={tiny_run}", f"--output_dir={out}", not_a_slide)
    assert_refused(result, out, str(not_a_slide), "not a slide file")


@pytest.mark.parametrize("cut", ["in_the_image_data", "before_a_directory"])
def test_program_refuses_a_truncated_tiff(tmp_path, tiny_run, cut):
    import tifffile

    data = DEMO_SLIDE.read_bytes()
    if cut == "in_the_image_data":
        end = len(data) * 6 // 10
    else:  # level 0 whole, the chain of directories broken where level 1's begins
        with tifffile.TiffFile(DEMO_SLIDE) as tif:
            end = tif.pages[1].offset
    truncated = tmp_path / "cut.tiff"
    truncated.write_bytes(data[:end])
    out = tmp_path / "out"
    result = map_program(f"--workdir={tiny_run}", f"--output_dir={out}", truncated)
    assert_refused(result, out, str(truncated), "truncated")


def test_program_needs_a_scale_and_takes_one_from_the_flag(tmp_path, tiny_run):
    unscaled = tmp_path / "no_scale.tiff"
    make_demo.write_demo_slide(DEMO_PATCHES, unscaled, with_mpp=False, compression_level=1)
    out = tmp_path / "out"
    result = map_program(f"--workdir={tiny_run}", f"--output_dir={out}", unscaled)
    assert_refused(result, out, str(unscaled), "scale", "--mpp")

    result = map_program(f"--workdir={tiny_run}", f"--output_dir={out}", "--mpp=4", unscaled)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "no_scale.summary.json").read_text())
    assert summary["slide"]["mpp_source"] == "given (--mpp)"
    assert summary["tiles"]["geometry"]["level"] == 0 and summary["tiles"]["tissue"] > 400
    assert "tiles/s" in result.stdout


def test_program_maps_a_slide_without_tissue_as_empty_with_a_warning(tmp_path, tiny_run):
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(242, 2.5, (900, 1300, 3)), 0, 255).astype(np.uint8)
    blank = write_tiff(tmp_path / "blank.tiff", glass, mpp=4.0)
    out = tmp_path / "out"
    result = map_program(f"--workdir={tiny_run}", f"--output_dir={out}", blank)
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "no tissue" in result.stderr
    summary = json.loads((out / "blank.summary.json").read_text())
    assert summary["tiles"]["tissue"] == 0 and summary["tissue_area_mm2"] == 0.0
    assert summary["idc_regions"] == 0 and summary["warnings"]
    assert json.loads((out / "blank.geojson").read_text())["features"] == []
    assert (out / "blank.tiles.csv").read_text().strip() == ",".join(slide_outputs.TILE_CSV_COLUMNS)
    assert (out / "blank.overlay.png").is_file()


def test_program_skips_counts_and_lists_a_tile_that_cannot_be_read(tmp_path, tiny_run):
    import tifffile

    damaged = tmp_path / "damaged.tiff"
    shutil.copy(DEMO_SLIDE, damaged)
    with tifffile.TiffFile(damaged) as tif:
        page = tif.pages[0]
        per_row = -(-page.shape[1] // page.tilewidth)
        index = 3 * per_row + 5  # a level-0 TIFF tile in the middle of the tissue
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(damaged, "r+b") as f:
        f.seek(offset + count // 3)
        f.write(b"\xff" * 64)
    out = tmp_path / "out"
    result = map_program(f"--workdir={tiny_run}", f"--output_dir={out}", damaged)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "damaged.summary.json").read_text())
    listed = (out / "damaged.unreadable.txt").read_text().splitlines()
    assert summary["tiles"]["unreadable"] == len(listed) > 0
    assert summary["tiles"]["predicted"] == summary["tiles"]["tissue"] - len(listed)
    assert all("tile at level-0" in line and "\t" in line for line in listed)
    assert "unreadable:" in result.stderr and "warning:" in result.stderr
    with open(out / "damaged.tiles.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == summary["tiles"]["predicted"]


def test_program_refuses_bad_labels_naming_the_file(tmp_path, tiny_run):
    labels = tmp_path / "truth.csv"
    labels.write_text("col,row,class\n1,2,1\n")
    out = tmp_path / "out"
    result = map_program(
        f"--workdir={tiny_run}", f"--output_dir={out}", f"--labels={labels}", DEMO_SLIDE
    )
    assert result.returncode == 2
    line = one_error_line(result)
    assert str(labels) in line and "x, y, label" in line
    assert_nothing_written(out)


def test_labels_may_be_kaggle_patch_names(tmp_path):
    slide = slide_files.open_slide(DEMO_SLIDE)
    rows = read_labels_csv(DEMO_LABELS)
    by_name = tmp_path / "names.csv"
    by_name.write_text("file\n" + "".join(f"{r['file']}\n" for r in rows))
    from_names = slide_labels.read_labels(by_name, slide)
    from_xy = slide_labels.read_labels(DEMO_LABELS, slide)
    order = np.lexsort((from_names.left, from_names.top))
    np.testing.assert_array_equal(from_names.left[order], from_xy.left)
    np.testing.assert_array_equal(from_names.label[order], from_xy.label)


# ----------------------------------------------------------------------------- slide context


def naive_context_p_idc(stage: dict, cols, rows, p_patch) -> np.ndarray:
    """The context stage by hand: normalised Gaussian sums over every pair of tiles, the
    neighbour count, and the logistic regression of the record."""
    cols, rows, p_patch = (np.asarray(a, np.float64) for a in (cols, rows, p_patch))
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    features = [logit(p_patch)]
    for sigma in stage["sigmas"]:
        radius = int(4.0 * sigma + 0.5)
        dr, dc = np.abs(rows[:, None] - rows[None, :]), np.abs(cols[:, None] - cols[None, :])
        weight = np.exp(-(dr**2 + dc**2) / (2 * sigma**2)) * ((dr <= radius) & (dc <= radius))
        features.append(logit(weight @ p_patch / weight.sum(axis=1)))
    adjacent = (np.abs(rows[:, None] - rows[None, :]) + np.abs(cols[:, None] - cols[None, :])) == 1
    features.append(adjacent.sum(axis=1) / 4.0)
    z = np.stack(features, axis=1) @ np.asarray(stage["weights"]) + stage["bias"]
    return 1.0 / (1.0 + np.exp(-z))


def test_program_maps_with_the_slide_context_stage_of_exported_weights(tmp_path, tiny_run):
    weights = tmp_path / "tiny.safetensors"
    result = run_program(
        "export_model.py",
        f"--workdir={tiny_run}",
        f"--output={weights}",
        "--nopatients",
        "--nocalibrate",  # the stage's own arithmetic; tests/test_calibration.py calibrates
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stage = json.loads(weights.with_suffix(".json").read_text())["context_stage"]
    assert stage["calibration"]["kind"] == "identity"
    assert len(stage["weights"]) == len(stage["sigmas"]) + 2 and 0 <= stage["threshold"] <= 1
    assert "validation patients" in stage["fitted_on"]

    out = tmp_path / "maps"
    result = map_program(f"--workdir={weights}", f"--output_dir={out}", "--context", DEMO_SLIDE)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / f"{DEMO_PATIENT}.summary.json").read_text())
    assert summary["context_stage"] == stage and summary["threshold"] == stage["threshold"]
    rows = read_labels_csv(out / f"{DEMO_PATIENT}.tiles.csv")
    p_patch = np.array([float(r["p_idc_patch"]) for r in rows])
    p_context = np.array([float(r["p_idc"]) for r in rows])
    expected = naive_context_p_idc(
        stage,
        [float(r["x"]) // 50 for r in rows],  # the demo slide is at the training scale
        [float(r["y"]) // 50 for r in rows],
        p_patch,
    )
    # The CSV's 6 decimals (5e-7) move a logit by at most 5e-7 / (p (1 - p)); through the
    # weights that bounds the logistic's input, and P(IDC) moves by at most a quarter of it.
    shift = 5e-7 / np.min(p_patch * (1 - p_patch)) * np.sum(np.abs(stage["weights"]))
    assert shift / 4 < 1e-3, "the tiny run's P(IDC) is too close to 0 or 1 for this check"
    np.testing.assert_allclose(p_context, expected, rtol=0, atol=shift / 4 + 1e-6)
    assert not np.allclose(p_context, p_patch, atol=1e-3), "the stage changed nothing"
    for row in rows:
        assert int(row["predicted_label"]) == int(float(row["p_idc"]) >= stage["threshold"])


def test_program_context_needs_a_model_that_carries_the_stage(tmp_path, tiny_run):
    out = tmp_path / "out"
    result = map_program(f"--workdir={tiny_run}", f"--output_dir={out}", "--context", DEMO_SLIDE)
    assert_refused(result, out, "carries no slide-context stage", "export_model.py")


def test_export_refuses_context_slides_that_cannot_teach_the_stage(tmp_path, tiny_run):
    weights = tmp_path / "tiny.safetensors"
    export = ("export_model.py", f"--workdir={tiny_run}", f"--output={weights}", "--nopatients")
    result = run_program(*export, f"--context_slides={tmp_path / 'nothing'}")
    assert result.returncode == 2
    assert "is not a finished training run" in one_error_line(result)
    # The tiny run's test patients are scattered patches: no whole slide to fit on. (The run's
    # test P(IDC) are computed first, which logs the split: the error is the last line.)
    result = run_program(*export, f"--context_slides={tiny_run}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "needs patches of both classes" in last
    assert not weights.exists()
