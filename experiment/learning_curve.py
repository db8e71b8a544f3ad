"""How test performance grows with the training data, and what a power law says beyond it.

Runs trained on stratified shares of the training patients (drawn independently; config key
`data.train_patients_fraction`) are scored on the same test patients. The error 1 - ROC AUC is
fitted by a power law in the number of training patches,

    1 - AUC(n) = a * n ** (-b),           a straight line in log-log space,

the usual form of learning curves (Hestness et al. 2017, "Deep learning scaling is predictable,
empirically"). How sure an extrapolation is comes from the same bootstrap over test patients as
the intervals: each resample re-scores every run on one resampled test set, is fitted, and gives
one extrapolated value; the spread of those values is the interval. It does not cover what the
fit cannot know (a curve that bends, patches of new patients being worth more than more patches
of the same ones), which the report must say in words.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from evaluation import uncertainty


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """1 - AUC = scale * n ** (-exponent)."""

    scale: float
    exponent: float

    def auc(self, n: float | np.ndarray) -> np.ndarray:
        return 1.0 - self.scale * np.asarray(n, np.float64) ** (-self.exponent)


def fit_power_law(num_patches: Sequence[float], roc_auc: Sequence[float]) -> PowerLaw:
    """Least squares of log(1 - AUC) on log(n)."""
    log_n = np.log(np.asarray(num_patches, np.float64))
    log_error = np.log(1.0 - np.asarray(roc_auc, np.float64))
    slope, intercept = np.polyfit(log_n, log_error, 1)
    return PowerLaw(scale=float(np.exp(intercept)), exponent=float(-slope))


def extrapolate(
    num_patches: Sequence[float],
    test_sets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    target_patches: float,
    *,
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """The fitted curve's ROC AUC at `target_patches`, with a bootstrap interval over patients.

    `test_sets[i]` is (labels, P(IDC), patients) of run i on the same test patches in the same
    order (the runs differ only in their training data).
    """
    labels, _, patients = test_sets[0]
    for other_labels, _, other_patients in test_sets[1:]:
        if not (np.array_equal(other_labels, labels) and np.array_equal(other_patients, patients)):
            raise ValueError("the runs of a learning curve must be scored on the same test set")
    aucs = [
        uncertainty.resampled_metrics(
            labels, p, patients, np.ones((1, len(np.unique(patients)))), metric_names=("roc_auc",)
        )["roc_auc"][0]
        for _, p, _ in test_sets
    ]
    law = fit_power_law(num_patches, aucs)
    counts = uncertainty.resample_counts(len(np.unique(patients)), num_resamples, seed)
    replicates = np.stack(
        [
            uncertainty.resampled_metrics(labels, p, patients, counts, metric_names=("roc_auc",))[
                "roc_auc"
            ]
            for _, p, _ in test_sets
        ],
        axis=1,
    )  # [resamples, runs]
    usable = np.all(np.isfinite(replicates) & (replicates < 1.0), axis=1)
    predicted = np.array(
        [fit_power_law(num_patches, row).auc(target_patches) for row in replicates[usable]]
    )
    alpha = (1.0 - confidence) / 2.0
    return {
        "num_patches": [float(n) for n in num_patches],
        "roc_auc": [float(a) for a in aucs],
        "fit": dataclasses.asdict(law),
        "target_patches": float(target_patches),
        "predicted_roc_auc": float(law.auc(target_patches)),
        "low": float(np.quantile(predicted, alpha)),
        "high": float(np.quantile(predicted, 1.0 - alpha)),
        "num_resamples_used": int(usable.sum()),
    }
