"""What every benchmark script shares: how a step is timed, what is recorded of the machine and
the software, and the command-line grid of `bench_jax.py` and `bench_torch.py`.

- `median_step_seconds`: the first call timed alone (compilation, autotuning, first
  allocations), the rest of the warm-up untimed, then the median over windows of `window` calls,
  each window closed by a synchronisation (`jax.block_until_ready`, `torch.cuda.synchronize`), so
  that the host may dispatch call i+1 while the device runs call i, as a training loop does.
  `timed` times one call of anything (a build, a load).
- `host_meta`, `cpu_model_name`, `versions`, `timing_note`: where, when, on what and how a result
  was measured, for the JSON of `compare.py`'s format.
- `argument_parser`, `grid_parser`, `parse_grid`: the scripts' command lines; the grid (models,
  sizes, batches, width, steps, warm-up, window, whole epoch, feeding) is the same for both
  frameworks, with the same defaults per device.

Nothing here imports JAX, PyTorch or the project: a script sets its environment
(`JAX_PLATFORMS`) and `sys.path` first, then imports this.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

BENCH_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# The grid of issue 7. GPU: batch 256 at 224 px and 1024 below; CPU: batch 64.
MODELS = ("mobilenet_v1", "mobilenet_v2")
GPU_BATCH_FOR_SIZE = {224: 256, 96: 1024, 50: 1024}
CPU_BATCH = 64


# ----------------------------------------------------------------------------- timing


class StepTiming(NamedTuple):
    median_s: float  # the median over windows of seconds per call
    window_s: list[float]  # seconds per call of each window
    first_s: float  # the first call alone, synchronised
    carry: Any  # what the last call returned
    minor_page_faults_per_call: float  # in the timed windows


def median_step_seconds(
    advance: Callable[[Any], Any],
    carry: Any = None,
    *,
    synchronize: Callable[[Any], Any],
    warmup: int,
    steps: int,
    window: int = 1,
) -> StepTiming:
    """Median seconds per call of `carry = advance(carry)` over windows of `window` calls.

    `warmup` calls (at least one) come first, untimed but for the first; then `steps // window`
    windows (at least one), each closed by `synchronize(carry)`, so asynchronous dispatch is timed
    to completion while the calls inside a window overlap host dispatch and device work. Also
    counts the process's minor page faults per call in the timed windows: XLA:CPU remapping its
    scratch memory every step shows there (mobilenets/cpu/host_memory.py).
    """
    start = time.perf_counter()
    carry = advance(carry)
    synchronize(carry)
    first_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        carry = advance(carry)
    synchronize(carry)
    per_call = []
    faults_before = _minor_page_faults()
    for _ in range(max(1, steps // window)):
        start = time.perf_counter()
        for _ in range(window):
            carry = advance(carry)
        synchronize(carry)
        per_call.append((time.perf_counter() - start) / window)
    faults = _minor_page_faults() - faults_before
    return StepTiming(
        statistics.median(per_call), per_call, first_s, carry, faults / (len(per_call) * window)
    )


def _minor_page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    """(what `function()` returns, the seconds it took)."""
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def timing_note(warmup: int, window: int) -> str:
    """How the step times of a results file were taken (its `meta.timing`)."""
    return f"median of windows of {window} steps after {warmup} warm-up steps"


# ----------------------------------------------------------------------------- what and where


def cpu_model_name() -> str:
    """`lscpu`'s "Model name" (from /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_meta() -> dict[str, Any]:
    """Where and when: date, host CPU, cores, load average (other processes distort CPU runs)."""
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_model": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg()[0],
        "python": platform.python_version(),
        "argv": sys.argv[1:],
    }


def write_results(results: dict[str, Any], out: str | os.PathLike, table: str) -> None:
    """Records the load average at the end in `results["meta"]`, writes the JSON to `out` and
    prints the markdown `table` and where the JSON went."""
    results["meta"]["load_average_after"] = os.getloadavg()[0]
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print(f"wrote {path}")


def versions(packages: Iterable[str]) -> dict[str, str | None]:
    """The installed version of each package (None where it is not installed)."""
    found = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


# ----------------------------------------------------------------------------- command lines


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring's first line as the description."""
    return argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )


def grid_parser(
    doc: str, *, on_gpu: bool, cpu_warmup: int, full_epoch_images: int
) -> argparse.ArgumentParser:
    """The arguments bench_jax.py and bench_torch.py share, with their defaults on this device.

    `cpu_warmup`: warm-up steps on a CPU (5 on a GPU); `full_epoch_images`: the whole epoch's
    patches on a GPU (512 on a CPU). Each script adds its own arguments (dtype, variants, --out).
    """
    parser = argument_parser(doc)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--sizes", nargs="+", type=int, default=[224, 96, 50] if on_gpu else [50, 96]
    )
    parser.add_argument(
        "--batches",
        nargs="+",
        type=int,
        default=None,
        help="one per size, or one for all (default: 64 on CPU; 256 at 224 px, else 1024)",
    )
    parser.add_argument("--alpha", type=float, default=1.0, help="width multiplier")
    parser.add_argument("--steps", type=int, default=30 if on_gpu else 5, help="timed steps")
    parser.add_argument(
        "--warmup", type=int, default=5 if on_gpu else cpu_warmup, help="untimed steps first"
    )
    parser.add_argument("--window", type=int, default=5 if on_gpu else 1, help="steps per window")
    parser.add_argument(
        "--epoch_images",
        type=int,
        default=full_epoch_images if on_gpu else 512,
        help="patches in the timed whole epoch (0: skip it)",
    )
    parser.add_argument("--feed_batches", type=int, default=100 if on_gpu else 20)
    parser.add_argument(
        "--base_patches",
        type=int,
        default=None,
        help="real sample patches decoded (default: all); the in-memory sets tile them",
    )
    return parser


def parse_grid(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, on_gpu: bool
) -> argparse.Namespace:
    """Parses `argv`, then gives every size its batch (`--batches`: none, one, or one per size)."""
    args = parser.parse_args(argv)
    if args.batches is None:
        args.batches = [
            GPU_BATCH_FOR_SIZE.get(size, 1024) if on_gpu else CPU_BATCH for size in args.sizes
        ]
    elif len(args.batches) == 1:
        args.batches = args.batches * len(args.sizes)
    if len(args.batches) != len(args.sizes):
        parser.error("--batches takes one value, or one per --sizes value")
    return args
