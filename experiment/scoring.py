"""Scoring a method's P(IDC) on the test patients, as every table of the study does.

    scored = Scored(name, validation_table, test_table)       # threshold chosen on validation
    cells = metric_cells(scored.test, scored.threshold)        # the METRIC_COLUMNS of a row

ROC AUC and the 0.5 threshold need no choice; balanced accuracy and F1 are at the threshold that
maximises balanced accuracy on the validation patients. Intervals: the bootstrap over test
patients of summary.json (`evaluation.uncertainty`, 2,000 resamples, seed 0: every row is scored on
the same resamples of the same patients).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from evaluation import metrics, uncertainty
from experiment.markdown import fmt, fmt_interval
from experiment.predictions import PatchPredictions
from input_pipeline import windows

METRIC_COLUMNS = (
    "ROC AUC [95% CI]",
    "Bal. acc. at 0.5",
    "Bal. acc. at val. threshold [95% CI]",
    "F1 at val. threshold [95% CI]",
    "ECE",
)


@dataclasses.dataclass(frozen=True)
class Scored:
    """P(IDC) of one method on validation and test, and the threshold chosen on validation."""

    name: str
    validation: PatchPredictions
    test: PatchPredictions
    summary: Mapping = dataclasses.field(default_factory=dict)  # the run's summary.json

    @property
    def threshold(self) -> float:
        return metrics.best_threshold(self.validation.label, self.validation.p_idc)


def scored_intervals(
    test: PatchPredictions, threshold: float, calls: PatchPredictions | None = None
) -> tuple[dict, dict]:
    """Bootstrap intervals over test patients: (everything at 0.5, balanced accuracy and F1 of
    the calls at `threshold`), the calls from `calls`' P(IDC) (default: `test`'s)."""
    calls = test if calls is None else calls
    intervals = dict(num_resamples=2000, seed=0)
    at_half = uncertainty.bootstrap_intervals(
        test.label, test.p_idc, test.patient, threshold=0.5, **intervals
    )
    tuned = uncertainty.bootstrap_intervals(
        calls.label,
        calls.p_idc,
        calls.patient,
        threshold=threshold,
        metric_names=("balanced_accuracy", "f1"),
        **intervals,
    )
    return at_half, tuned


def metric_cells(test: PatchPredictions, threshold: float) -> list[str]:
    at_half, tuned = scored_intervals(test, threshold)
    return [
        fmt_interval(at_half["roc_auc"]),
        fmt(at_half["balanced_accuracy"]["estimate"]),
        fmt_interval(tuned["balanced_accuracy"]),
        fmt_interval(tuned["f1"]),
        fmt(metrics.expected_calibration_error(test.label, test.p_idc)),
    ]


def whole_slide_patients(table: PatchPredictions) -> np.ndarray:
    """The patients of `table` whose patches are whole slides (dense on their grid)."""
    return windows.whole_slide_patients(table.patient, table.x, table.y)


def mean_p_idc(tables: list[PatchPredictions]) -> PatchPredictions:
    """The ensemble of runs scored on the same patches (same split: the same rows in order)."""
    for table in tables[1:]:
        if not (
            np.array_equal(table.patient, tables[0].patient)
            and np.array_equal(table.x, tables[0].x)
            and np.array_equal(table.y, tables[0].y)
        ):
            raise ValueError("an ensemble's runs must be scored on the same patches")
    return tables[0].with_p_idc(np.mean([t.p_idc for t in tables], axis=0))
