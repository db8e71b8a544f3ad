"""Every expected mistake at the door of main.py and reproduce.py ends in one line (two at most)
that says what is wrong and what to do, with exit status 2 and no traceback (trainer/cli.py).

Each case runs the program as a user would, in a subprocess; none gets as far as loading data or
compiling, so each takes the few seconds of Python's imports.
"""

import pytest

from tests.commands import run_program
from trainer import cli


def error_lines(result) -> list[str]:
    """The lines from the first `error:` on: what the user reads of the failure."""
    lines = result.stderr.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    return lines[first:]


def assert_one_clear_line(result, *expected: str, max_lines: int = 1) -> None:
    assert result.returncode == cli.EXIT_USER_ERROR, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result)
    assert len(lines) <= max_lines, lines
    for text in expected:
        assert text in " ".join(lines), (text, lines)


MAIN = ("main.py", "--config=configs/v1.py")


@pytest.mark.parametrize(
    "override, expected",
    [
        # A typo: the closest key by spelling.
        ("--config.num_epoch=1", ("'num_epoch'", "did you mean --config.num_epochs?")),
        # The right name under the wrong parent: the key where it lives.
        ("--config.model.image_size=50", ("did you mean --config.preprocess.image_size?",)),
        # A value of the wrong type: the type expected.
        ("--config.num_epochs=abc", ("--config.num_epochs=abc", "takes an integer")),
        ("--config.progress_bar=maybe", ("progress_bar takes True or False",)),
        # A value no run can use: the choices.
        ("--config.model.name=mobilenet_v4", ("mobilenet_v4", "choose one of mobilenet_v1")),
        ("--config.data.split=by_slide", ("'by_slide'", "random_patch")),
        ("--config.global_batch_size=0", ("global_batch_size=0", "at least 1")),
        ("--config=configs/resnet50.py --config.model.alpha=0.5", ("ResNet-50 has no width",)),
        ("--config.data.test_patients=8863;8914", ("test_patients='8863;8914'", "commas")),
        (
            "--config=configs/v1.py --config.preprocess.hed_jitter=0.01 "
            "--config.preprocess.hed_jitter_od=0.05",
            ("hed_jitter and hed_jitter_od: set one",),
        ),
    ],
)
def test_a_config_mistake_is_one_line_naming_the_fix(tmp_path, override, expected):
    config, *overrides = override.split() if override.startswith("--config=") else ("", override)
    command = ("main.py", config) if config else MAIN
    result = run_program(*command, f"--workdir={tmp_path / 'run'}", *overrides)
    assert_one_clear_line(result, *expected)
    assert not (tmp_path / "run").exists(), "nothing is written for a refused command"


def test_a_missing_config_file_lists_the_configs(tmp_path):
    result = run_program("main.py", "--config=configs/v9.py", f"--workdir={tmp_path}")
    assert_one_clear_line(result, "configs/v9.py: no such config file", "v1.py", "v2.py")


def test_a_missing_workdir_is_named(tmp_path):
    result = run_program(*MAIN)
    assert_one_clear_line(result, "--workdir is required")


def test_a_mistyped_flag_names_the_flag_it_meant(tmp_path):
    result = run_program(*MAIN, f"--workdr={tmp_path}")
    assert_one_clear_line(result, "unknown flag --workdr", "did you mean --workdir?")


def test_reproduce_without_the_kaggle_download_says_where_to_get_it(tmp_path):
    result = run_program(
        "reproduce.py",
        f"--workdir={tmp_path / 'experiment'}",
        "--config.data.dataset=kaggle_idc",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
    )
    assert_one_clear_line(
        result,
        "kaggle.com/datasets/paultimothymooney/breast-histopathology-images",
        "--config.data.manual_dir=",
        "--config.data.dataset=idc_sample",
        max_lines=2,
    )


@pytest.mark.parametrize(
    "flag, expected",
    [
        ("--models=mobilenet_v1,mobilenet_v9", ("--models: unknown mobilenet_v9", "resnet50")),
        ("--ablations=size_12", ("--ablations: unknown size_12", "epochs_15_cosine")),
        ("--best_config=configs/nope.py", ("--best_config=configs/nope.py: no such config file",)),
    ],
)
def test_reproduce_refuses_a_plan_it_cannot_run_before_training(tmp_path, flag, expected):
    result = run_program("reproduce.py", f"--workdir={tmp_path / 'experiment'}", flag)
    assert_one_clear_line(result, *expected)
    assert not (tmp_path / "experiment").exists()


def test_reproduce_report_only_of_an_unfinished_experiment_names_the_runs(tmp_path):
    result = run_program("reproduce.py", f"--workdir={tmp_path}", "--report_only")
    assert_one_clear_line(result, "unfinished runs", "mobilenet_v1_random_patch", "--report_only")
