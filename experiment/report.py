"""report.md of an experiment (`experiment/paper.py` plans it, `reproduce.py` trains it).

The sections follow the plan: the paper's Table 1 and Figures 2 and 3 with its numbers beside
ours, the leakage study (random patch split minus patient split), then, where the plan has them,
test metrics with 95% intervals from a bootstrap over patients, the comparison of models, the
spread over seeds, the best recipe against the published results, its ablations, calibration and
the per-patient view.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

from experiment import figures, tables
from experiment.markdown import (
    fmt,
    fmt_interval,
    markdown_table,
)
from experiment.paper import (
    MODEL_TITLES,
    PAPER_MODELS,
    SPLIT_TITLES,
    PlannedRun,
    load_runs,
)
from trainer.rundir import Run, RunDirectory

FIGURES = {"mobilenet_v1": "fig2_mobilenet_v1.png", "mobilenet_v2": "fig3_mobilenet_v2.png"}
RELIABILITY_FIGURE = "reliability.png"
PER_PATIENT_FIGURE = "per_patient.png"
# Patient-level results published on the full set's published split (not comparable one to
# one: other patients, all their patches, and no intervals).
PUBLISHED = (
    ("Cruz-Roa et al. 2014 (3-layer CNN)", "0.842", "0.718 (F-measure)"),
    ("Janowczyk & Madabhushi 2016 (AlexNet)", "n/a", "0.765 (F-score)"),
    ("Romero et al. 2019 (Inception-based)", "0.89", "0.90"),
)
TARGETS = {"roc_auc": 0.93, "balanced_accuracy": 0.86, "f1": 0.78}


def _resamples(runs: Mapping[str, Run]) -> str:
    """The bootstrap's resample count as the runs' summaries record it ("a, b" if they differ)."""
    counts = sorted(
        {
            intervals["at_0.5"]["num_resamples"]
            for run in runs.values()
            if (intervals := run.summary.get("test_intervals"))
        }
    )
    return ", ".join(f"{count:,}" for count in counts) or "no"


def _calibration_bins(runs: Mapping[str, Run], chosen: Sequence[PlannedRun]) -> str:
    bins = sorted({runs[run.name].summary["test_calibration"]["num_bins"] for run in chosen})
    return ", ".join(str(b) for b in bins)


def display_name(run: PlannedRun) -> str:
    """A run as a figure names it: the network's name, and what sets the run apart."""
    if run.group == "best":
        return f"best recipe (seed {run.seed})"
    if run.group == "ablation":
        return f"MobileNetV1, {run.name.removeprefix('ablation_')}"
    name = run.title
    if run.split != "patient":
        name += f", {SPLIT_TITLES.get(run.split, run.split)}"
    if run.seed:
        name += f" (seed {run.seed})"
    return name


def _group(planned: Sequence[PlannedRun], group: str) -> list[PlannedRun]:
    return [run for run in planned if run.group == group]


def render_report(
    runs: Mapping[str, Run], planned: Sequence[PlannedRun], command: str | None = None
) -> str:
    """report.md from the finished runs of the plan (figures referenced by file name)."""
    paper_v1 = runs[f"{PAPER_MODELS[0]}_patient"]
    parts = [
        "# Reproduction: MobileNetV1 and MobileNetV2 on breast histopathology (IDC)",
        "",
        tables.data_statement(paper_v1.summary),
        "",
    ]
    if command:
        preparation = tables.data_preparation(paper_v1.summary)
        parts += ["Regenerate with:", "", "```bash", *preparation, command, "```", ""]
    parts += [
        'Paper: "Study for Performance of MobileNetV1 and MobileNetV2 Based on Breast Cancer" '
        "(Adam 1e-4, 5 epochs, cross-entropy, global average pooling and a dense layer, on the "
        "Kaggle IDC patches split at random patch by patch).",
        "",
        f"The paper's recipe, as run here: {tables.recipe(paper_v1.summary, paper_v1.config)}",
        "",
        "## Table 1: accuracy after the last epoch, extended",
        "",
        "Train accuracy is the running mean over the last epoch, as Keras reports it; "
        "validation metrics are those of the final model on the validation split, at "
        "threshold 0.5. The paper split patches at random, so its numbers compare with the "
        "*random patch* rows. The majority baseline is the accuracy of always answering "
        '"no IDC": an accuracy means little until it is compared with it.',
        "",
        markdown_table(tables.TABLE1_HEADER, tables.table1_rows(runs)),
        "",
        "## Figures 2 and 3: accuracy per epoch",
        "",
    ]
    for number, model in enumerate(PAPER_MODELS, start=2):
        parts += [f"![Figure {number}: {MODEL_TITLES[model]}]({FIGURES[model]})", ""]
    parts += [
        "## Leakage study: patch-level against patient-level split (test split)",
        "",
        "Under the paper's random patch split every patient contributes patches to training, "
        "validation and test, and neighbouring patches of one slide are near-copies of each "
        "other; under the patient-level split the test patients are never seen in training. "
        "The difference (random patch minus patient) is not the leak's effect alone: the two "
        "splits' test sets hold different patients, so it mixes the leak with the difference "
        "between the test sets (a comparison on the same test patients would separate them). "
        "Both at threshold 0.5.",
        "",
        markdown_table(
            ("Model", "Test metric", "Random patch", "Patient-level", "Difference"),
            tables.leakage_rows(runs),
        ),
        "",
        "## Test metrics with 95% intervals",
        "",
        f"Intervals are percentile intervals of {_resamples(runs)} bootstrap resamples of the "
        "test *patients* "
        "(a drawn patient brings all its patches): patches of one patient are not independent, "
        "so a patch-level bootstrap would be too narrow. Under the random patch split the test "
        "patients also appear in training, so its intervals describe that leaky protocol.",
        "",
        markdown_table(
            tables.INTERVAL_HEADER, tables.interval_rows(runs, _group(planned, "paper"))
        ),
        "",
    ]
    parts += _comparison_section(runs, planned)
    parts += _seed_section(runs, planned)
    parts += _best_section(runs, planned)
    parts += _calibration_section(runs, planned)
    parts += [
        "## Data",
        "",
        markdown_table(("Split protocol", "Train", "Validation", "Test"), tables.data_rows(runs)),
        "",
        "Run directories (history.csv, summary.json, curves.png): "
        + ", ".join(f"`{name}/`" for name in runs)
        + ".",
        "",
    ]
    return "\n".join(parts)


def _comparison_section(runs, planned) -> list[str]:
    patient = [r for r in _group(planned, "paper") if r.split == "patient"]
    comparison = patient + _group(planned, "comparison")
    if len(comparison) == len(patient):
        return []
    return [
        "## Models compared: the paper's future work (patient-level split, seed 0)",
        "",
        "The same recipe for every network, from scratch; test metrics at threshold 0.5 with "
        "their patient-bootstrap intervals, and costs measured on the machine that trained "
        "them (train images/s: median over epochs, compilation excluded).",
        "",
        markdown_table(tables.COMPARISON_HEADER, tables.comparison_rows(runs, comparison)),
        "",
    ]


def _seed_section(runs, planned) -> list[str]:
    seeds = _group(planned, "seed") + _group(planned, "best")
    if not seeds:
        return []
    groups: dict[str, list[str]] = {}
    for run in [r for r in _group(planned, "paper") if r.split == "patient"] + _group(
        planned, "comparison"
    ):
        groups[run.title] = [run.name]
    for run in _group(planned, "seed"):
        groups[run.title].append(run.name)
    best = [run.name for run in _group(planned, "best")]
    if best:
        groups["best recipe"] = best
    return [
        "## Spread over seeds (patient-level split)",
        "",
        "Mean ± standard deviation of the test metrics (threshold 0.5) over training seeds "
        "(initialisation, batch order, dropout, augmentation); the split stays the same.",
        "",
        markdown_table(
            ("Recipe", "Seeds", *[f"Test {title}" for _, title in tables.INTERVAL_METRICS]),
            tables.seed_rows(runs, {k: v for k, v in groups.items() if len(v) > 1}),
        ),
        "",
    ]


def _best_section(runs, planned) -> list[str]:
    best, ablations = _group(planned, "best"), _group(planned, "ablation")
    parts: list[str] = []
    if best:
        first = runs[best[0].name]
        intervals = first.summary.get("test_intervals") or {}
        tuned = intervals.get("at_validation_threshold", {})
        rows = [
            [
                f"`{best[0].config_file}` (seed 0), threshold 0.5",
                *[
                    fmt_interval(intervals.get("at_0.5", {}).get(k))
                    for k, _ in tables.INTERVAL_METRICS
                ],
            ],
            [
                "the same, threshold tuned on validation "
                f"({fmt(first.summary['test_at_validation_threshold']['threshold'])})",
                fmt_interval(intervals.get("at_0.5", {}).get("roc_auc")),
                fmt_interval(tuned.get("balanced_accuracy")),
                fmt_interval(tuned.get("f1")),
            ],
            ["targets", *[fmt(TARGETS[k], 2) for k, _ in tables.INTERVAL_METRICS]],
        ]
        rows += [[name, "n/a", bacc, f1] for name, bacc, f1 in PUBLISHED]
        parts += [
            "## The best recipe (patient-level split)",
            "",
            f"Recipe: {tables.recipe(first.summary, first.config)}",
            "",
            "Every choice was made on the validation patients (ablations below); the test "
            "patients were scored once per recipe. The published results are patient-level "
            "too, but on the full set's published split: a context, not a like-for-like "
            "comparison.",
            "",
            markdown_table(
                ("Test", *[f"{title} [95% CI]" for _, title in tables.INTERVAL_METRICS]), rows
            ),
            "",
        ]
    if ablations:
        parts += [
            "## Ablations: how the best recipe was chosen (validation patients)",
            "",
            "MobileNetV1 under the patient split, each row the base config with the change "
            "named; validation metrics of the final model at threshold 0.5.",
            "",
            markdown_table(tables.ABLATION_HEADER, tables.ablation_rows(runs, ablations)),
            "",
        ]
    return parts


def _calibration_runs(planned) -> list[PlannedRun]:
    patient = [r for r in _group(planned, "paper") if r.split == "patient"]
    return patient + _group(planned, "best")[:1]


def _calibration_section(runs, planned) -> list[str]:
    chosen = _calibration_runs(planned)
    rows = [
        [
            f"`{run.name}`",
            fmt(runs[run.name].summary["test_calibration"]["ece"]),
            fmt(runs[run.name].summary["test_calibration"]["mce"]),
        ]
        for run in chosen
    ]
    parts = [
        "## Calibration (test)",
        "",
        "A pathologist's tool reads P(IDC) as a probability. Expected calibration error: "
        f"the patch-weighted mean over {_calibration_bins(runs, chosen)} equal-width bins of "
        "|observed fraction of IDC - "
        "mean predicted P(IDC)|; maximum calibration error: the largest such gap.",
        "",
        markdown_table(("Run", "ECE", "MCE"), rows),
        "",
        f"![Reliability diagram]({RELIABILITY_FIGURE})",
        "",
        "## Per patient (test)",
        "",
        "A slide-level reader cares about the worst patient, not the mean. Per-patient ROC AUC "
        "and balanced accuracy (patients with both classes), and the five lowest by AUC.",
        "",
        f"![Per-patient metrics]({PER_PATIENT_FIGURE})",
        "",
    ]
    for run in chosen:
        parts += [
            f"`{run.name}`:",
            "",
            markdown_table(
                ("Patient", "Patches", "IDC", "ROC AUC", "Balanced acc.", "Accuracy"),
                tables.worst_patient_rows(runs[run.name].summary),
            ),
            "",
        ]
    return parts


def write_report(
    workdir: str | pathlib.Path,
    planned: Sequence[PlannedRun],
    command: str | None = None,
    *,
    redraw_run_curves: bool = False,
) -> pathlib.Path:
    """Writes <workdir>/report.md and its figures from the finished runs of the plan.

    `redraw_run_curves`: also draw each run's curves.png again from its history.csv (after a
    change to that figure).
    """
    workdir = pathlib.Path(workdir)
    runs = load_runs(workdir, planned)
    if redraw_run_curves:
        for run in runs.values():
            RunDirectory(run.directory).redraw_curves()
    for number, model in enumerate(PAPER_MODELS, start=2):
        figures.plot_accuracy_figure(workdir / FIGURES[model], model, runs, figure_number=number)
    chosen = _calibration_runs(planned)
    figures.plot_reliability_diagram(
        workdir / RELIABILITY_FIGURE,
        [(display_name(run), runs[run.name].summary["test_calibration"]) for run in chosen],
    )
    figures.plot_per_patient_distribution(
        workdir / PER_PATIENT_FIGURE,
        [
            (display_name(run), runs[run.name].summary["test_per_patient"]["patients"])
            for run in chosen
        ],
    )
    path = workdir / "report.md"
    path.write_text(render_report(runs, planned, command))
    return path
