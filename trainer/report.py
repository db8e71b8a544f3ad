"""report.md of an experiment (`trainer/paper.py` plans it, `reproduce.py` trains it).

The sections follow the plan: the paper's Table 1 and Figures 2 and 3 with its numbers beside
ours, the leakage study (random patch split minus patient split), then, where the plan has them,
test metrics with 95% intervals from a bootstrap over patients, the comparison of models, the
spread over seeds, the best recipe against the published results, its ablations, calibration and
the per-patient view.
"""

from __future__ import annotations

import math
import pathlib
import statistics
from collections.abc import Mapping, Sequence

from trainer import figures
from trainer.paper import (
    KAGGLE_PATCHES,
    KAGGLE_PATIENTS,
    MODEL_TITLES,
    PAPER_ACCURACY,
    PAPER_MODELS,
    SPLIT_TITLES,
    SPLITS,
    PlannedRun,
    load_runs,
)
from trainer.rundir import Run

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
INTERVAL_METRICS = (("roc_auc", "ROC AUC"), ("balanced_accuracy", "balanced acc."), ("f1", "F1"))


# ----------------------------------------------------------------------------- formatting


def fmt(value, digits: int = 3) -> str:
    """A table cell: fixed decimals, 'n/a' for a missing or undefined (NaN) value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def fmt_signed(value, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}"


def fmt_duration(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_interval(interval: Mapping | None, digits: int = 3) -> str:
    """'estimate [low, high]' of a bootstrap interval (`trainer.uncertainty`)."""
    if not interval:
        return "n/a"
    low, high = interval.get("low"), interval.get("high")
    if low is None or high is None:
        return fmt(interval.get("estimate"), digits)
    return f"{fmt(interval['estimate'], digits)} [{fmt(low, 2)}, {fmt(high, 2)}]"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tables


TABLE1_HEADER = (
    "Model",
    "Split",
    "Train acc.",
    "Val. acc.",
    "Paper train / val. acc.",
    "Val. majority baseline",
    "Val. balanced acc.",
    "Val. F1",
    "Val. ROC AUC",
    "Parameters",
    "Multiply-adds / image",
    "Train images/s",
    "Wall time",
)


def table1_rows(runs: Mapping[str, Run]) -> list[list[str]]:
    """The paper's Table 1 (train and validation accuracy after the last epoch), extended."""
    rows = []
    for model in PAPER_MODELS:
        paper = PAPER_ACCURACY[model]
        for split in SPLITS:
            summary = runs[f"{model}_{split}"].summary
            validation = summary["final_validation"]
            rows.append(
                [
                    MODEL_TITLES[model],
                    SPLIT_TITLES[split],
                    fmt(summary["final_train"]["accuracy"]),
                    fmt(validation["accuracy"]),
                    f"{paper['train']:.3f} / {paper['validation']:.3f}",
                    fmt(validation["majority_baseline"]),
                    fmt(validation["balanced_accuracy"]),
                    fmt(validation["f1"]),
                    fmt(validation["roc_auc"]),
                    *_cost_cells(summary),
                ]
            )
    return rows


def _cost_cells(summary: Mapping) -> list[str]:
    return [
        f"{summary['trainable_parameters']:,}",
        f"{summary['multiply_adds_per_image'] / 1e6:.1f} M",
        fmt(summary["train_images_per_second"], 0),
        wall_time_cell(summary),
    ]


def wall_time_cell(summary: Mapping) -> str:
    """The run's wall time; a resumed run says over how many invocations it was summed."""
    invocations = summary.get("invocations", 1)
    cell = fmt_duration(summary["wall_time_s"])
    return f"{cell} ({invocations} invocations)" if invocations > 1 else cell


LEAKAGE_METRICS = (
    ("accuracy", "accuracy"),
    ("majority_baseline", "majority-class baseline"),
    ("balanced_accuracy", "balanced accuracy"),
    ("f1", "F1 (IDC)"),
    ("roc_auc", "ROC AUC"),
    ("pr_auc", "PR AUC"),
)


def leakage_rows(runs: Mapping[str, Run]) -> list[list[str]]:
    """Test metrics under the patch-level and the patient-level split, and their difference."""
    rows = []
    for model in PAPER_MODELS:
        leaky = runs[f"{model}_random_patch"].summary["test"]
        clean = runs[f"{model}_patient"].summary["test"]
        for key, title in LEAKAGE_METRICS:
            rows.append(
                [
                    MODEL_TITLES[model],
                    title,
                    fmt(leaky[key]),
                    fmt(clean[key]),
                    fmt_signed(leaky[key] - clean[key]),
                ]
            )
    return rows


def data_rows(runs: Mapping[str, Run]) -> list[list[str]]:
    """Patches (IDC share) and patients of each split of each protocol (the V1 runs' data)."""
    rows = []
    for split in SPLITS:
        counts = runs[f"{PAPER_MODELS[0]}_{split}"].summary["data_info"]["counts"]
        cells = []
        for part in ("train", "validation", "test"):
            c = counts[part]
            share = c["positives"] / c["patches"] if c["patches"] else math.nan
            patients = _plural(c["patients"], "patient")
            cells.append(f"{c['patches']:,} patches ({fmt(share, 2)} IDC), {patients}")
        rows.append([SPLIT_TITLES[split], *cells])
    return rows


INTERVAL_HEADER = ("Run", "Split", *[f"Test {title} [95% CI]" for _, title in INTERVAL_METRICS])


def interval_rows(runs: Mapping[str, Run], planned: Sequence[PlannedRun]) -> list[list[str]]:
    """Test metrics at threshold 0.5 with their patient-bootstrap intervals, one row a run."""
    rows = []
    for run in planned:
        intervals = runs[run.name].summary.get("test_intervals") or {}
        at_half = intervals.get("at_0.5", {})
        rows.append(
            [
                f"`{run.name}`",
                SPLIT_TITLES[run.split],
                *[fmt_interval(at_half.get(key)) for key, _ in INTERVAL_METRICS],
            ]
        )
    return rows


COMPARISON_HEADER = (
    "Model",
    *[f"Test {title} [95% CI]" for _, title in INTERVAL_METRICS],
    "ECE",
    "Parameters",
    "Multiply-adds / image",
    "Train images/s",
    "Wall time",
)


def comparison_rows(runs: Mapping[str, Run], planned: Sequence[PlannedRun]) -> list[list[str]]:
    """Every model under the patient split (seed 0): test metrics with intervals and costs."""
    rows = []
    for run in planned:
        summary = runs[run.name].summary
        at_half = (summary.get("test_intervals") or {}).get("at_0.5", {})
        rows.append(
            [
                run.title,
                *[fmt_interval(at_half.get(key)) for key, _ in INTERVAL_METRICS],
                fmt(summary["test"].get("ece")),
                *_cost_cells(summary),
            ]
        )
    return rows


def seed_rows(runs: Mapping[str, Run], groups: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Mean and standard deviation over seeds of each test metric, one row a recipe."""
    rows = []
    for title, names in groups.items():
        cells = [title, str(len(names))]
        for key, _ in INTERVAL_METRICS:
            values = [runs[name].summary["test"][key] for name in names]
            spread = statistics.stdev(values) if len(values) > 1 else math.nan
            cells.append(f"{fmt(statistics.mean(values))} ± {fmt(spread)}")
        rows.append(cells)
    return rows


ABLATION_HEADER = (
    "Ablation",
    "Change (from the base config)",
    "Val. ROC AUC",
    "Val. balanced acc.",
    "Val. F1",
    "Train images/s",
    "Wall time",
    "Decision",
)


def ablation_rows(runs: Mapping[str, Run], planned: Sequence[PlannedRun]) -> list[list[str]]:
    rows = []
    for run in planned:
        summary = runs[run.name].summary
        validation = summary["final_validation"]
        rows.append(
            [
                f"`{run.name.removeprefix('ablation_')}`",
                run.change,
                fmt(validation["roc_auc"]),
                fmt(validation["balanced_accuracy"]),
                fmt(validation["f1"]),
                fmt(summary["train_images_per_second"], 0),
                wall_time_cell(summary),
                run.decision or "pending",
            ]
        )
    return rows


def worst_patient_rows(summary: Mapping, count: int = 5) -> list[list[str]]:
    """The test patients with the lowest ROC AUC (among those with both classes)."""
    patients = [
        row for row in summary["test_per_patient"]["patients"] if row["roc_auc"] is not None
    ]
    patients.sort(key=lambda row: row["roc_auc"])
    return [
        [
            str(row["patient"]),
            str(row["patches"]),
            str(row["idc_patches"]),
            fmt(row["roc_auc"]),
            fmt(row["balanced_accuracy"]),
            fmt(row["accuracy"]),
        ]
        for row in patients[:count]
    ]


# ----------------------------------------------------------------------------- the report


def _recipe(summary: Mapping, config) -> str:
    return (
        f"{_plural(config.num_epochs, 'epoch')} of Adam (learning rate "
        f"{config.learning_rate:g}, {config.schedule} schedule, weight decay "
        f"{config.weight_decay:g}), softmax cross-entropy (label smoothing "
        f"{config.label_smoothing:g}, class weights {config.class_weights}), global batch "
        f"{config.global_batch_size}, width multiplier alpha {config.model.alpha:g}, "
        f"patches resized to {config.preprocess.image_size}x{config.preprocess.image_size} "
        f"({config.preprocess.resize_method}; dihedral augmentation "
        f"{'on' if config.preprocess.dihedral else 'off'}, HSV jitter "
        f"{config.preprocess.hsv_jitter:g}, HED jitter {config.preprocess.hed_jitter:g}); "
        f"evaluation after BatchNorm recalibration on {config.bn_recalibration_batches} "
        f"training batches ({'8-view TTA' if config.eval_tta else 'one view'}); seed "
        f"{config.seed}. Trained on {summary['devices']} {summary['backend']} device(s) in "
        f"{summary['compute_dtype']}."
    )


def data_statement(summary: Mapping) -> str:
    """What the runs trained and were tested on, against the whole Kaggle set."""
    counts = summary["data_info"]["counts"].values()
    patients = sum(part["patients"] for part in counts)
    patches = sum(part["patches"] for part in counts)
    name = {"idc_sample": "the real sample shipped in `data/idc_sample`"}.get(
        summary["dataset"], f"`{summary['dataset']}` from `{summary['data_source']}`"
    )
    return (
        f"**Data: {name}, {patients} of the Kaggle set's {KAGGLE_PATIENTS} patients and "
        f"{patches:,} of its {KAGGLE_PATCHES:,} patches ({patches / KAGGLE_PATCHES:.1%}).** "
        "The paper used every patch."
    )


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
        data_statement(paper_v1.summary),
        "",
    ]
    if command:
        parts += ["Regenerate with:", "", "```bash", command, "```", ""]
    parts += [
        'Paper: "Study for Performance of MobileNetV1 and MobileNetV2 Based on Breast Cancer" '
        "(Adam 1e-4, 5 epochs, cross-entropy, global average pooling and a dense layer, on the "
        "Kaggle IDC patches split at random patch by patch).",
        "",
        f"The paper's recipe, as run here: {_recipe(paper_v1.summary, paper_v1.config)}",
        "",
        "## Table 1: accuracy after the last epoch, extended",
        "",
        "Train accuracy is the running mean over the last epoch, as Keras reports it; "
        "validation metrics are those of the final model on the validation split, at "
        "threshold 0.5. The paper split patches at random, so its numbers compare with the "
        "*random patch* rows. The majority baseline is the accuracy of always answering "
        '"no IDC": an accuracy means little until it is compared with it.',
        "",
        markdown_table(TABLE1_HEADER, table1_rows(runs)),
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
        "The difference (random patch minus patient) estimates how much the paper's protocol "
        "overstates performance on new patients. Both at threshold 0.5.",
        "",
        markdown_table(
            ("Model", "Test metric", "Random patch", "Patient-level", "Difference"),
            leakage_rows(runs),
        ),
        "",
        "## Test metrics with 95% intervals",
        "",
        "Intervals are percentile intervals of 2,000 bootstrap resamples of the test *patients* "
        "(a drawn patient brings all its patches): patches of one patient are not independent, "
        "so a patch-level bootstrap would be too narrow. Under the random patch split the test "
        "patients also appear in training, so its intervals describe that leaky protocol.",
        "",
        markdown_table(INTERVAL_HEADER, interval_rows(runs, _group(planned, "paper"))),
        "",
    ]
    parts += _comparison_section(runs, planned)
    parts += _seed_section(runs, planned)
    parts += _best_section(runs, planned)
    parts += _calibration_section(runs, planned)
    parts += [
        "## Data",
        "",
        markdown_table(("Split protocol", "Train", "Validation", "Test"), data_rows(runs)),
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
        markdown_table(COMPARISON_HEADER, comparison_rows(runs, comparison)),
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
            ("Recipe", "Seeds", *[f"Test {title}" for _, title in INTERVAL_METRICS]),
            seed_rows(runs, {k: v for k, v in groups.items() if len(v) > 1}),
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
                *[fmt_interval(intervals.get("at_0.5", {}).get(k)) for k, _ in INTERVAL_METRICS],
            ],
            [
                "the same, threshold tuned on validation "
                f"({fmt(first.summary['test_at_validation_threshold']['threshold'])})",
                fmt_interval(intervals.get("at_0.5", {}).get("roc_auc")),
                fmt_interval(tuned.get("balanced_accuracy")),
                fmt_interval(tuned.get("f1")),
            ],
            ["targets", *[fmt(TARGETS[k], 2) for k, _ in INTERVAL_METRICS]],
        ]
        rows += [[name, "n/a", bacc, f1] for name, bacc, f1 in PUBLISHED]
        parts += [
            "## The best recipe (patient-level split)",
            "",
            f"Recipe: {_recipe(first.summary, first.config)}",
            "",
            "Every choice was made on the validation patients (ablations below); the test "
            "patients were scored once per recipe. The published results are patient-level "
            "too, but on the full set's published split: a context, not a like-for-like "
            "comparison.",
            "",
            markdown_table(
                ("Test", *[f"{title} [95% CI]" for _, title in INTERVAL_METRICS]), rows
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
            markdown_table(ABLATION_HEADER, ablation_rows(runs, ablations)),
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
        "the patch-weighted mean over 15 equal-width bins of |observed fraction of IDC - "
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
                worst_patient_rows(runs[run.name].summary),
            ),
            "",
        ]
    return parts


def write_report(
    workdir: str | pathlib.Path, planned: Sequence[PlannedRun], command: str | None = None
) -> pathlib.Path:
    """Writes <workdir>/report.md and its figures from the finished runs of the plan."""
    workdir = pathlib.Path(workdir)
    runs = load_runs(workdir, planned)
    for number, model in enumerate(PAPER_MODELS, start=2):
        figures.plot_accuracy_figure(workdir / FIGURES[model], model, runs, figure_number=number)
    chosen = _calibration_runs(planned)
    figures.plot_reliability_diagram(
        workdir / RELIABILITY_FIGURE,
        [(run.name, runs[run.name].summary["test_calibration"]) for run in chosen],
    )
    figures.plot_per_patient_distribution(
        workdir / PER_PATIENT_FIGURE,
        [(run.name, runs[run.name].summary["test_per_patient"]["patients"]) for run in chosen],
    )
    path = workdir / "report.md"
    path.write_text(render_report(runs, planned, command))
    return path
