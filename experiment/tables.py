"""The rows of report.md's tables, one function per table, from the runs' summaries."""

from __future__ import annotations

import json
import math
import pathlib
import statistics
from collections.abc import Mapping, Sequence

from experiment.markdown import fmt, fmt_duration, fmt_interval, fmt_signed, plural
from experiment.paper import (
    MODEL_TITLES,
    PAPER_ACCURACY,
    PAPER_MODELS,
    SPLIT_TITLES,
    SPLITS,
    PlannedRun,
)
from input_pipeline import KAGGLE_PATCHES, KAGGLE_PATIENTS
from trainer.rundir import Run

INTERVAL_METRICS = (("roc_auc", "ROC AUC"), ("balanced_accuracy", "balanced acc."), ("f1", "F1"))


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


def _hed_jitter(preprocess) -> str:
    in_optical_density = preprocess.get("hed_jitter_od", 0.0)
    if in_optical_density:
        return f"{in_optical_density:g} in optical density"
    return f"{preprocess.hed_jitter:g}"


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
            patients = plural(c["patients"], "patient")
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


def recipe(summary: Mapping, config) -> str:
    return (
        f"{plural(config.num_epochs, 'epoch')} of Adam (learning rate "
        f"{config.learning_rate:g}, {config.schedule} schedule, weight decay "
        f"{config.weight_decay:g}), softmax cross-entropy (label smoothing "
        f"{config.label_smoothing:g}, class weights {config.class_weights}), global batch "
        f"{config.global_batch_size}, width multiplier alpha {config.model.alpha:g}, "
        f"patches resized to {config.preprocess.image_size}x{config.preprocess.image_size} "
        f"({config.preprocess.resize_method}; dihedral augmentation "
        f"{'on' if config.preprocess.dihedral else 'off'}, HSV jitter "
        f"{config.preprocess.hsv_jitter:g}, HED jitter {_hed_jitter(config.preprocess)}); "
        f"evaluation after BatchNorm recalibration on {config.bn_recalibration_batches} "
        f"training batches ({'8-view TTA' if config.eval_tta else 'one view'}); seed "
        f"{config.seed}. Trained on {summary['devices']} {summary['backend']} device(s) in "
        f"{summary['compute_dtype']}."
    )


# The 245-patient data behind results/real_subset, which data/make_idc_245.py rebuilds from the
# Kaggle download: its parts' counts, to recognise a run trained on one of them.
IDC_245_MANIFEST = pathlib.Path(__file__).resolve().parents[1] / "data/idc_245/manifest.json"
IDC_245_REBUILD = (
    "python data/make_idc_245.py --kaggle=~/Downloads/archive.zip  # the Kaggle download (or its "
    "folder)"
)


def idc_245_part(summary: Mapping) -> str | None:
    """'subset' or 'slides' when the run's data are that part of data/idc_245, else None."""
    if summary.get("dataset") != "kaggle_idc" or not IDC_245_MANIFEST.is_file():
        return None
    counts = summary["data_info"]["counts"].values()
    held = (
        sum(part["patches"] for part in counts),
        sum(part["patients"] for part in counts),
        sum(part["positives"] for part in counts),
    )
    for name, part in json.loads(IDC_245_MANIFEST.read_text()).items():
        if held == (part["patches"], part["patients"], part["idc_patches"]):
            return name
    return None


def data_name(summary: Mapping) -> str:
    """The data set a run trained on, by name (never by the folder it sat in)."""
    if summary["dataset"] == "idc_sample":
        return "the real sample shipped in `data/idc_sample`"
    part = idc_245_part(summary)
    if part is not None:
        return (
            f"the 245-patient data of `data/idc_245/{part}` (`data/make_idc_245.py` rebuilds it "
            "from the Kaggle download)"
        )
    return f"`{summary['dataset']}`, the Kaggle set or a part of it"


def data_preparation(summary: Mapping) -> list[str]:
    """The command(s) that make the run's data from the Kaggle download, before reproduce.py."""
    return [IDC_245_REBUILD] if idc_245_part(summary) is not None else []


def data_statement(summary: Mapping) -> str:
    """What the runs trained and were tested on, against the whole Kaggle set."""
    counts = summary["data_info"]["counts"].values()
    patients = sum(part["patients"] for part in counts)
    patches = sum(part["patches"] for part in counts)
    return (
        f"**Data: {data_name(summary)}, {patients} of the Kaggle set's {KAGGLE_PATIENTS} patients "
        f"and {patches:,} of its {KAGGLE_PATCHES:,} patches ({patches / KAGGLE_PATCHES:.1%}).** "
        "The paper used every patch."
    )
