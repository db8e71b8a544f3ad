"""The Kaggle IDC builder end to end: real patches (folder and zip), the shipped sample, bad
inputs, stale preparations, splits that cannot be evaluated, `auto`'s choice, no TensorFlow."""

import io
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from PIL import Image

from configs import default
from input_pipeline import dataset, sources
from tests.conftest import EMBEDDED_SAMPLE

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _build_kaggle(data_dir: pathlib.Path, manual_dir: pathlib.Path):
    config = default.data_config(
        dataset="kaggle_idc", data_dir=str(data_dir), manual_dir=str(manual_dir)
    )
    builder = dataset.prepare(config).builder
    return builder, dataset.load_table(builder)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _read_rgb(path: pathlib.Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def real_from_folder(idc_sample_dir, tmp_path_factory):
    return _build_kaggle(tmp_path_factory.mktemp("tfds_folder"), idc_sample_dir.parent)


def test_real_sample_from_folder(real_from_folder, idc_sample_dir):
    builder, table = real_from_folder
    report = builder.info.metadata["build_report"]
    assert report == {
        "png_files_found": 979,
        "examples_written": 979,
        "border_patches_padded": 4,
        "class_folders_missing_or_empty": 0,
        "patients": 1,
    }
    assert len(table["label"]) == 979
    assert int(table["label"].sum()) == 207
    assert set(table["patient"].tolist()) == {8863}
    # Coordinates are 1-based corners of the 50-pixel grid, as the file names say.
    assert np.all((table["x"] - 1) % 50 == 0) and np.all((table["y"] - 1) % 50 == 0)
    border = np.flatnonzero((table["height"] < 50) | (table["width"] < 50))
    sizes = sorted(zip(table["height"][border].tolist(), table["width"][border].tolist()))
    assert sizes == [(35, 50), (35, 50), (35, 50), (50, 41)]
    assert np.all(table["y"][table["height"] == 35] == 2301)
    assert np.all(table["x"][table["width"] == 41] == 2751)
    # Pixels equal an independent PIL decode; the border patches are padded with white.
    for row in list(border) + [0, 500, 978]:
        name = table["file_name"][row]
        expected = _read_rgb(idc_sample_dir / str(table["label"][row]) / name)
        h, w = expected.shape[:2]
        assert (h, w) == (table["height"][row], table["width"][row])
        np.testing.assert_array_equal(table["image"][row, :h, :w], expected)
        assert np.all(table["image"][row, h:] == 255) and np.all(table["image"][row, :, w:] == 255)


def test_real_sample_from_zip_with_nested_duplicate(real_from_folder, idc_sample_dir, tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / "archive.zip", "w") as archive:
        for path in sorted(idc_sample_dir.rglob("*.png")):
            rel = path.relative_to(idc_sample_dir.parent).as_posix()
            archive.write(path, rel)  # top level, as in the Kaggle zip
            archive.write(path, f"IDC_regular_ps50_idx5/{rel}")  # and the nested copy
        archive.writestr("8863/.DS_Store", b"\0\0")
    builder, table = _build_kaggle(tmp_path / "tfds", manual)
    report = builder.info.metadata["build_report"]
    assert report["png_files_found"] == 2 * 979
    assert report["duplicate_copies_ignored"] == 979
    assert report["examples_written"] == 979
    assert report["skipped_stray_file"] == 1
    _, from_folder = real_from_folder
    for column in ("label", "patient", "x", "y", "height", "width", "file_name"):
        np.testing.assert_array_equal(table[column], from_folder[column])
    np.testing.assert_array_equal(np.asarray(table["image"]), np.asarray(from_folder["image"]))


def test_bad_inputs_are_counted_never_fatal(tmp_path):
    rng = np.random.default_rng(0)
    manual = tmp_path / "manual"
    good = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (50, 50), dtype=np.uint8)
    rgba = rng.integers(0, 256, (50, 50, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque: converting must keep the RGB values
    files = {
        "10/0/10_idx5_x1_y1_class0.png": _png(good),
        "10/0/10_idx5_x51_y1_class0.png": _png(good)[:200],  # truncated
        "10/0/10_idx5_x101_y1_class0.png": b"not a png at all",  # corrupt
        "10/1/10_idx5_x1_y51_class1.png": _png(gray),
        "10/1/10_idx5_x51_y51_class1.png": _png(rgba),
        "10/1/10_idx5_x101_y51_class0.png": _png(good),  # label folder disagrees
        "10/1/scan_0001.png": _png(good),  # unparsable name
        "10/.DS_Store": b"\0",
        "11/0/11_idx5_x1_y1_class0.png": _png(good[:30]),  # border patch, 30 high
    }
    for rel, data in files.items():
        (manual / rel).parent.mkdir(parents=True, exist_ok=True)
        (manual / rel).write_bytes(data)
    (manual / "11" / "1").mkdir()  # empty class folder
    builder, table = _build_kaggle(tmp_path / "tfds", manual)
    assert builder.info.metadata["build_report"] == {
        "png_files_found": 8,
        "skipped_corrupt_png": 2,
        "skipped_folder_disagrees_with_name": 1,
        "skipped_unparsable_name": 1,
        "skipped_stray_file": 1,
        "converted_l_to_rgb": 1,
        "converted_rgba_to_rgb": 1,
        "border_patches_padded": 1,
        "class_folders_missing_or_empty": 1,
        "examples_written": 4,
        "patients": 2,
    }
    by_name = {n: i for i, n in enumerate(table["file_name"])}
    np.testing.assert_array_equal(
        table["image"][by_name["10_idx5_x1_y51_class1.png"]], np.repeat(gray[..., None], 3, -1)
    )
    np.testing.assert_array_equal(
        table["image"][by_name["10_idx5_x51_y51_class1.png"]], rgba[..., :3]
    )
    border = by_name["11_idx5_x1_y1_class0.png"]
    assert (table["height"][border], table["width"][border]) == (30, 50)
    np.testing.assert_array_equal(table["image"][border, :30], good[:30])
    assert np.all(table["image"][border, 30:] == 255)


@pytest.mark.parametrize("make_empty", [False, True])
def test_missing_download_says_what_where_and_how_to_avoid_it(tmp_path, make_empty):
    manual = tmp_path / "manual"
    if make_empty:
        manual.mkdir()
    config = default.data_config(
        dataset="kaggle_idc", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual)
    )
    with pytest.raises(sources.ManualDownloadMissingError) as error:
        dataset.load_dataset(config)
    message = str(error.value)
    assert "kaggle.com/datasets/paultimothymooney/breast-histopathology-images" in message
    assert str(manual) in message
    assert "--config.data.dataset=idc_sample" in message


def test_auto_picks_the_kaggle_set_when_found_and_the_shipped_sample_otherwise(tmp_path):
    config = default.data_config(
        dataset="auto", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "manual")
    )
    choice = dataset.choose(config)
    assert choice.name == "idc_sample" and choice.source_dir == EMBEDDED_SAMPLE
    assert "no Kaggle download in" in choice.selection and str(EMBEDDED_SAMPLE) in choice.selection
    patient = EMBEDDED_SAMPLE / "9076"
    shutil.copytree(patient, tmp_path / "manual" / "9076")
    choice = dataset.choose(config)
    assert choice.name == "kaggle_idc" and choice.source_dir == tmp_path / "manual"
    assert "download was found" in choice.selection
    dataset.prepare(config)
    shutil.rmtree(tmp_path / "manual")  # prepared: the download may go
    choice = dataset.choose(config)
    assert choice.name == "kaggle_idc" and "is prepared in" in choice.selection


def test_the_shipped_sample_builds_through_the_sample_config(tmp_path):
    config = default.data_config(dataset="idc_sample", data_dir=str(tmp_path))
    data = dataset.load_dataset(config)
    report = data.info.build_report
    num_files = len(list(EMBEDDED_SAMPLE.rglob("*.png")))
    assert report["png_files_found"] == report["examples_written"] == num_files == 3308
    assert report["patients"] == 171 and report["border_patches_padded"] == 33
    assert set(report) <= {
        "png_files_found",
        "examples_written",
        "border_patches_padded",
        "class_folders_missing_or_empty",
        "patients",
    }
    counts = data.info.counts
    assert [counts[s]["patients"] for s in ("train", "validation", "test")] == [119, 26, 26]
    assert sum(counts[s]["patches"] for s in counts) == 3308
    assert data.info.name == "idc_sample" and data.info.source == str(EMBEDDED_SAMPLE)
    assert data.info.data_dir.endswith("kaggle_idc/sample/1.1.0")


def _copy_patients(patients, destination: pathlib.Path) -> None:
    for patient in patients:
        shutil.copytree(EMBEDDED_SAMPLE / patient, destination / patient)


def test_a_preparation_from_other_files_is_rebuilt_not_reused(tmp_path, caplog):
    """The trap of issue 14: one data_dir, two manual folders, the old patches loaded silently."""
    first, second = tmp_path / "first", tmp_path / "second"
    _copy_patients(["9076"], first)
    _copy_patients(["9076", "9226", "8914"], second)
    _, table = _build_kaggle(tmp_path / "tfds", first)
    assert set(table["patient"].tolist()) == {9076}
    _, table = _build_kaggle(tmp_path / "tfds", second)
    assert set(table["patient"].tolist()) == {9076, 9226, 8914}
    assert "rebuilding it from them" in caplog.text
    # A changed file changes the fingerprint too: rebuilt again, with the new pixels.
    caplog.clear()
    changed = next((second / "9226").rglob("*.png"))
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    builder, _ = _build_kaggle(tmp_path / "tfds", second)
    assert "rebuilding it from them" in caplog.text
    assert builder.info.metadata["source_fingerprint"] == sources.fingerprint(second)
    # The same files again: the preparation is reused, silently.
    caplog.clear()
    _build_kaggle(tmp_path / "tfds", second)
    assert "rebuilding" not in caplog.text


@pytest.mark.parametrize(
    "patients, protocol, message",
    [
        (["9076"], "patient", "validation holds 0 patient(s), 0 patches"),
        (["9076", "9226", "8914", "12894"], "patient", "fewer than 2 patients"),
        (["9076", "9226", "8914", "12894"], "random_patch", None),
    ],
)
def test_splits_that_cannot_be_evaluated_are_refused(tmp_path, patients, protocol, message):
    _copy_patients(patients, tmp_path / "manual")
    config = default.data_config(
        dataset="kaggle_idc",
        data_dir=str(tmp_path / "tfds"),
        manual_dir=str(tmp_path / "manual"),
        split=protocol,
    )
    if message is None:  # 88 patches of both classes shuffled: every split has both classes
        data = dataset.load_dataset(config)
        assert min(data.validation.num_positives, data.test.num_positives) > 0
        return
    with pytest.raises(ValueError, match="cannot be evaluated") as error:
        dataset.load_dataset(config)
    assert message in str(error.value)


def test_builds_and_loads_without_tensorflow(tmp_path):
    manual = tmp_path / "manual"
    _copy_patients(sorted(p.name for p in EMBEDDED_SAMPLE.iterdir())[:14], manual)
    # etils/TFDS treat `"tensorflow" in sys.modules` as "TensorFlow is loaded", so the usual
    # sys.modules["tensorflow"] = None breaks TFDS's own import. An import hook that fails to load
    # any tensorflow module is what a machine without TensorFlow looks like to TFDS.
    script = textwrap.dedent(
        f"""
        import importlib.abc, importlib.machinery, sys

        class NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    return importlib.machinery.ModuleSpec(name, self)
            def create_module(self, spec):
                raise ImportError("no TensorFlow here")
            def exec_module(self, module):
                raise ImportError("no TensorFlow here")

        sys.meta_path.insert(0, NoTensorFlow())
        try:
            import tensorflow
            raise SystemExit("tensorflow imported")
        except ImportError:
            pass
        import input_pipeline
        from configs import default
        ds = input_pipeline.load_dataset(default.data_config(
            dataset="kaggle_idc", data_dir={str(tmp_path / "tfds")!r}, manual_dir={str(manual)!r}))
        batch = next(input_pipeline.iterate_batches(ds.train, global_batch_size=8))
        assert batch["image"].shape == (8, 50, 50, 3)
        assert sys.modules.get("tensorflow") is None
        print("OK", len(ds.train) + len(ds.validation) + len(ds.test))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"OK {len(list(manual.rglob('*.png')))}" in result.stdout
