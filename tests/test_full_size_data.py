"""The input pipeline's memory on large data sets (benchmarks/full_size_data.py measures it at
full size): the decoded table put in order in place, splits read out of the .npy cache without
mapping it, a large source built in a child process, and the benchmark's stand-in download.
"""

import importlib.util
import pathlib
import zipfile

import numpy as np
import pytest

from configs import default
from input_pipeline import dataset, decoded_cache
from tests.conftest import EMBEDDED_SAMPLE

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_rows_are_put_in_order_in_place():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (500, 4, 4, 3), dtype=np.uint8)
    for order in (rng.permutation(500), np.arange(500), np.roll(np.arange(500), 7)):
        permuted = rows.copy()
        decoded_cache._permute_rows_in_place(permuted, order)
        np.testing.assert_array_equal(permuted, rows[order])


def test_splits_are_read_from_the_cache_file_row_run_by_row_run(tmp_path):
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, (300, 5, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", rows)
    mapped = np.load(tmp_path / "image.npy", mmap_mode="r")
    picks = (
        np.arange(300),
        np.array([4, 5, 6, 100, 2, 3, 299]),  # runs, out of order
        rng.permutation(300)[:120],
        np.array([], np.int64),
    )
    for rows_wanted in picks:
        got = decoded_cache._gather(mapped, rows_wanted)
        assert type(got) is np.ndarray and got.flags.owndata or len(rows_wanted) == 0
        np.testing.assert_array_equal(got, rows[rows_wanted])
    # A view into the map starts further into the file.
    np.testing.assert_array_equal(
        decoded_cache._gather(mapped[10:], np.array([0, 5])), rows[[10, 15]]
    )
    # Arrays in memory are indexed as usual.
    np.testing.assert_array_equal(decoded_cache._gather(rows, np.array([3, 1])), rows[[3, 1]])


def _copy_patients(names, manual):
    import shutil

    for name in names:
        shutil.copytree(EMBEDDED_SAMPLE / name, manual / name)


def test_a_large_source_is_built_in_a_child_process(tmp_path, monkeypatch):
    manual = tmp_path / "manual"
    _copy_patients(sorted(p.name for p in EMBEDDED_SAMPLE.iterdir())[:12], manual)
    monkeypatch.setattr(dataset, "BUILD_IN_CHILD_BYTES", 0)  # any source is large
    config = default.data_config(
        dataset="kaggle_idc", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual)
    )
    choice = dataset.prepare(config)
    assert choice.builder.is_prepared()
    report = choice.builder.info.metadata["build_report"]
    files = sum(1 for _ in manual.rglob("*.png"))
    assert report["examples_written"] == files
    assert len(dataset.load_table(choice.builder)["label"]) == files
    # An error in the child is raised in the parent, as it was raised there.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "archive.zip").write_bytes(b"not a zip")
    broken = default.data_config(
        dataset="kaggle_idc",
        data_dir=str(tmp_path / "tfds_broken"),
        manual_dir=str(tmp_path / "broken"),
    )
    with pytest.raises(zipfile.BadZipFile):
        dataset.prepare(broken)


def test_the_benchmarks_stand_in_holds_each_real_patch_under_new_patients(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "full_size_data", REPO / "benchmarks" / "full_size_data.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    patients = sorted(p.name for p in EMBEDDED_SAMPLE.iterdir())[:8]
    patches = bench.real_patches([EMBEDDED_SAMPLE / name for name in patients])
    held = bench.write_stand_in(patches, tmp_path / "archive.zip", copies=3, nested_fraction=0.25)
    assert held["patches"] == 3 * len(patches) and held["patients"] == 3 * 8
    assert held["nested_patients"] == 6  # a quarter of the 24 new patients
    with zipfile.ZipFile(tmp_path / "archive.zip") as archive:
        names = archive.namelist()
    nested = [name for name in names if name.startswith("IDC_regular_ps50_idx5/")]
    assert len(nested) == held["nested_copies"] and len(names) == held["patches"] + len(nested)
    first = sorted(patches)[0]
    patient = first.split("_")[0]
    copy = first.replace(patient, str(int(patient) + 2 * bench.PATIENT_STRIDE), 1)
    label = first[-5]
    with zipfile.ZipFile(tmp_path / "archive.zip") as archive:
        assert (
            archive.read(f"{int(patient) + 2 * bench.PATIENT_STRIDE}/{label}/{copy}")
            == (patches[first])
        )
