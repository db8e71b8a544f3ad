"""The reproduction report: Table 1, figures 2 and 3, the leakage table, and the four runs.

The report path is tested on copies of one tiny trained run relabelled as the four runs, with
known, distinct test accuracies written in, so the leakage differences can be checked exactly.
"""

import json
import pathlib
import shutil

import pytest

import reproduce
from tests.commands import run_program
from tests.test_inference import trained_tiny_workdir
from tests.test_train import TINY_OVERRIDES, tiny_config
from trainer import paper

REPO = pathlib.Path(__file__).resolve().parents[1]
# Test accuracy written into each copied run: (model, split) -> accuracy.
PLANTED_TEST_ACCURACY = {
    ("mobilenet_v1", "random_patch"): 0.91,
    ("mobilenet_v1", "patient"): 0.84,
    ("mobilenet_v2", "random_patch"): 0.88,
    ("mobilenet_v2", "patient"): 0.79,
}


def copy_run(source: pathlib.Path, workdir: pathlib.Path, model: str, split: str, **summary):
    """A copy of `source` relabelled as the run (model, split), with summary fields replaced."""
    target = paper.run_directory(workdir, model, split)
    shutil.copytree(source, target)
    data = json.loads((target / "summary.json").read_text())
    data.update(model=model, split=split, **summary)
    data["test"] = {**data["test"], "accuracy": PLANTED_TEST_ACCURACY[model, split]}
    (target / "summary.json").write_text(json.dumps(data))
    config = json.loads((target / "config.json").read_text())
    config["model"]["name"], config["data"]["split"] = model, split
    (target / "config.json").write_text(json.dumps(config))
    return target


def four_copies(source, workdir, **summary):
    for model in paper.MODELS:
        for split in paper.SPLITS:
            copy_run(source, workdir, model, split, **summary)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return trained_tiny_workdir(tmp_path_factory)


def table(report: str, first_header_cell: str) -> list[list[str]]:
    """The body rows of the markdown table whose header starts with `first_header_cell`."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header_cell} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def report_only_run(tiny_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report_only")
    four_copies(tiny_run, workdir)
    result = run_program("reproduce.py", f"--workdir={workdir}", "--report_only")
    assert result.returncode == 0, result.stderr
    return workdir, (workdir / "report.md").read_text()


def test_table1_has_every_column_filled_and_the_papers_numbers(report_only_run):
    workdir, report = report_only_run
    rows = table(report, "Model")
    assert len(rows) == 4
    for row in rows:
        assert len(row) == len(paper.TABLE1_HEADER)
        assert all(cell and cell != "n/a" for cell in row), row
    by_model = {(row[0], row[1]): row for row in rows}
    v1 = by_model["MobileNetV1", "random patch (paper)"]
    v2 = by_model["MobileNetV2", "patient-level"]
    assert v1[4] == "0.849 / 0.857" and v2[4] == "0.819 / 0.743"
    summary = json.loads((workdir / "mobilenet_v1_random_patch" / "summary.json").read_text())
    assert v1[2] == f"{summary['final_train']['accuracy']:.3f}"
    assert v1[3] == f"{summary['final_validation']['accuracy']:.3f}"
    assert v1[5] == f"{summary['final_validation']['majority_baseline']:.3f}"
    assert v1[8] == f"{summary['final_validation']['roc_auc']:.3f}"
    assert v1[9] == f"{summary['trainable_parameters']:,}"


def table_after(report: str, heading: str) -> list[list[str]]:
    return table(report[report.index(heading) :], "Model")


def test_leakage_table_subtracts_patient_from_random_patch(report_only_run):
    _, report = report_only_run
    leakage = table_after(report, "## Leakage study")
    assert len(leakage) == 2 * len(paper.LEAKAGE_METRICS)
    assert all(cell for row in leakage for cell in row)
    accuracy = {row[0]: row for row in leakage if row[1] == "accuracy"}
    assert accuracy["MobileNetV1"][2:] == ["0.910", "0.840", "+0.070"]
    assert accuracy["MobileNetV2"][2:] == ["0.880", "0.790", "+0.090"]


def test_figures_are_written_and_linked(report_only_run):
    workdir, report = report_only_run
    for name in ("fig2_mobilenet_v1.png", "fig3_mobilenet_v2.png"):
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in report


def test_the_report_states_its_data_against_the_whole_set(report_only_run, tiny_run):
    _, report = report_only_run
    counts = json.loads((tiny_run / "summary.json").read_text())["data_info"]["counts"]
    patients = sum(part["patients"] for part in counts.values())
    patches = sum(part["patches"] for part in counts.values())
    assert patients == 20 and patches == 200  # the tiny real set of conftest.py
    assert (
        "20 of the Kaggle set's 279 patients and 200 of its 277,524 patches (0.1%)" in report
    )


def test_missing_run_is_named(tiny_run, tmp_path):
    four_copies(tiny_run, tmp_path)
    shutil.rmtree(paper.run_directory(tmp_path, "mobilenet_v2", "patient"))
    with pytest.raises(FileNotFoundError, match="mobilenet_v2_patient"):
        paper.load_runs(tmp_path)


def test_a_run_in_the_wrong_directory_is_refused(tiny_run, tmp_path):
    four_copies(tiny_run, tmp_path)
    summary_path = paper.run_directory(tmp_path, "mobilenet_v2", "patient") / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "model": "mobilenet_v1"}))
    with pytest.raises(ValueError, match="not 'mobilenet_v2'"):
        paper.load_runs(tmp_path)


def test_run_all_trains_only_the_unfinished_run(tiny_run, tmp_path, data_dir):
    for model, split in PLANTED_TEST_ACCURACY:
        if (model, split) != ("mobilenet_v1", "random_patch"):
            copy_run(tiny_run, tmp_path, model, split)
    before = {
        d.name: (d / "summary.json").stat().st_mtime_ns for d in tmp_path.iterdir() if d.is_dir()
    }
    base = tiny_config(data_dir, num_epochs=1)
    reproduce.run_all(base, tmp_path)
    after = {name: (tmp_path / name / "summary.json").stat().st_mtime_ns for name in before}
    assert after == before, "finished runs must be skipped"
    trained = paper.run_directory(tmp_path, "mobilenet_v1", "random_patch")
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["model"] == "mobilenet_v1"
    assert json.loads((trained / "config.json").read_text())["data"]["split"] == "random_patch"
    assert base.data.split == "patient", "the base config must not be modified"
    assert paper.load_runs(tmp_path).keys() == PLANTED_TEST_ACCURACY.keys()


@pytest.mark.heavy
def test_reproduce_command_trains_four_runs_and_writes_the_report(tmp_path):
    data_dir = tmp_path / "tfds"
    result = run_program(
        "reproduce.py",
        f"--workdir={tmp_path}",
        f"--config.data.data_dir={data_dir}",
        "--config.num_epochs=1",
        *TINY_OVERRIDES,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    runs = paper.load_runs(tmp_path)
    assert {run.summary["model"] for run in runs.values()} == set(paper.MODELS)
    report = (tmp_path / "report.md").read_text()
    rows = table(report, "Model")
    assert len(rows) == 4 and all(cell and cell != "n/a" for row in rows for cell in row)
    assert "--config.num_epochs=1" in report  # the command that regenerates it
