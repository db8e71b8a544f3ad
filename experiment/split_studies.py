"""Studies of the split itself on the frozen test's patients: a nested learning curve, the leak of
the paper's patch-level split measured on the same patients, and the published split.

    text = "\\n".join(render(results_dir))       # a section of results/frozen_test/report.md

- Learning curve: MobileNetV1 trained on nested stratified shares of the frozen split's training
  patients (`data.train_patients_fraction`, `splits.fewer_training_patients`: each share holds
  the smaller ones), all scored on the same 49 test patients.
- Leakage: the "leaky" split moves half of every validation and test patient's patches into
  training; its test patches are the other halves. The patient-split run (`v1_patch`) is scored
  on exactly those patches, so the difference is the leak alone (and the 5,700 more training
  patches it brings), on the same patients.
- The published split (Janowczyk & Madabhushi 2016): its patient lists, as far as the 245
  patients hold them, scored on its own test patients.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from evaluation import metrics
from experiment import paired
from experiment.markdown import fmt, fmt_interval, fmt_signed, markdown_table
from experiment.predictions import PatchPredictions, split_predictions
from experiment.scoring import scored_intervals

LEARNING_CURVE = ("v1_patch_0.25", "v1_patch_0.5", "v1_patch")
NUM_RESAMPLES = 2000


def _finished(directory: pathlib.Path, run: str) -> bool:
    return (directory / run / "summary.json").is_file()


def _summary(directory: pathlib.Path, run: str) -> dict:
    return json.loads((directory / run / "summary.json").read_text())


def same_patches(table: PatchPredictions, like: PatchPredictions) -> PatchPredictions:
    """The rows of `table` of the patches of `like` (by patient and grid position), in `like`'s
    order; raises when `table` lacks one."""
    index = {
        key: i
        for i, key in enumerate(zip(table.patient.tolist(), table.x.tolist(), table.y.tolist()))
    }
    keys = zip(like.patient.tolist(), like.x.tolist(), like.y.tolist())
    rows = np.array([index[key] for key in keys], np.int64)
    return table.select(rows)


def _difference_cell(report: dict, name: str) -> str:
    entry = report[name]
    return (
        f"{fmt_signed(entry['difference'])} [{fmt_signed(entry['low'])}, "
        f"{fmt_signed(entry['high'])}]"
    )


def learning_curve(directory: pathlib.Path) -> list[str]:
    runs = [run for run in LEARNING_CURVE if _finished(directory, run)]
    if len(runs) < 2:
        return []
    rows = []
    full = runs[-1]
    full_method = paired.Method.of(
        full,
        split_predictions(directory / full, "test"),
        selection=split_predictions(directory / full, "validation"),
    )
    for run in runs:
        counts = _summary(directory, run)["data_info"]["counts"]["train"]
        test = split_predictions(directory / run, "test")
        validation = split_predictions(directory / run, "validation")
        at_half, _ = scored_intervals(test, 0.5)
        cell = ""
        if run != full:
            report = paired.paired_differences(
                paired.Method.of(run, test, selection=validation),
                full_method,
                num_resamples=NUM_RESAMPLES,
            )
            cell = _difference_cell(report, "roc_auc")
        rows.append(
            [
                f"`{run}`",
                f"{counts['patients']} ({counts['patches']:,})",
                fmt(metrics.roc_auc(validation.label, validation.p_idc)),
                fmt_interval(at_half["roc_auc"]),
                cell,
            ]
        )
    return [
        "## Learning curve, nested (MobileNetV1, patch only)",
        "",
        "Shares of the frozen split's 147 training patients, each containing the smaller ones, "
        "stratified by IDC fraction; the same 49 test patients. Paired difference: all "
        "training patients minus the share, on the same resamples of test patients.",
        "",
        markdown_table(
            (
                "Run",
                "Training patients (patches)",
                "Val. ROC AUC",
                "Test ROC AUC [95% CI]",
                "All minus this share",
            ),
            rows,
        ),
        "",
    ]


def leakage(directory: pathlib.Path) -> list[str]:
    if not (_finished(directory, "v1_leaky") and _finished(directory, "v1_patch")):
        return []
    leaky_test = split_predictions(directory / "v1_leaky", "test")
    leaky_val = split_predictions(directory / "v1_leaky", "validation")
    honest_test = same_patches(split_predictions(directory / "v1_patch", "test"), leaky_test)
    honest_val = same_patches(split_predictions(directory / "v1_patch", "validation"), leaky_val)
    report = paired.paired_differences(
        paired.Method.of("patient split", honest_test, selection=honest_val),
        paired.Method.of("leaky split", leaky_test, selection=leaky_val),
        num_resamples=NUM_RESAMPLES,
    )
    rows = []
    for name, test in (
        ("patient split (`v1_patch`)", honest_test),
        ("leaky split (`v1_leaky`)", leaky_test),
    ):
        at_half, _ = scored_intervals(test, 0.5)
        accuracy = float(np.mean((test.p_idc >= 0.5) == test.label))
        rows.append(
            [
                name,
                fmt(accuracy),
                fmt_interval(at_half["roc_auc"]),
                fmt_interval(at_half["balanced_accuracy"]),
            ]
        )
    rows.append(
        [
            "leaky minus patient split (paired)",
            "",
            _difference_cell(report, "roc_auc"),
            _difference_cell(report, "balanced_accuracy"),
        ]
    )
    counts = _summary(directory, "v1_leaky")["data_info"]["counts"]
    return [
        "## The leak of a patch-level split, on the same patients",
        "",
        "The reproduced paper split patches at random, so a test patient's other patches were "
        "in training. Here the 'leaky' split moves half of every validation and test patient's "
        f"patches into training ({counts['train']['patches']:,} training patches); both runs "
        f"are scored on the same {len(leaky_test.label):,} patches of the 49 test patients. "
        "Accuracy and balanced accuracy at 0.5; the paired row's balanced accuracy re-chooses "
        "each run's threshold on its validation patches in every resample.",
        "",
        markdown_table(("Run", "Accuracy at 0.5", "ROC AUC [95% CI]", "Bal. acc. at 0.5"), rows),
        "",
    ]


def published(directory: pathlib.Path) -> list[str]:
    if not _finished(directory, "v1_published"):
        return []
    summary = _summary(directory, "v1_published")
    test = split_predictions(directory / "v1_published", "test")
    validation = split_predictions(directory / "v1_published", "validation")
    at_half, tuned = scored_intervals(
        test, metrics.best_threshold(validation.label, validation.p_idc)
    )
    counts = summary["data_info"]["counts"]
    notes = "; ".join(summary["data_info"].get("notes", []))
    return [
        "## The published split (MobileNetV1, patch only)",
        "",
        f"Janowczyk & Madabhushi's patient lists as far as the 245 patients hold them ({notes}): "
        f"{counts['train']['patients']} / {counts['validation']['patients']} / "
        f"{counts['test']['patients']} patients. The literature's figures on it are of the full "
        "lists (balanced accuracy 0.84-0.89, F1 0.72-0.90).",
        "",
        markdown_table(
            (
                "Test patients (patches)",
                "ROC AUC [95% CI]",
                "Bal. acc. at val. threshold",
                "F1 at val. threshold",
            ),
            [
                [
                    f"{counts['test']['patients']} ({counts['test']['patches']:,})",
                    fmt_interval(at_half["roc_auc"]),
                    fmt_interval(tuned["balanced_accuracy"]),
                    fmt_interval(tuned["f1"]),
                ]
            ],
        ),
        "",
    ]


def render(directory: str | pathlib.Path) -> list[str]:
    directory = pathlib.Path(directory)
    return [*learning_curve(directory), *leakage(directory), *published(directory)]
