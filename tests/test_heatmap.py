"""Slide maps: patch placement on the real sample, overlays, outcome maps and the command."""

import csv
import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

import idc_inference
from idc_inference import mosaic, patient_maps
from input_pipeline.patches import PatchName
from tests.commands import run_program
from tests.conftest import EMBEDDED_SAMPLE
from tests.test_inference import assert_one_line_error, trained_tiny_workdir

REPO = pathlib.Path(__file__).resolve().parents[1]
GRID = 50


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------------------- pure functions


def test_mosaic_and_overlay_of_a_toy_slide():
    # Three patches on a 2x3 grid of 50-pixel cells; the right one is cut to 20 wide, the one
    # below to 30 high (the slide's border). Cell (row 0, column 1) stays empty.
    images = np.stack([np.full((50, 50, 3), v, np.uint8) for v in (10, 20, 30)])
    names = [
        PatchName(1, x=1, y=1),
        PatchName(1, x=101, y=1),
        PatchName(1, x=1, y=51),
    ]
    placement = mosaic.SlidePlacement.from_names(names, [50, 50, 30], [50, 20, 50])
    assert placement.canvas_shape == (80, 120)
    canvas = mosaic.build_mosaic(images, placement)
    expected = np.full((80, 120, 3), 255, np.uint8)
    expected[0:50, 0:50] = 10
    expected[0:50, 100:120] = 20
    expected[50:80, 0:50] = 30
    np.testing.assert_array_equal(canvas, expected)

    colours = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    tinted = mosaic.overlay_patches(
        canvas, placement, colours, opacity=0.25, skip=np.array([False, False, True])
    )
    np.testing.assert_array_equal(tinted[0, 0], np.round([0.75 * 10 + 0.25 * 255, 7.5, 7.5]))
    np.testing.assert_array_equal(tinted[0, 110], np.round([15, 0.75 * 20 + 0.25 * 255, 15]))
    np.testing.assert_array_equal(tinted[60:], canvas[60:])  # skipped patch and empty cells
    np.testing.assert_array_equal(tinted[:50, 50:100], canvas[:50, 50:100])


def test_outcomes_are_the_confusion_cells_with_idc_positive():
    labels = np.array([1, 1, 0, 0, -1])
    decisions = np.array([1, 0, 1, 0, 1])
    assert mosaic.outcomes(labels, decisions).tolist() == ["TP", "FN", "FP", "TN", ""]


# ----------------------------------------------------------------------------- the real sample


@pytest.fixture(scope="module")
def real_sample_maps(idc_sample_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("maps_8863")
    summary = patient_maps.slide_maps(idc_sample_dir, output)
    return summary, output


def sample_patches(idc_sample_dir):
    """(x, y, label, pixels) of every PNG of the sample, read with PIL."""
    patches = []
    for path in sorted(idc_sample_dir.rglob("*.png")):
        _, x, y, label = path.stem.split("_")[1:]
        patches.append((int(x[1:]), int(y[1:]), int(label[len("class") :]), read_png(path)))
    return patches


def test_every_real_patch_lands_at_its_coordinates(real_sample_maps, idc_sample_dir):
    summary, output = real_sample_maps
    canvas = read_png(output / "mosaic.png")
    patches = sample_patches(idc_sample_dir)
    assert len(patches) == 979 == summary["patches_placed"]
    bottom = max(y - 1 + p.shape[0] for x, y, _, p in patches)
    right = max(x - 1 + p.shape[1] for x, y, _, p in patches)
    assert canvas.shape == (bottom, right, 3) == (2335, 2791, 3)  # the README's border patches
    truncated = [p.shape[:2] for *_, p in patches if p.shape[:2] != (50, 50)]
    assert sorted(truncated) == [(35, 50)] * 3 + [(50, 41)]
    covered = np.zeros(canvas.shape[:2], bool)
    for x, y, _, pixels in patches:
        h, w = pixels.shape[:2]
        np.testing.assert_array_equal(canvas[y - 1 : y - 1 + h, x - 1 : x - 1 + w], pixels)
        covered[y - 1 : y - 1 + h, x - 1 : x - 1 + w] = True
    assert np.all(canvas[~covered] == 255), "pixels outside every patch must be white"
    assert (~covered).any()


def test_ground_truth_tints_exactly_the_idc_patches(real_sample_maps, idc_sample_dir):
    summary, output = real_sample_maps
    canvas = read_png(output / "mosaic.png").astype(np.float64)
    truth = read_png(output / "ground_truth.png")
    assert summary["idc_patches_labelled"] == 207
    red = np.array(patient_maps.IDC_RED) * 255
    for x, y, label, pixels in sample_patches(idc_sample_dir):
        h, w = pixels.shape[:2]
        region = (slice(y - 1, y - 1 + h), slice(x - 1, x - 1 + w))
        expected = np.round(0.5 * canvas[region] + 0.5 * red) if label else canvas[region]
        np.testing.assert_array_equal(truth[region], expected)
    # No model: no P(IDC) or outcome maps.
    assert not (output / "p_idc.png").exists() and not (output / "outcomes.png").exists()
    assert (output / "slide_maps.png").is_file()


# ----------------------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def model_maps(tmp_path_factory):
    """Slide maps of one real patient of the shipped sample (three patches cut at the slide
    border), plus a corrupt file, by the tiny model."""
    workdir = trained_tiny_workdir(tmp_path_factory)
    folder = tmp_path_factory.mktemp("patient") / "16166"
    shutil.copytree(EMBEDDED_SAMPLE / "16166", folder)
    num_patches = len(list(folder.rglob("*.png")))
    assert len(list((folder / "1").glob("*.png"))) > 0 and num_patches > 10
    (folder / "0" / "corrupt.png").write_bytes(b"broken")
    output = tmp_path_factory.mktemp("model_maps")
    model = idc_inference.load(workdir, threshold="validation", batch_size=32)
    summary = patient_maps.slide_maps(folder, output, model=model)
    return summary, output, num_patches, workdir


def test_outcome_counts_agree_with_the_predictions_csv(model_maps):
    summary, output, num_patches, _ = model_maps
    with (output / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == num_patches == summary["patches_placed"]
    labels = np.array([int(r["true_label"]) for r in rows])
    decisions = np.array([float(r["p_idc"]) >= summary["threshold"] for r in rows])
    expected = {
        "TP": int(np.sum((labels == 1) & decisions)),
        "FN": int(np.sum((labels == 1) & ~decisions)),
        "FP": int(np.sum((labels == 0) & decisions)),
        "TN": int(np.sum((labels == 0) & ~decisions)),
    }
    assert summary["outcomes"] == expected
    assert json.loads((output / "summary.json").read_text())["outcomes"] == expected
    assert summary["unreadable_or_unplaced"] == 1
    assert "corrupt.png\tskipped_corrupt_png" in (output / "unreadable.txt").read_text()


def test_probability_and_outcome_maps_colour_each_patch(model_maps):
    summary, output, _, _ = model_maps
    canvas = read_png(output / "mosaic.png").astype(np.float64)
    p_map, outcome_map = read_png(output / "p_idc.png"), read_png(output / "outcomes.png")
    with (output / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    colours = mosaic.probability_colours(np.array([float(r["p_idc"]) for r in rows]))
    for row, colour in zip(rows, colours):
        top, left = int(row["y"]) - 1, int(row["x"]) - 1
        pixel = (top, left)  # the top-left pixel belongs even to a 1-pixel-deep border patch
        predicted = float(row["p_idc"]) >= summary["threshold"]
        outcome = ("T" if predicted == bool(int(row["true_label"])) else "F") + (
            "P" if predicted else "N"
        )
        expected_outcome = np.round(
            0.5 * canvas[pixel] + 0.5 * np.array(mosaic.OUTCOME_COLOURS[outcome]) * 255
        )
        np.testing.assert_array_equal(outcome_map[pixel], expected_outcome)
        # The CSV rounds P(IDC) to 6 decimals, which can move it to the neighbouring colour of the
        # colormap's 256-entry table: allow two grey levels.
        expected_p = 0.5 * canvas[pixel] + 0.5 * colour * 255
        np.testing.assert_allclose(p_map[pixel], expected_p, atol=2.0)


def test_heatmap_command_labels_only(idc_sample_dir, tmp_path):
    result = run_program(
        "heatmap.py",
        "--labels_only",
        f"--patient_dir={idc_sample_dir}",
        f"--output_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr
    assert "patient 8863" in result.stdout
    for name in ("mosaic.png", "ground_truth.png", "slide_maps.png", "summary.json"):
        assert (tmp_path / name).is_file(), name
    assert read_png(tmp_path / "mosaic.png").shape == (2335, 2791, 3)


def test_the_summary_records_the_model_that_drew_the_maps(model_maps):
    summary, output, _, workdir = model_maps
    record = json.loads((output / "summary.json").read_text())["model"]
    assert record["source"] == "workdir" and record["path"] == str(workdir)
    assert record["threshold"] == summary["threshold"] and record["tta"] is True
    assert "validation" in record["threshold_source"] and record["code_version"]["version"]


def test_heatmap_command_with_a_run_says_which_model(tmp_path_factory, tmp_path):
    workdir = trained_tiny_workdir(tmp_path_factory)
    result = run_program(
        "heatmap.py",
        f"--workdir={workdir}",
        f"--patient_dir={EMBEDDED_SAMPLE / '16166'}",
        f"--output_dir={tmp_path}",
        "--notta",
        "--threshold=0.5",
    )
    assert result.returncode == 0, result.stderr
    assert f"using workdir {workdir}" in result.stdout and "images/s" in result.stdout
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["model"]["tta"] is False and record["threshold"] == 0.5


def one_line_error(result) -> str:
    """The `error: ...` line that ends stderr, after checking exit status 2 and no traceback."""
    assert_one_line_error(result)
    return result.stderr.strip().splitlines()[-1]


def test_heatmap_command_a_missing_patient_folder_is_one_line(tmp_path):
    missing = tmp_path / "no_such_patient"
    result = run_program("heatmap.py", f"--patient_dir={missing}", f"--output_dir={tmp_path}")
    line = one_line_error(result)
    assert str(missing) in line and "does not exist" in line


def test_heatmap_command_a_folder_without_kaggle_patches_is_one_line(tmp_path):
    folder = tmp_path / "patient"
    folder.mkdir()
    (folder / "notes.txt").write_text("no patches here")
    result = run_program(
        "heatmap.py", "--labels_only", f"--patient_dir={folder}", f"--output_dir={tmp_path}"
    )
    line = one_line_error(result)
    assert "no PNG file under" in line and str(folder) in line
    # A PNG whose name gives no slide position cannot be placed.
    first = sorted((EMBEDDED_SAMPLE / "16166").rglob("*.png"))[0]
    (folder / "crop.png").write_bytes(first.read_bytes())
    result = run_program(
        "heatmap.py", "--labels_only", f"--patient_dir={folder}", f"--output_dir={tmp_path}"
    )
    line = one_line_error(result)
    assert "no readable patch with a Kaggle-style name" in line and str(folder) in line


def test_heatmap_command_a_workdir_that_is_not_a_run_is_one_line(tmp_path):
    result = run_program(
        "heatmap.py",
        f"--workdir={tmp_path}",
        f"--patient_dir={EMBEDDED_SAMPLE / '16166'}",
        f"--output_dir={tmp_path / 'out'}",
    )
    assert "is not a training run" in one_line_error(result)
