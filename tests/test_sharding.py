"""One code path for 1 device, N devices and N processes: the same training step on each.

tests/sharding_probe.py computes, on meshes of 1, 2 and 8 (virtual CPU) devices and on two
processes joined by jax.distributed, the forward loss, the gradients, one Adam update and a
three-step loss trajectory of the same tiny model on the same global batches.

What is equal, and to what precision:
- In float64 every layout computes the same mathematics; only the order of the float sums
  differs (BatchNorm statistics, gradients and the loss are summed per device, then across
  devices). Rounding is 2^-53 ~ 1e-16 relative. Through a network, its backward pass and three
  Adam steps such differences grow, but by orders of magnitude less than the 1e-9 allowed here,
  while a real sharding error (statistics over one device's rows, a gradient not summed over
  devices, a batch assembled in the wrong order) changes results at 1e-3 or more.
- In float32 rounding is 2^-24 ~ 6e-8, and near a ReLU6 threshold it switches units on or off,
  which changes gradients discretely: a float32 gradient or trajectory comparison has no bound
  that holds on every machine. The float32 forward loss is continuous in the rounding and is
  compared against a null measured in the test: the same one-device computation with the rows of
  the batch permuted, the same mathematics summed in another order.
The network is the reference implementation (it compiles fastest; which formulation of the layers
runs is tested in test_cpu_path.py, and the trainer's code path is the same for both).
"""

import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.commands import subprocess_environment
from tests.test_train import REPO

PROBE = REPO / "tests" / "sharding_probe.py"
FLOAT64_TOLERANCE = 1e-9
NULL_FACTOR = 10
UNIT_ROUNDOFF32 = 2.0**-24


def _environment(device_count: int | None = None) -> dict:
    return subprocess_environment(device_count, JAX_ENABLE_X64="1", MOBILENETS_CPU_KERNELS="0")


def _read(path) -> dict[str, dict[str, np.ndarray]]:
    data = np.load(path)
    layouts: dict[str, dict[str, np.ndarray]] = {}
    for key in data:
        layout, quantity = key.split("/")
        layouts.setdefault(layout, {})[quantity] = data[key]
    return layouts


@pytest.fixture(scope="module")
def one_process(data_dir, tmp_path_factory):
    """The probe's numbers on 1, 2 and 8 devices of one process, and the permuted nulls."""
    output = tmp_path_factory.mktemp("probe") / "one_process.npz"
    env = _environment(device_count=8)
    result = subprocess.run(
        [sys.executable, str(PROBE), str(data_dir), str(output)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return _read(output)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(data_dir, tmp_path_factory, one_process):
    """The probe's numbers on two processes of one CPU device each."""
    output = tmp_path_factory.mktemp("probe") / "two_processes.npz"
    coordinator = f"localhost:{_free_port()}"
    env = _environment()
    processes = [
        subprocess.Popen(
            [sys.executable, str(PROBE), str(data_dir), str(output), coordinator, "2", str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for process in processes:
        log, _ = process.communicate(timeout=900)
        assert process.returncode == 0, log[-3000:]
    return _read(output)


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(np.ravel(got - want)) / np.linalg.norm(np.ravel(want)))


def assert_same_step(layout: dict, reference: dict, nulls: list[dict]) -> None:
    for quantity in ("loss", "gradients", "update", "losses"):
        difference = relative_difference(layout[quantity], reference[quantity])
        assert difference <= FLOAT64_TOLERANCE, (quantity, difference)
    assert np.linalg.norm(reference["update"]) > 0 and np.all(np.isfinite(reference["losses"]))
    null = max(abs(float(n["loss32"] - reference["loss32"])) for n in nulls)
    bound = NULL_FACTOR * null + 8 * UNIT_ROUNDOFF32 * abs(float(reference["loss32"]))
    assert abs(float(layout["loss32"] - reference["loss32"])) <= bound, (null, bound)


@pytest.mark.parametrize("layout", ["2_devices", "8_devices"])
def test_devices_of_one_process_compute_the_same_step_as_one_device(one_process, layout):
    nulls = [one_process[k] for k in one_process if k.startswith("null_")]
    assert_same_step(one_process[layout], one_process["1_device"], nulls)


def test_two_processes_compute_the_same_step_as_one_process(one_process, two_processes):
    nulls = [one_process[k] for k in one_process if k.startswith("null_")]
    assert_same_step(two_processes["2_processes"], one_process["1_device"], nulls)


def test_float64_tolerance_lies_between_rounding_and_a_real_error(one_process):
    """The permuted nulls (rounding only) sit far below 1e-9; one changed row, far above."""
    reference = one_process["1_device"]
    for name in (k for k in one_process if k.startswith("null_")):
        for quantity in ("gradients", "update", "losses"):
            difference = relative_difference(one_process[name][quantity], reference[quantity])
            assert difference < FLOAT64_TOLERANCE / 100, (name, quantity, difference)
    # Consecutive steps' losses differ by far more than the tolerance: it cannot hide a change.
    losses = reference["losses"]
    assert np.min(np.abs(np.diff(losses)) / losses[1:]) > 1e3 * FLOAT64_TOLERANCE
