"""The benchmark scripts (benchmarks/): they run, write the shared JSON format, and compare right.

Each script runs once, as a subprocess, at a tiny setting (alpha 0.25, 32 px, batch 8, 2 steps),
MobileNetV1 only: the compiled steps are the trainer's, tested in test_train.py, so what is checked
here is the benchmark's own plumbing. The subprocesses inherit conftest's compilation cache, and
the paper experiment reuses the train step that bench_jax compiled. No timed asserts: speeds are
only required to be positive and finite.
"""

import json
import math
import pathlib
import runpy
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_data  # noqa: E402
import compare  # noqa: E402

from mobilenets.cpu import kernels as cpu_kernels  # noqa: E402
from tests.commands import subprocess_environment  # noqa: E402
from tests.conftest import EMBEDDED_SAMPLE  # noqa: E402

TINY = (
    "--models", "mobilenet_v1", "--alpha", "0.25", "--steps", "2", "--warmup", "1",
    "--window", "1", "--feed_batches", "2", "--base_patches", "40",
)  # fmt: skip
GRID = ("--sizes", "32", "--batches", "8", "--epoch_images", "24")
PAPER = (
    "--paper_experiment", "--paper_image_size", "32", "--paper_batch_size", "8",
    "--paper_images", "48",
)  # fmt: skip
# Every row of either framework has these, numbers or null (see compare.ROW_KEYS).
POSITIVE_KEYS = (
    "train_images_per_s",
    "train_step_ms",
    "eval_images_per_s",
    "compile_s",
    "feed_images_per_s",
    "epoch_s",
)


def run_script(script: str, *args: str, tmp_path: pathlib.Path) -> dict:
    out = tmp_path / f"{script}.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--out", str(out)],
        cwd=REPO,
        env=subprocess_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def jax_results(results_dir) -> dict:
    return run_script("bench_jax.py", *TINY, *GRID, tmp_path=results_dir)


@pytest.fixture(scope="module")
def torch_results(results_dir) -> dict:
    pytest.importorskip("torch")
    return run_script("bench_torch.py", *TINY, *GRID, tmp_path=results_dir)


@pytest.fixture(scope="module")
def paper_results(results_dir, jax_results) -> dict:
    # After jax_results: the same 32 px, batch 8 train step, read from the compilation cache.
    return run_script("bench_jax.py", *TINY, *PAPER, tmp_path=results_dir)


def check_meta(meta: dict, platform: str) -> None:
    assert meta["platform"] == platform
    assert meta["device"]
    assert meta["date_utc"][:2] == "20"
    assert meta["cpu_count"] >= 1
    assert meta["load_average_before"] >= 0 and meta["load_average_after"] >= 0


def check_row(row: dict, framework: str) -> None:
    assert set(compare.ROW_KEYS) <= set(row)
    assert row["framework"] == framework
    assert (row["model"], row["image_size"], row["batch_size"]) == ("mobilenet_v1", 32, 8)
    assert row["dtype"] == "float32"  # the CPU default
    for key in POSITIVE_KEYS:
        assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    # Derived consistently: images/s is the batch over the median step time.
    assert row["train_images_per_s"] == pytest.approx(8 / (row["train_step_ms"] / 1e3))
    assert row["train_step_ms"] == pytest.approx(float(np.median(row["train_step_ms_windows"])))
    assert row["epoch_images"] == 24  # 3 whole batches of 8
    assert row["feed_host_images_per_s"] > 0
    assert row["peak_memory_bytes"] is None  # no device memory counter on a CPU


def test_bench_jax_writes_the_shared_format(jax_results):
    assert jax_results["benchmark"] == "jax"
    check_meta(jax_results["meta"], "cpu")
    assert jax_results["meta"]["versions"]["jax"]
    (row,) = jax_results["rows"]
    check_row(row, "jax")
    assert row["alpha"] == 0.25
    # What "auto" resolves to on a CPU, and whether the native kernels could be built here.
    native = ", native CPU kernels" if cpu_kernels.load() else ""
    assert row["variant"] == "nnx, cpu path" + native
    assert row["compile_s"] == pytest.approx(
        row["lower_s"] + row["compile_train_s"] + row["compile_eval_s"]
    )
    assert row["xla_step_memory_bytes"] > 0
    assert row["multiply_adds_per_image"] > 0


def test_bench_torch_writes_the_shared_format(torch_results):
    assert torch_results["benchmark"] == "torch"
    check_meta(torch_results["meta"], "cpu")
    assert torch_results["meta"]["versions"]["torch"]
    (row,) = torch_results["rows"]
    check_row(row, "torch")
    assert row["variant"] == "eager (hand-written)"  # the CPU defaults


def test_paper_experiment_trains_five_epochs(paper_results):
    assert paper_results["benchmark"] == "paper_experiment"
    (row,) = paper_results["rows"]
    assert row["epochs"] == len(row["epoch_history"]) == 5
    assert row["images_per_epoch"] == 48
    assert sum(epoch["images"] for epoch in row["epoch_history"]) == 5 * 48
    assert row["train_s"] == pytest.approx(sum(e["wall_s"] for e in row["epoch_history"]))
    assert 0 < row["feed_fraction"] < 1
    assert all(math.isfinite(epoch["loss"]) for epoch in row["epoch_history"])
    summary = paper_results["summary"]
    assert summary["train_s"] == pytest.approx(row["train_s"])
    assert summary["goal_met"] is None  # only the full-size run is judged against 60 s
    assert "tiled" in paper_results["meta"]["notes"][0]  # 40 decoded, tiled to 48


def test_combined_table_ratio_is_ours_over_best_peer(jax_results, torch_results, paper_results):
    markdown = compare.combined_markdown([jax_results, torch_results, paper_results])
    ours = jax_results["rows"][0]["train_images_per_s"]
    peer = torch_results["rows"][0]["train_images_per_s"]
    ratio_line = next(line for line in markdown.splitlines() if line.startswith("| mobilenet_v1"))
    assert f"{ours / peer:.2f}x" in ratio_line
    assert "### The paper's experiment" in markdown


def test_ratio_picks_the_best_peer_variant_and_marks_missing_values():
    def row(framework, variant, train, eval_=None):
        values = dict.fromkeys(compare.ROW_KEYS)
        values.update(
            framework=framework,
            variant=variant,
            model="mobilenet_v2",
            image_size=96,
            batch_size=1024,
            dtype="bfloat16",
            train_images_per_s=train,
            eval_images_per_s=eval_,
        )
        return values

    rows = [
        row("jax", "nnx", 60_000.0, 200_000.0),
        row("torch", "eager", 36_000.0, 100_000.0),
        row("torch", "compile", 50_000.0, None),
    ]
    (line,) = compare.ratio_rows(rows)
    assert line[3:6] == ["60,000 (nnx)", "50,000 (compile)", "1.20x"]
    assert line[6:9] == ["200,000 (nnx)", "100,000 (eager)", "2.00x"]
    table = compare.rows_table(rows)
    assert "n/a" in table  # unmeasured values (memory, epoch) are not printed as numbers


def test_results_from_two_devices_get_separate_tables():
    a = {"benchmark": "jax", "meta": {"device": "NVIDIA H200"}, "rows": []}
    b = {"benchmark": "torch", "meta": {"device": "AMD EPYC"}, "rows": []}
    markdown = compare.combined_markdown([a, b])
    assert "## NVIDIA H200" in markdown and "## AMD EPYC" in markdown


def test_bench_torch_without_torch_exits_cleanly(tmp_path, monkeypatch):
    out = tmp_path / "torch.json"
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    # The script sets JAX_PLATFORMS and extends sys.path: restored after the test.
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "argv", ["bench_torch.py", "--out", str(out)])
    runpy.run_path(str(BENCH / "bench_torch.py"), run_name="__main__")
    written = json.loads(out.read_text())
    assert written["skipped"] == "torch is not installed" and written["rows"] == []


def test_sample_split_tiles_the_real_patches():
    split, note = bench_data.sample_split(50, base_patches=20)
    assert split.image.shape == (50, 50, 50, 3) and split.image.dtype == np.uint8
    np.testing.assert_array_equal(split.image[20:40], split.image[:20])
    np.testing.assert_array_equal(split.label[40:], split.label[:10])
    assert "tiled x2.5" in note and "real patches of data/idc_sample" in note
    first = sorted(EMBEDDED_SAMPLE.rglob("*.png"))[0]  # the sample's first file, decoded by PIL
    with Image.open(first) as image:
        pixels = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(split.image[0, : pixels.shape[0], : pixels.shape[1]], pixels)
    assert split.label[0] == int(first.parent.name)
    assert len(split.head(7)) == 7
