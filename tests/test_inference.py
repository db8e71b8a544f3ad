"""Inference: file discovery and name parsing, the predictions CSV, thresholds, and 8-view TTA.

References are independent of `idc_inference`: the network applied directly to patches that PIL
decoded and the test padded, numpy rot90/flip for the dihedral views. The patches are real ones
of the sample shipped in data/idc_sample.
"""

import csv
import json
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

import input_pipeline
from idc_inference import patch_files
from idc_inference.predictor import Predictor
from input_pipeline import patches
from tests.commands import run_program
from tests.conftest import EMBEDDED_SAMPLE, tiny_data_dir
from tests.test_train import tiny_config
from trainer import RunDirectory, train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]


def trained_tiny_workdir(tmp_path_factory) -> pathlib.Path:
    """A one-epoch tiny run (alpha 0.25, 32 px, the tiny real set), trained once per session.

    Shared by test_inference, test_heatmap and test_reproduce through the session's base temp
    directory: the first module to ask trains it, the others find its summary.json.
    """
    base = tmp_path_factory.getbasetemp()
    workdir = base / "tiny_trained_run"
    if not (workdir / "summary.json").is_file():
        config = tiny_config(tiny_data_dir(tmp_path_factory), num_epochs=1)
        train_and_evaluate(config, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> pathlib.Path:
    return trained_tiny_workdir(tmp_path_factory)


# Two patients of the shipped sample with patches cut short at the slide border.
REAL_PATIENTS = ("12878", "16166")


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory) -> pathlib.Path:
    """The two patients' folders (Kaggle layout), copied."""
    folder = tmp_path_factory.mktemp("real_pngs")
    for patient in REAL_PATIENTS:
        shutil.copytree(EMBEDDED_SAMPLE / patient, folder / patient)
    return folder


@pytest.fixture(scope="module")
def real_patches(real_folder):
    """Their patches as columns, in sorted path order, decoded by PIL and padded here."""
    from PIL import Image

    columns = {k: [] for k in ("image", "label", "patient", "x", "y", "height", "width")}
    columns["file_name"] = []
    for path in sorted(real_folder.rglob("*.png")):
        patient, x, y, label = map(int, re.findall(r"\d+", path.name.replace("idx5", ""))[:4])
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        padded = np.full((50, 50, 3), 255, np.uint8)
        padded[: pixels.shape[0], : pixels.shape[1]] = pixels
        for key, value in (("image", padded), ("label", label), ("patient", patient), ("x", x)):
            columns[key].append(value)
        columns["y"].append(y)
        columns["height"].append(pixels.shape[0])
        columns["width"].append(pixels.shape[1])
        columns["file_name"].append(path.name)
    examples = {k: np.asarray(v) for k, v in columns.items()}
    assert np.any(examples["height"] < 50) or np.any(examples["width"] < 50)
    assert 0 < examples["label"].sum() < len(examples["label"])
    return examples


UNIT_ROUNDOFF32 = 2.0**-24


def batch_size_null(reference_p_idc, images) -> float:
    """How much P(IDC) of the same images moves between batch sizes (1 and all), measured.

    In eval mode each image's output is a function of that image alone, but XLA may tile a
    batch of another size differently and sum in another order: float32 reassociation, which
    this measures for the reference itself. Other batchings (the predictor's padded batches)
    may move P(IDC) by as much.
    """
    one_by_one = np.concatenate([reference_p_idc(images[i : i + 1]) for i in range(len(images))])
    return float(np.max(np.abs(one_by_one - reference_p_idc(images))))


def assert_within_batching_noise(got, expected, null: float, extra: float = 0.0) -> None:
    # 4 x the measured null, plus a few roundings of the probability itself (<= 1).
    bound = 4 * null + 8 * UNIT_ROUNDOFF32 + extra
    assert np.max(np.abs(np.asarray(got) - expected)) <= bound, (null, bound)


@pytest.fixture(scope="module")
def reference_p_idc(tiny_run):
    """P(IDC) by the restored network applied directly, without `inference`.

    The weights are arguments of the jitted function, as in the predictor: closed over, they
    would be constants that XLA folds into other arithmetic (another rounding).
    """
    config, model, _ = RunDirectory(tiny_run).restore_model()
    graphdef, state = nnx.split(model)

    @jax.jit
    def p_idc(state, images):
        inputs = input_pipeline.preprocess(images, config.preprocess, train=False)
        logits = nnx.merge(graphdef, state)(inputs)
        return jax.nn.softmax(logits.astype(np.float32))[:, 1]

    return lambda images: np.asarray(p_idc(state, np.asarray(images)))


# ----------------------------------------------------------------------------- files and names


def test_parse_patch_name_reads_kaggle_names_with_and_without_label():
    assert patches.parse_patch_name("8863_idx5_x1001_y2301_class1.png") == (
        patches.PatchName(patient=8863, x=1001, y=2301, label=1)
    )
    assert patches.parse_patch_name("8863_idx5_x51_y1_class0.png").label == 0
    assert patches.parse_patch_name("8863_idx5_x51_y101.png") == (
        patches.PatchName(patient=8863, x=51, y=101, label=None)
    )
    assert patches.parse_patch_name("slide_crop_7.png") == patches.PatchName()
    assert patches.parse_patch_name("8863_idx5_x51_y1_class2.png").label is None


def test_find_png_files_recurses_sorts_deduplicates_and_reports_missing(tmp_path):
    for relative in ("b/2.png", "b/sub/1.png", "a.png", "b/notes.txt", "b/UPPER.PNG"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    files, missing = patches.find_png_files(
        [tmp_path / "b", tmp_path / "a.png", tmp_path / "b" / "2.png", tmp_path / "nope"]
    )
    relative = [f.relative_to(tmp_path).as_posix() for f in files]
    assert relative == ["b/2.png", "b/UPPER.PNG", "b/sub/1.png", "a.png"]
    assert missing == [(tmp_path / "nope", "no such file or folder")]


def test_load_patch_pads_border_patches_with_white(real_folder, real_patches):
    from PIL import Image

    border = np.nonzero(real_patches["height"] < 50)[0][0]
    name = str(real_patches["file_name"][border])
    path = next(real_folder.rglob(name))
    patch = patches.load_patch(path)
    on_disk = np.asarray(Image.open(path))
    h, w = on_disk.shape[:2]
    assert (patch.height, patch.width) == (h, w) and h < 50
    assert patch.image.shape == (50, 50, 3)
    np.testing.assert_array_equal(patch.image[:h, :w], on_disk)
    assert np.all(patch.image[h:] == 255) and np.all(patch.image[:, w:] == 255)


def test_load_patch_reports_corrupt_and_missing_files(tmp_path):
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert patches.load_patch(corrupt).error == "skipped_corrupt_png"
    assert "unreadable file" in patches.load_patch(tmp_path / "gone.png").error


# ----------------------------------------------------------------------------- predictions


@pytest.fixture(scope="module")
def csv_run(tiny_run, real_folder, tmp_path_factory):
    """predict_to_csv of the real folder, an unlabelled copy, a corrupt and a missing file."""
    extra = tmp_path_factory.mktemp("extra")
    first = sorted(real_folder.rglob("*.png"))[0]
    unlabelled = extra / first.name.replace("_class0", "").replace("_class1", "")
    unlabelled.write_bytes(first.read_bytes())
    corrupt = extra / "corrupt.png"
    corrupt.write_bytes(b"not a png at all")
    output = extra / "preds.csv"
    result = patch_files.predict_to_csv(
        str(tiny_run),
        [str(real_folder), str(unlabelled), str(corrupt), str(extra / "missing.png")],
        str(output),
        batch_size=16,  # 45 readable files: 3 batches, the last one padded
    )
    with output.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return result, rows, output, unlabelled, corrupt


def test_csv_has_one_row_per_readable_file_with_what_the_name_says(csv_run, real_patches):
    result, rows, output, unlabelled, _ = csv_run
    assert list(rows[0]) == list(patch_files.CSV_COLUMNS)
    assert result["predicted"] == len(rows) == len(real_patches["label"]) + 1 == 45
    by_name = {pathlib.Path(r["file"]).name: r for r in rows}
    for i, name in enumerate(real_patches["file_name"]):
        row = by_name[name]
        assert int(row["patient"]) == real_patches["patient"][i]
        assert int(row["x"]) == real_patches["x"][i]
        assert int(row["y"]) == real_patches["y"][i]
        assert int(row["true_label"]) == real_patches["label"][i]
    unlabelled_row = by_name[unlabelled.name]
    assert unlabelled_row["true_label"] == "" and unlabelled_row["patient"] != ""


def test_csv_probabilities_match_the_network_applied_directly(
    csv_run, real_patches, reference_p_idc
):
    _, rows, *_ = csv_run
    by_name = {pathlib.Path(r["file"]).name: r for r in rows}
    expected = reference_p_idc(real_patches["image"])
    got = np.array([float(by_name[n]["p_idc"]) for n in real_patches["file_name"]])
    null = batch_size_null(reference_p_idc, real_patches["image"])
    assert_within_batching_noise(got, expected, null, extra=5e-7)  # the CSV's 6 decimals
    # The unlabelled file is a copy of one of them: same pixels, same probability.
    copy = [r for r in rows if r["true_label"] == ""][0]
    original = [
        r
        for r in rows
        if pathlib.Path(r["file"]).name.startswith(pathlib.Path(copy["file"]).stem + "_class")
    ][0]
    assert copy["p_idc"] == original["p_idc"]


def test_predicted_labels_follow_p_idc_and_the_threshold(csv_run):
    result, rows, *_ = csv_run
    assert result["threshold"] == 0.5
    for row in rows:
        assert int(row["predicted_label"]) == int(float(row["p_idc"]) >= 0.5)


def test_unreadable_files_are_listed_not_fatal(csv_run):
    result, _, output, _, corrupt = csv_run
    listed = pathlib.Path(f"{output}.errors.txt").read_text().splitlines()
    assert result["unreadable"] == 2 == len(listed)
    assert f"{corrupt}\tskipped_corrupt_png" in listed
    assert any(line.startswith(str(output.parent / "missing.png")) for line in listed)


def test_validation_threshold_is_the_one_training_recorded(tiny_run):
    with (tiny_run / "history.csv").open(newline="") as f:
        last = list(csv.DictReader(f))[-1]
    step = int(last["step"])
    assert patch_files.resolve_threshold("validation", tiny_run, step) == pytest.approx(
        float(last["val_tuned_threshold"])
    )
    assert patch_files.resolve_threshold("0.3", tiny_run, step) == 0.3
    with pytest.raises(ValueError, match="no validation threshold for step"):
        RunDirectory(tiny_run).validation_threshold(step + 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        patch_files.resolve_threshold("1.5", tiny_run, step)


def test_predictor_pads_the_last_batch_and_returns_one_value_per_image(
    tiny_run, real_patches, reference_p_idc
):
    predictor, _, _ = Predictor.from_workdir(tiny_run, batch_size=16)
    images = real_patches["image"][:21]
    null = batch_size_null(reference_p_idc, images)
    assert_within_batching_noise(predictor(images), reference_p_idc(images), null)
    assert predictor(images[:0]).shape == (0,)


def numpy_dihedral_view(images: np.ndarray, k: int) -> np.ndarray:
    """k quarter turns counter-clockwise of [B, H, W, C], then a left-right mirror if k >= 4."""
    turned = np.rot90(images, k=k % 4, axes=(1, 2))
    return turned[:, :, ::-1] if k >= 4 else turned


def test_tta_is_the_mean_of_the_eight_dihedral_views(tiny_run, real_patches, reference_p_idc):
    config, model, _ = RunDirectory(tiny_run).restore_model()
    images = real_patches["image"][:16]
    single = Predictor(model, config.preprocess, batch_size=16, tta=False)
    tta = Predictor(model, config.preprocess, batch_size=16, tta=True)
    per_view = np.stack([single(numpy_dihedral_view(images, k)) for k in range(8)])
    # The views must disagree, or the test could not tell TTA from a single view.
    assert np.max(np.std(per_view, axis=0)) > 1e-4
    # TTA runs the 8 views inside one compiled loop: batching noise, as measured on 16 images.
    null = batch_size_null(reference_p_idc, images)
    assert_within_batching_noise(tta(images), per_view.mean(axis=0), null)


# ----------------------------------------------------------------------------- the command


def test_predict_command_writes_csv_and_prints_throughput(tiny_run, real_folder, tmp_path):
    output = tmp_path / "cli.csv"
    result = run_program(
        "predict.py",
        f"--workdir={tiny_run}",
        f"--output={output}",
        "--threshold=validation",
        "--batch_size=32",
        str(real_folder),
        str(tmp_path / "nothing_here"),
    )
    assert result.returncode == 0, result.stderr
    assert "44 patches predicted" in result.stdout and "images/s" in result.stdout
    assert "1 unreadable" in result.stdout
    assert f"unreadable: {tmp_path / 'nothing_here'}" in result.stderr
    assert f"using workdir {tiny_run}" in result.stdout
    with output.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 44
    # The sidecar says which model, checkpoint, threshold and TTA made the CSV, and the counts.
    record = json.loads(pathlib.Path(f"{output}.json").read_text())
    summary = json.loads((tiny_run / "summary.json").read_text())
    model = record["model"]
    assert model["source"] == "workdir" and model["path"] == str(tiny_run)
    assert model["step"] == summary["steps"] and model["checkpoint"] == "latest"
    assert model["threshold"] == pytest.approx(summary["final_validation"]["tuned_threshold"])
    assert model["tta"] is True  # the run evaluated with eval_tta: the default follows it
    assert model["code_version"]["version"]
    assert record["counts"] == {
        "png_files_found": 44,
        "predicted": 44,
        "predicted_idc": sum(int(r["predicted_label"]) for r in rows),
        "unreadable": 1,
    }
    from evaluation import metrics  # noqa: PLC0415

    labels = np.array([int(r["true_label"]) for r in rows])
    p_idc = np.array([float(r["p_idc"]) for r in rows])
    scores = record["metrics_on_labelled_patches"]
    assert scores["num_examples"] == 44 and scores["threshold"] == model["threshold"]
    assert scores["roc_auc"] == pytest.approx(metrics.roc_auc(labels, p_idc), abs=1e-3)
    assert f"ROC AUC {scores['roc_auc']:.4f}" in result.stdout


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit status 2, no traceback, and stderr ending in one line `error: ...` that holds every
    fragment (a progress bar may come before it)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def test_predict_command_a_mistyped_folder_is_one_line_and_exit_2(tmp_path):
    output = tmp_path / "preds.csv"
    missing = tmp_path / "idc_sampel" / "9226"
    result = run_program("predict.py", f"--output={output}", str(missing))
    assert_one_line_error(result, "no such file or folder", str(missing))
    assert not output.exists()
    (tmp_path / "empty").mkdir()
    result = run_program("predict.py", f"--output={output}", str(tmp_path / "empty"))
    assert_one_line_error(result, "no PNG file found under", str(tmp_path / "empty"))


def test_predict_command_nothing_readable_is_exit_2(tiny_run, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    output = tmp_path / "preds.csv"
    result = run_program(
        "predict.py", f"--workdir={tiny_run}", f"--output={output}", str(tmp_path / "broken.png")
    )
    assert_one_line_error(result, "none of the 1 PNG files could be read", "errors.txt")
    assert "broken.png\tskipped_corrupt_png" in pathlib.Path(f"{output}.errors.txt").read_text()


def test_predict_command_a_workdir_that_is_not_a_run_is_one_line(real_folder, tmp_path):
    result = run_program(
        "predict.py", f"--workdir={tmp_path}", f"--output={tmp_path / 'p.csv'}", str(real_folder)
    )
    assert_one_line_error(result, str(tmp_path), "is not a training run", "shipped model")
    result = run_program(
        "predict.py",
        f"--workdir={tmp_path / 'weights.safetensors'}",
        f"--output={tmp_path / 'p.csv'}",
        str(real_folder),
    )
    assert_one_line_error(result, "does not exist")


def test_predict_command_a_threshold_out_of_range_is_one_line(tiny_run, real_folder, tmp_path):
    result = run_program(
        "predict.py",
        f"--workdir={tiny_run}",
        f"--output={tmp_path / 'p.csv'}",
        "--threshold=1.5",
        str(real_folder),
    )
    assert_one_line_error(result, "[0, 1]", "1.5")
