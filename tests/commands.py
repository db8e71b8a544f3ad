"""Runs the project's command-line programs in a subprocess, as a user would, on the CPU."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# conftest.py adds these to XLA_FLAGS for the whole suite (it says why).
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0",)


def subprocess_environment(
    device_count: int | None = None, *, test_flags: bool = True, **extra: str
) -> dict[str, str]:
    """This process's environment for a child on the CPU, with `device_count` virtual devices (any
    count inherited from the caller dropped), and without TEST_XLA_FLAGS when `test_flags` is False
    (a child that measures the compiled code as users run it).

    The device count goes through JAX_NUM_CPU_DEVICES, not XLA_FLAGS: XLA stops reading XLA_FLAGS
    at the first entry without dashes (such as `intra_op_parallelism_threads=1`).
    """
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags = [flag for flag in flags if not flag.startswith(DEVICE_COUNT_FLAG)]
    if not test_flags:
        flags = [flag for flag in flags if flag not in TEST_XLA_FLAGS]
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags), **extra}
    environment.pop("JAX_NUM_CPU_DEVICES", None)
    if device_count is not None:
        environment["JAX_NUM_CPU_DEVICES"] = str(device_count)
    return environment


def run_program(
    script: str, *args: str, timeout: int = 300, test_flags: bool = True
) -> subprocess.CompletedProcess:
    """`python <script> <args>` from the repository root; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, script, *map(str, args)],
        cwd=REPO,
        env=subprocess_environment(test_flags=test_flags),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
