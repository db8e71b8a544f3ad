"""The experiment and its report: the plan of runs, their configs, Table 1, figures 2 and 3, the
leakage table, intervals, the comparison, seeds, the best recipe and its ablations.

The report path is tested on copies of one tiny trained run relabelled as every planned run, with
known, distinct test metrics written in, so the differences and spreads can be checked exactly.
"""

import json
import pathlib
import shutil
import statistics

import pytest

import reproduce
from configs import ablations, default
from experiment import paper, report, tables
from tests.commands import run_program
from tests.test_inference import trained_tiny_workdir
from tests.test_train import TINY_OVERRIDES, tiny_config
from trainer import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
PAPER_PLAN = paper.plan()
# Test accuracy written into each copied paper run.
PLANTED_TEST_ACCURACY = {
    "mobilenet_v1_random_patch": 0.91,
    "mobilenet_v1_patient": 0.84,
    "mobilenet_v2_random_patch": 0.88,
    "mobilenet_v2_patient": 0.79,
}


def copy_run(source: pathlib.Path, workdir: pathlib.Path, run: paper.PlannedRun, **test):
    """A copy of `source` relabelled as the planned run, with test metrics replaced."""
    target = paper.run_directory(workdir, run)
    shutil.copytree(source, target)
    data = json.loads((target / "summary.json").read_text())
    data.update(model=run.model or data["model"], split=run.split)
    data["test"] = {**data["test"], **test}
    (target / "summary.json").write_text(json.dumps(data))
    config = json.loads((target / "config.json").read_text())
    config["model"]["name"] = run.model or config["model"]["name"]
    config["data"]["split"] = run.split
    (target / "config.json").write_text(json.dumps(config))
    return target


def paper_copies(source, workdir):
    for run in PAPER_PLAN:
        copy_run(source, workdir, run, accuracy=PLANTED_TEST_ACCURACY[run.name])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return trained_tiny_workdir(tmp_path_factory)


def table(text: str, first_header_cell: str) -> list[list[str]]:
    """The body rows of the markdown table whose header starts with `first_header_cell`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header_cell} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def table_after(text: str, heading: str, first_header_cell: str = "Model") -> list[list[str]]:
    return table(text[text.index(heading) :], first_header_cell)


# ----------------------------------------------------------------------------- the plan


def test_the_plan_names_every_run_once_in_training_order():
    planned = paper.plan(
        ["mobilenet_v1", "mobilenet_v3_small"],
        num_seeds=2,
        best_config="configs/v1.py",
        ablations=[a for a in ablations.ABLATIONS if a["name"] == "paper_keras_evaluation"],
    )
    assert [run.name for run in planned] == [
        "mobilenet_v1_random_patch",
        "mobilenet_v1_patient",
        "mobilenet_v2_random_patch",
        "mobilenet_v2_patient",
        "mobilenet_v3_small_patient",
        "mobilenet_v1_patient_seed1",
        "mobilenet_v2_patient_seed1",
        "best_seed0",
        "best_seed1",
        "ablation_paper_keras_evaluation",
    ]
    assert [run.seed for run in planned if run.group == "best"] == [0, 1]


def test_run_configs_set_model_split_seed_and_overrides_without_touching_the_base():
    base = default.get_config()
    base.data.manual_dir = "/data/subset"
    base = default.finalize(base)
    seed_run = paper.PlannedRun("v2_seed1", "seed", "mobilenet_v2", seed=1)
    config = paper.run_config(base, seed_run)
    assert (config.model.name, config.data.split, config.seed) == ("mobilenet_v2", "patient", 1)
    ablation = paper.plan(ablations=ablations.ABLATIONS)[-1]
    config = paper.run_config(base, ablation)
    for key, value in ablation.overrides:
        assert lookup(config, key) == value, key
    with pytest.raises(AttributeError):
        config.num_epoch = 3  # locked: a mistyped key is an error
    bad = paper.PlannedRun("bad", "ablation", "mobilenet_v1", overrides=(("preprocess.size", 5),))
    with pytest.raises(KeyError, match="preprocess.size"):
        paper.run_config(base, bad)
    assert base.model.name == "mobilenet_v1" and base.seed == 0


def lookup(config, dotted_key: str):
    for part in dotted_key.split("."):
        config = config[part]
    return config


def test_every_ablation_changes_existing_keys_to_other_values():
    base = default.get_config()
    for run in paper.plan(ablations=ablations.ABLATIONS):
        if run.group == "ablation":
            config = paper.run_config(base, run)  # raises on a key the config lacks
            assert run.change, run.name
            for key, value in run.overrides:
                assert lookup(config, key) == value != lookup(base, key), (run.name, key)


def test_ablations_are_chosen_by_name_in_the_files_order_and_a_typo_is_refused():
    names = [ablation["name"] for ablation in ablations.ABLATIONS]
    assert reproduce.chosen_ablations(["all"]) == ablations.ABLATIONS
    assert reproduce.chosen_ablations([]) == ()
    picked = reproduce.chosen_ablations([names[2], names[0]])
    assert [ablation["name"] for ablation in picked] == [names[0], names[2]]
    with pytest.raises(cli.UserError, match="size_12"):
        reproduce.chosen_ablations(["size_12"])


def flat(config) -> dict:
    """A config as {dotted key: value}."""
    items = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            items.update({f"{key}.{k}": v for k, v in flat(value).items()})
        else:
            items[key] = value
    return items


def test_the_best_recipe_is_the_papers_with_exactly_the_adopted_ablations():
    best = paper.load_config_file(REPO / "configs/v1_best.py")
    base = flat(paper.load_config_file(REPO / "configs/v1.py"))
    adopted = {
        key: value
        for ablation in ablations.ABLATIONS
        if ablation["decision"].startswith("adopted")
        for key, value in ablation["overrides"].items()
    }
    assert adopted, "the best recipe adopts at least one measured change"
    assert flat(best).keys() == base.keys()
    assert {k: v for k, v in flat(best).items() if base[k] != v} == adopted
    with pytest.raises(AttributeError):
        best.num_epoch = 15  # locked: a mistyped key is an error
    with pytest.raises(AttributeError):
        best.preprocess.image_sise = 128


def test_a_config_file_brings_its_recipe_and_takes_the_base_data():
    base = default.get_config()
    base.data.manual_dir, base.progress_bar = "/data/subset", False
    run = paper.PlannedRun("best_seed2", "best", seed=2, config_file=str(REPO / "configs/v2.py"))
    config = paper.run_config(default.finalize(base), run)
    assert config.model.name == "mobilenet_v2"  # the file's model
    assert config.data.manual_dir == "/data/subset" and config.progress_bar is False
    assert config.seed == 2 and config.data.split == "patient"


# ----------------------------------------------------------------------------- the paper's report


@pytest.fixture(scope="module")
def report_only_run(tiny_run, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report_only")
    paper_copies(tiny_run, workdir)
    result = run_program("reproduce.py", f"--workdir={workdir}", "--report_only")
    assert result.returncode == 0, result.stderr
    return workdir, (workdir / "report.md").read_text()


def test_table1_has_every_column_filled_and_the_papers_numbers(report_only_run):
    workdir, text = report_only_run
    rows = table(text, "Model")
    assert len(rows) == 4
    for row in rows:
        assert len(row) == len(tables.TABLE1_HEADER)
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


def test_leakage_table_subtracts_patient_from_random_patch(report_only_run):
    _, text = report_only_run
    leakage = table_after(text, "## Leakage study")
    assert len(leakage) == 2 * len(tables.LEAKAGE_METRICS)
    assert all(cell for row in leakage for cell in row)
    accuracy = {row[0]: row for row in leakage if row[1] == "accuracy"}
    assert accuracy["MobileNetV1"][2:] == ["0.910", "0.840", "+0.070"]
    assert accuracy["MobileNetV2"][2:] == ["0.880", "0.790", "+0.090"]


def test_intervals_table_quotes_each_runs_bootstrap(report_only_run, tiny_run):
    _, text = report_only_run
    rows = table_after(text, "## Test metrics with 95% intervals", "Run")
    assert [row[0] for row in rows] == [f"`{run.name}`" for run in PAPER_PLAN]
    interval = json.loads((tiny_run / "summary.json").read_text())["test_intervals"]["at_0.5"]
    auc = interval["roc_auc"]
    expected = f"{auc['estimate']:.3f} [{auc['low']:.2f}, {auc['high']:.2f}]"
    assert all(row[2] == expected for row in rows)


def test_figures_are_written_and_linked(report_only_run):
    workdir, text = report_only_run
    for name in (
        "fig2_mobilenet_v1.png",
        "fig3_mobilenet_v2.png",
        "reliability.png",
        "per_patient.png",
    ):
        assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in text, name


def test_the_report_states_its_data_against_the_whole_set(report_only_run, tiny_run):
    _, text = report_only_run
    counts = json.loads((tiny_run / "summary.json").read_text())["data_info"]["counts"]
    patients = sum(part["patients"] for part in counts.values())
    patches = sum(part["patches"] for part in counts.values())
    assert patients == 20 and patches == 200  # the tiny real set of conftest.py
    assert "20 of the Kaggle set's 279 patients and 200 of its 277,524 patches (0.1%)" in text
    # The data set by name, never the folders of the machine it ran on (the command that
    # regenerates the report names the workdir it was given).
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["data_source"] not in text and summary["data_info"]["data_dir"] not in text
    assert str(tiny_run) not in text
    assert "make_idc_245.py" not in text  # the tiny set is not the 245-patient data


def test_the_245_patient_data_is_named_with_the_command_that_rebuilds_it(tiny_run):
    manifest = json.loads(tables.IDC_245_MANIFEST.read_text())
    summary = json.loads((tiny_run / "summary.json").read_text())
    subset = manifest["subset"]
    summary["data_info"]["counts"] = {
        "train": {"patches": subset["patches"] - 200, "patients": 241, "positives": 0},
        "test": {"patches": 200, "patients": 4, "positives": subset["idc_patches"]},
    }
    assert tables.idc_245_part(summary) == "subset"
    assert "`data/idc_245/subset`" in tables.data_statement(summary)
    assert tables.data_preparation(summary) == [tables.IDC_245_REBUILD]
    summary["data_info"]["counts"]["test"]["positives"] -= 1
    assert tables.idc_245_part(summary) is None and tables.data_preparation(summary) == []


def test_figures_name_runs_by_their_network():
    names = {run.name: report.display_name(run) for run in paper.plan(num_seeds=2, best_config="b")}
    assert names["mobilenet_v1_patient"] == "MobileNetV1"
    assert names["mobilenet_v2_random_patch"] == "MobileNetV2, random patch (paper)"
    assert names["mobilenet_v1_patient_seed1"] == "MobileNetV1 (seed 1)"
    assert names["best_seed0"] == "best recipe (seed 0)"


def test_missing_run_is_named(tiny_run, tmp_path):
    paper_copies(tiny_run, tmp_path)
    shutil.rmtree(tmp_path / "mobilenet_v2_patient")
    with pytest.raises(FileNotFoundError, match="mobilenet_v2_patient"):
        paper.load_runs(tmp_path, PAPER_PLAN)


def test_a_run_in_the_wrong_directory_is_refused(tiny_run, tmp_path):
    paper_copies(tiny_run, tmp_path)
    summary_path = tmp_path / "mobilenet_v2_patient" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({**summary, "model": "mobilenet_v1"}))
    with pytest.raises(ValueError, match="not 'mobilenet_v2'"):
        paper.load_runs(tmp_path, PAPER_PLAN)


# ----------------------------------------------------------------------------- the full report


def test_full_report_has_comparison_seeds_best_recipe_and_ablations(tiny_run, tmp_path):
    chosen = reproduce.chosen_ablations(["paper_keras_evaluation", "batch_64"])
    planned = paper.plan(
        ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"],
        num_seeds=2,
        best_config="configs/v1.py",
        ablations=chosen,
    )
    planted_auc = {run.name: 0.5 + 0.01 * number for number, run in enumerate(planned)}
    for run in planned:
        copy_run(tiny_run, tmp_path, run, roc_auc=planted_auc[run.name])
    text = report.write_report(tmp_path, planned).read_text()
    comparison = table_after(text, "## Models compared")
    assert [row[0] for row in comparison] == ["MobileNetV1", "MobileNetV2", "MobileNetV3-Small"]
    seeds = {row[0]: row for row in table_after(text, "## Spread over seeds", "Recipe")}
    assert set(seeds) == {"MobileNetV1", "MobileNetV2", "best recipe"}
    v1 = [planted_auc["mobilenet_v1_patient"], planted_auc["mobilenet_v1_patient_seed1"]]
    assert seeds["MobileNetV1"][1] == "2"
    assert seeds["MobileNetV1"][2] == f"{statistics.mean(v1):.3f} ± {statistics.stdev(v1):.3f}"
    best = table_after(text, "## The best recipe", "Test")
    assert best[0][0].startswith("`configs/v1.py` (seed 0)") and best[2][1:] == [
        "0.93",
        "0.86",
        "0.78",
    ]
    ablation_rows = table_after(text, "## Ablations", "Ablation")
    assert [row[0] for row in ablation_rows] == [f"`{a['name']}`" for a in chosen]
    assert all(row[-1] for row in ablation_rows)  # a decision, or "pending"


def test_a_resumed_runs_wall_time_names_its_invocations():
    assert tables.wall_time_cell({"wall_time_s": 300.0}) == "5.0 min"  # written before resumes
    assert tables.wall_time_cell({"wall_time_s": 300.0, "invocations": 1}) == "5.0 min"
    cell = tables.wall_time_cell({"wall_time_s": 4830.0, "invocations": 3})
    assert cell == "80.5 min (3 invocations)"


def test_run_all_trains_only_the_unfinished_run(tiny_run, tmp_path, data_dir, caplog):
    for run in PAPER_PLAN:
        if run.name != "mobilenet_v1_random_patch":
            copy_run(tiny_run, tmp_path, run)
    before = {
        d.name: (d / "summary.json").stat().st_mtime_ns for d in tmp_path.iterdir() if d.is_dir()
    }
    base = tiny_config(data_dir, num_epochs=1)
    with caplog.at_level("INFO"):
        reproduce.run_all(base, tmp_path, PAPER_PLAN)
    # Where the experiment stands, run by run.
    assert "[1/4] mobilenet_v1_random_patch: training in" in caplog.text
    assert "[4/4] mobilenet_v2_patient: finished before (summary.json), skipped" in caplog.text
    assert "4 runs: 1 trained now, 3 finished before" in caplog.text
    after = {name: (tmp_path / name / "summary.json").stat().st_mtime_ns for name in before}
    assert after == before, "finished runs must be skipped"
    trained = tmp_path / "mobilenet_v1_random_patch"
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["model"] == "mobilenet_v1" and summary["invocations"] == 1
    assert json.loads((trained / "config.json").read_text())["data"]["split"] == "random_patch"
    assert base.data.split == "patient", "the base config must not be modified"
    assert paper.load_runs(tmp_path, PAPER_PLAN).keys() == PLANTED_TEST_ACCURACY.keys()


@pytest.mark.heavy
def test_reproduce_command_trains_four_runs_and_writes_the_report(tmp_path, data_dir):
    result = run_program(
        "reproduce.py",
        f"--workdir={tmp_path}",
        f"--config.data.data_dir={data_dir}",
        "--config.num_epochs=1",
        *TINY_OVERRIDES,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    runs = paper.load_runs(tmp_path, PAPER_PLAN)
    assert {run.summary["model"] for run in runs.values()} == set(paper.PAPER_MODELS)
    text = (tmp_path / "report.md").read_text()
    rows = table(text, "Model")
    assert len(rows) == 4 and all(cell and cell != "n/a" for row in rows for cell in row)
    assert "--config.num_epochs=1" in text  # the command that regenerates it
