"""Runs the project's command-line programs in a subprocess, as a user would, on the CPU."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_program(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python <script> <args>` from the repository root; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, script, *map(str, args)],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
