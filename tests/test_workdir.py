"""One workdir, one run: the lock a live run holds (trainer/workdir_lock.py), and a resume with a
config that changes what the run computes refused (trainer/config_checks.py).

A lock is held by a small child process, so no test trains; the resume checks run on a workdir
that looks like a run with a checkpoint (config.json and a step folder), which is all the check
reads before anything is loaded.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from configs import default
from tests.commands import REPO, run_program, subprocess_environment
from tests.test_train import TINY_OVERRIDES
from tests.test_user_errors import error_lines
from trainer import cli, config_checks
from trainer.workdir_lock import LOCK_NAME, WorkdirLock


def hold_lock(workdir):
    """A child process that takes the workdir's lock and sleeps; returns once it holds it."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from trainer.workdir_lock import WorkdirLock
        WorkdirLock({str(workdir)!r}).acquire()
        print("held", flush=True)
        time.sleep(120)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=subprocess_environment(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "held"
    return child


@pytest.fixture
def holder(tmp_path):
    child = hold_lock(tmp_path / "run")
    yield child
    child.kill()
    child.wait()


def test_a_live_holder_refuses_a_second_run_and_a_release_lets_it_in(tmp_path, holder):
    lock = WorkdirLock(tmp_path / "run")
    with pytest.raises(cli.UserError, match=f"in use by a run in progress, pid {holder.pid}"):
        lock.acquire()
    assert not lock.held
    holder.kill()
    holder.wait()
    # Killed holding it: the file is still there, naming the dead process, and taken over.
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == holder.pid
    with lock:
        assert lock.held and lock.took_over["pid"] == holder.pid
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not lock.path.exists(), "a released lock leaves no file"
    with WorkdirLock(tmp_path / "run") as again:  # and a clean release is not 'taken over'
        assert again.took_over is None


def test_main_refuses_a_workdir_in_use_in_one_line(tmp_path, holder):
    result = run_program(
        "main.py", "--config=configs/v1.py", f"--workdir={tmp_path / 'run'}", *TINY_OVERRIDES
    )
    assert result.returncode == cli.EXIT_USER_ERROR, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 1 and "is in use by a run in progress" in lines[0], lines
    assert f"pid {holder.pid}" in lines[0] and "--workdir" in lines[0]


def test_main_takes_over_the_lock_of_a_sigkilled_run_and_says_so(tmp_path):
    child = hold_lock(tmp_path / "run")
    child.send_signal(signal.SIGKILL)
    child.wait()
    fake_run_with_checkpoint(tmp_path / "run", model={"alpha": 0.25})
    # Resumed with another alpha: refused after the takeover, so nothing is trained.
    result = run_program(
        "main.py",
        "--config=configs/v1.py",
        f"--workdir={tmp_path / 'run'}",
        "--config.model.alpha=0.5",
    )
    assert f"took over {tmp_path / 'run' / LOCK_NAME}" in result.stderr
    assert f"pid {child.pid}" in result.stderr and "no longer running" in result.stderr
    assert result.returncode == cli.EXIT_USER_ERROR
    assert not (tmp_path / "run" / LOCK_NAME).exists(), "released on the way out"


def fake_run_with_checkpoint(workdir, **changes):
    """A workdir as a run with a checkpoint leaves it: config.json and checkpoints/<step>/."""
    config = json.loads(json.dumps(default.get_config().to_dict()))
    for section, values in changes.items():
        config[section].update(values)
    (workdir / "checkpoints" / "8").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config))


def test_a_resume_with_another_model_is_refused_naming_the_keys(tmp_path):
    fake_run_with_checkpoint(tmp_path, model={"alpha": 0.25}, preprocess={"image_size": 32})
    result = run_program(
        "main.py",
        "--config=configs/v1.py",
        f"--workdir={tmp_path}",
        "--config.model.alpha=0.5",
        "--config.preprocess.image_size=32",
        "--config.num_epochs=7",  # may change: not named
    )
    assert result.returncode == cli.EXIT_USER_ERROR, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) == 2, lines
    assert "model.alpha: 0.25 -> 0.5" in lines[0] and "num_epochs" not in lines[0]
    assert "image_size" not in lines[0]
    assert "Only these may change on resume" in lines[1] and "num_epochs" in lines[1]


def test_what_may_change_on_resume():
    recorded = json.loads(json.dumps(default.get_config().to_dict()))
    config = default.get_config()
    config.num_epochs, config.log_every_steps, config.progress_bar = 9, 7, False
    config.data.manual_dir, config.distributed.num_processes = "/elsewhere", 2
    config.eval_bootstrap_resamples, config.model.implementation = 100, "reference"
    assert config_checks.resume_changes(recorded, config)[0] == []
    config.seed, config.data.split, config.eval_tta = 1, "random_patch", False
    refused, allowed = config_checks.resume_changes(recorded, config)
    assert sorted(refused) == [
        "data.split: 'patient' -> 'random_patch'",
        "eval_tta: True -> False",
        "seed: 0 -> 1",
    ]
    assert "num_epochs: 5 -> 9" in allowed
    # Under a schedule that spans the run, its length is part of what it computes.
    config = default.get_config()
    config.schedule, config.num_epochs = "warmup_cosine", 9
    recorded["schedule"] = "warmup_cosine"
    assert config_checks.resume_changes(recorded, config)[0] == ["num_epochs: 5 -> 9"]
    # A key the record lacks (added to the code since it ran) is not compared.
    del recorded["label_smoothing"]
    config.num_epochs, config.label_smoothing = 5, 0.1
    assert config_checks.resume_changes(recorded, config) == ([], [])


def test_every_key_that_may_change_exists():
    keys = set(config_checks.flat(default.get_config()))
    for key in config_checks.MAY_CHANGE_ON_RESUME:
        assert key in keys or any(k.startswith(key) for k in keys), key


@pytest.mark.heavy
def test_a_multi_process_run_on_a_workdir_in_use_stops_every_process(tmp_path, data_dir, holder):
    """Process 0 takes the lock for the run and tells the others: all stop, in one line each."""
    from tests.test_distributed import _launch

    processes = _launch(tmp_path / "run", data_dir, tmp_path, "--config.num_epochs=1")
    for process in processes:
        assert process.wait(timeout=300) == cli.EXIT_USER_ERROR
    first = (tmp_path / "process_0.log").read_text()
    other = (tmp_path / "process_1.log").read_text()
    assert f"is in use by a run in progress, pid {holder.pid}" in first, first[-2000:]
    assert "is in use by another run (process 0's log says which)" in other, other[-2000:]
    assert "Traceback" not in first + other
