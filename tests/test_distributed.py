"""Two real processes of main.py on localhost (jax.distributed, CPU collectives over gloo).

End to end and minutes long, hence `heavy`. That two processes compute what one does is tested
step by step in test_sharding.py; here the whole program runs: both processes finish, cover the
same steps and examples, and write every output once.
"""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.commands import subprocess_environment
from tests.test_train import REPO, TINY_OVERRIDES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir, data_dir, log_dir, *extra, num_processes=2, port=None):
    """Starts `num_processes` main.py processes (1 CPU device each); returns the Popen objects."""
    port = port or _free_port()
    processes = []
    for process_id in range(num_processes):
        command = [
            sys.executable,
            "main.py",
            "--config=configs/v1.py",
            f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}",
            *TINY_OVERRIDES,
            *extra,
        ]
        if num_processes > 1:
            command += [
                f"--config.distributed.coordinator_address=localhost:{port}",
                f"--config.distributed.num_processes={num_processes}",
                f"--config.distributed.process_id={process_id}",
            ]
        log = open(log_dir / f"process_{process_id}.log", "w")  # noqa: SIM115
        processes.append(
            subprocess.Popen(
                command,
                cwd=REPO,
                env=subprocess_environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return processes


@pytest.mark.heavy
def test_two_processes_run_main_end_to_end(tmp_path, data_dir):
    extra = ("--config.num_epochs=1",)
    single = _launch(tmp_path / "single", data_dir, tmp_path, *extra, num_processes=1)[0]
    assert single.wait(timeout=600) == 0, (tmp_path / "process_0.log").read_text()[-3000:]
    (tmp_path / "process_0.log").rename(tmp_path / "single.log")

    processes = _launch(tmp_path / "multi", data_dir, tmp_path, *extra)
    for i, process in enumerate(processes):
        assert process.wait(timeout=600) == 0, (tmp_path / f"process_{i}.log").read_text()[-3000:]

    one = json.loads((tmp_path / "single" / "summary.json").read_text())
    two = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["devices"] == 2
    # The same global batches and the same examples evaluated, each exactly once.
    assert two["steps"] == one["steps"]
    assert two["test"]["num_examples"] == one["test"]["num_examples"]
    assert two["final_validation"]["num_examples"] == one["final_validation"]["num_examples"]
    for summary in (one, two):
        assert np.isfinite(summary["test"]["loss"]) and 0 <= summary["test"]["roc_auc"] <= 1
    # Outputs are written once, by process 0.
    log_lines = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in log_lines]
    assert steps == sorted(steps)


@pytest.mark.heavy
def test_a_dead_worker_fails_the_run_promptly(tmp_path, data_dir):
    extra = ("--config.num_epochs=100", "--config.distributed.heartbeat_timeout_s=10")
    survivor, victim = _launch(tmp_path / "run", data_dir, tmp_path, *extra)
    log = tmp_path / "process_0.log"
    deadline = time.time() + 300
    while "steps/s" not in log.read_text() and time.time() < deadline:
        assert survivor.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    victim.kill()
    killed_at = time.time()
    try:
        returncode = survivor.wait(timeout=120)
    finally:
        survivor.kill()
    assert returncode != 0
    assert time.time() - killed_at < 120
    assert "another process of this run failed or was killed" in log.read_text()
