"""Confidence intervals of the test metrics by a bootstrap over patients.

The patches of one patient are not independent observations: they are tiles of one slide, of one
stain and one tumour, and a model that misreads a patient misreads many of its patches together.
The unit of independence is the patient. A bootstrap that resamples patches treats the ~10^4
patches of a test split as that many independent draws and gives intervals that are far too
narrow; `bootstrap_intervals` resamples *patients* with replacement (all patches of a drawn
patient come along; a patient drawn twice counts twice) and recomputes each metric on every
resampled set. The interval is the percentile interval of those replicates.

Speed. A resample is a vector c of how often each patient is drawn, and every metric of the
resampled set (the rows of patient a repeated c_a times) follows exactly from per-patient
statistics, computed once:
- confusion counts (accuracy, balanced accuracy, F1): c @ [tn, fp, fn, tp] per patient;
- ROC AUC: the Mann-Whitney U of the resampled set is c^T H c, where H[a, b] counts the pairs
  (IDC patch of patient a, non-IDC patch of patient b) ordered correctly, ties 1/2; every term
  is an integer or half-integer, so U and the AUC equal `metrics.roc_auc` on the materialised
  resample to the last bit;
- PR AUC (average precision): at each distinct score holding an IDC patch, the true and the
  predicted positives at or above it are sums of c_a times per-patient tallies, in integers
  (the one part whose cost grows with the resamples times the distinct scores).
How long it takes: benchmarks/RESULTS.md, section "Bootstrap intervals over patients", has the
figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluation import metrics

BOOTSTRAP_METRICS = ("roc_auc", "balanced_accuracy", "f1", "pr_auc", "accuracy")
THRESHOLD_METRICS = ("balanced_accuracy", "f1", "accuracy")  # those that depend on a threshold
# Resamples per block of the PR AUC computation: keeps [block, distinct scores] arrays ~2 MB.
_BLOCK_ELEMENTS = 1 << 18


def resample_counts(num_patients: int, num_resamples: int, seed: int) -> np.ndarray:
    """[num_resamples, num_patients]: how often each patient is drawn in each resample.

    Each resample draws `num_patients` patients uniformly with replacement; column a is the
    a-th patient in increasing id (the order of `np.unique(patients)`).
    """
    if num_patients < 1:
        raise ValueError("a bootstrap over patients needs at least one patient")
    draws = np.random.default_rng(seed).integers(0, num_patients, (num_resamples, num_patients))
    flat = (draws + num_patients * np.arange(num_resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=num_resamples * num_patients)
    return counts.reshape(num_resamples, num_patients)


def _confusion_by_patient(labels, predictions, index, num_patients) -> np.ndarray:
    """[num_patients, 4]: tn, fp, fn, tp of each patient."""
    negatives = ~labels
    cells = (negatives & ~predictions, negatives & predictions)
    cells += (labels & ~predictions, labels & predictions)
    return np.stack([np.bincount(index, c, minlength=num_patients) for c in cells], axis=1)


def threshold_metrics(confusion: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and F1 of [R, 4] confusion counts, as `binary_metrics`
    computes them (same operations, so the same floats), NaN where undefined: balanced accuracy
    without both classes, F1 without an IDC patch."""
    tn, fp, fn, tp = confusion.T
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        values = {
            "accuracy": (tp + tn) / (tn + fp + fn + tp),
            "balanced_accuracy": np.where(
                (tp + fn > 0) & (tn + fp > 0), (recall + specificity) / 2.0, np.nan
            ),
            "f1": np.where(tp + fn > 0, f1, np.nan),
        }
    return {name: values[name] for name in names}


def _mann_whitney_pairs(labels, scores, index, num_patients) -> np.ndarray:
    """H[a, b] = #{IDC i of a, non-IDC j of b: s_i > s_j} + #{... s_i == s_j} / 2."""
    positive_scores, positive_patients = scores[labels], index[labels]
    pairs = np.zeros((num_patients, num_patients))
    for b in range(num_patients):
        negatives = np.sort(scores[~labels & (index == b)])
        below = np.searchsorted(negatives, positive_scores, side="left")
        below_or_tied = np.searchsorted(negatives, positive_scores, side="right")
        pairs[:, b] = np.bincount(
            positive_patients, (below + below_or_tied) / 2.0, minlength=num_patients
        )
    return pairs


class _ThresholdEvents:
    """Patches of one class tallied per (threshold, patient), in increasing threshold index.

    A resample's per-threshold total, sum over patients of c_a * tally, is then a gather and a
    segmented sum over the few (threshold, patient) pairs that occur, not a dense product.
    """

    def __init__(self, threshold_index: np.ndarray, patient_index: np.ndarray, num_patients: int):
        keys, tally = np.unique(threshold_index * num_patients + patient_index, return_counts=True)
        thresholds, self.patients = np.divmod(keys, num_patients)
        self.tally = tally.astype(np.float64)
        self.starts = np.flatnonzero(np.r_[True, np.diff(thresholds) > 0])
        self.columns = thresholds[self.starts]

    def totals(self, counts: np.ndarray, num_thresholds: int) -> np.ndarray:
        out = np.zeros((len(counts), num_thresholds))
        if len(self.tally):
            weighted = counts[:, self.patients] * self.tally
            out[:, self.columns] = np.add.reduceat(weighted, self.starts, axis=1)
        return out


def _resampled_average_precision(labels, scores, index, counts) -> np.ndarray:
    """Average precision sum_k (R_k - R_{k-1}) P_k of each weighted resample; NaN without IDC.

    Thresholds are the distinct scores of IDC patches, descending (the others add no recall).
    A non-IDC patch counts as predicted positive at every threshold at or below its score.
    """
    num_patients = counts.shape[1]
    ascending = np.unique(scores[labels])
    num_thresholds = len(ascending)
    # Index (descending order) of the first threshold at or below each score; G = none.
    first = num_thresholds - np.searchsorted(ascending, scores, side="right")
    positives = _ThresholdEvents(first[labels], index[labels], num_patients)
    below_all = first == num_thresholds
    counted = ~labels & ~below_all
    negatives = _ThresholdEvents(first[counted], index[counted], num_patients)
    values = np.full(len(counts), np.nan)
    width = max(1, num_thresholds, len(positives.tally), len(negatives.tally))
    block = max(1, _BLOCK_ELEMENTS // width)
    for start in range(0, len(counts), block):
        c = counts[start : start + block]
        new_true = positives.totals(c, num_thresholds)  # IDC patches at each threshold
        true_positives = np.cumsum(new_true, axis=1)
        predicted = np.cumsum(negatives.totals(c, num_thresholds), axis=1)
        predicted += true_positives
        num_positive = true_positives[:, -1:] if num_thresholds else np.zeros((len(c), 1))
        # Recall steps and precisions; both zero where nothing is predicted positive yet.
        np.divide(new_true, num_positive, out=new_true, where=num_positive > 0)
        np.divide(true_positives, predicted, out=true_positives, where=predicted > 0)
        new_true *= true_positives
        has_idc = num_positive[:, 0] > 0
        values[start : start + block][has_idc] = np.sum(new_true, axis=1)[has_idc]
    return values


def resampled_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    patients: np.ndarray,
    counts: np.ndarray,
    *,
    threshold: float = 0.5,
    metric_names: Sequence[str] = BOOTSTRAP_METRICS,
) -> dict[str, np.ndarray]:
    """Each metric on each resample given by `counts` ([R, patients], `resample_counts`).

    Row r is the metric on the set where every patch of the a-th patient (increasing id) is
    repeated counts[r, a] times; NaN where the metric is undefined on that set (one class absent
    for ROC AUC and balanced accuracy, no IDC patch for PR AUC and F1).
    """
    unknown = set(metric_names) - set(BOOTSTRAP_METRICS)
    if unknown:
        raise ValueError(f"no bootstrap for {sorted(unknown)}; known: {BOOTSTRAP_METRICS}")
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(probabilities, dtype=np.float64)
    _, index = np.unique(np.asarray(patients), return_inverse=True)
    counts = np.asarray(counts, dtype=np.float64)
    num_patients = counts.shape[1]
    if index.size and index.max() + 1 != num_patients:
        raise ValueError(f"counts has {num_patients} patients, the data {index.max() + 1}")
    values = {}
    threshold_names = [name for name in metric_names if name in THRESHOLD_METRICS]
    if threshold_names:
        confusion = _confusion_by_patient(labels, scores >= threshold, index, num_patients)
        values.update(threshold_metrics(counts @ confusion, threshold_names))
    if "roc_auc" in metric_names:
        pairs = _mann_whitney_pairs(labels, scores, index, num_patients)
        u_statistic = np.sum((counts @ pairs) * counts, axis=1)
        num_positive = counts @ np.bincount(index, labels, minlength=num_patients)
        num_negative = counts @ np.bincount(index, ~labels, minlength=num_patients)
        with np.errstate(invalid="ignore", divide="ignore"):
            values["roc_auc"] = np.where(
                (num_positive > 0) & (num_negative > 0),
                u_statistic / (num_positive * num_negative),
                np.nan,
            )
    if "pr_auc" in metric_names:
        values["pr_auc"] = _resampled_average_precision(labels, scores, index, counts)
    return {name: values[name] for name in metric_names}


def bootstrap_intervals(
    labels: np.ndarray,
    probabilities: np.ndarray,
    patients: np.ndarray,
    *,
    threshold: float = 0.5,
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    metric_names: Sequence[str] = BOOTSTRAP_METRICS,
) -> dict:
    """Percentile bootstrap intervals over patients of ROC AUC, balanced accuracy, F1 (IDC),
    PR AUC and accuracy (threshold metrics at `threshold`).

    Per metric: `estimate` (`metrics.binary_metrics` on the data as given, but NaN where the
    metric is undefined, e.g. balanced accuracy of a set without IDC, where it reports 0);
    `low` and `high`, the (1 - confidence) / 2 and (1 + confidence) / 2 percentiles (NumPy's
    linear interpolation) of the replicates; `num_resamples_used`; and `num_resamples_dropped`,
    the resamples on which the metric is undefined, left out of its interval. Deterministic for
    a seed; the same seed draws the same resamples at every threshold.

    With a single patient there is no interval (`num_resamples` 0, low and high NaN, a `note`
    says why); with few patients (fewer than ~20) percentile intervals are too narrow, as they
    cannot show more variation between patients than the few at hand.

    Under a random-patch split the test patients also gave patches to training; resampling
    patients still respects the correlation of their test patches, but the interval is then
    one of a leaky estimate: it measures sampling noise, not the bias of the leak.
    """
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    num_patients = len(np.unique(np.asarray(patients)))
    # Resampling a single patient gives back the data every time: a zero-width interval that
    # would read as certainty. No interval then (low and high NaN).
    num_drawn = num_resamples if num_patients >= 2 else 0
    counts = resample_counts(num_patients, num_drawn, seed)
    options = dict(threshold=threshold, metric_names=metric_names)
    replicates = resampled_metrics(labels, probabilities, patients, counts, **options)
    # The estimates are `binary_metrics`' values (PR AUC there sums in another order), NaN where
    # the metric is undefined on the data as given.
    on_data = resampled_metrics(
        labels, probabilities, patients, np.ones((1, num_patients)), **options
    )
    point = metrics.binary_metrics(labels, probabilities, threshold)
    estimates = {
        name: np.nan if np.isnan(on_data[name][0]) else point[name] for name in metric_names
    }
    tails = [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)]
    report = {
        "method": "percentile bootstrap over patients",
        "num_resamples": num_drawn,
        "confidence": confidence,
        "seed": seed,
        "threshold": float(threshold),
        "num_patients": num_patients,
        "num_examples": len(np.asarray(labels)),
    }
    if num_drawn == 0:
        report["note"] = "one patient: no interval (every resample of it is the data itself)"
    for name in metric_names:
        defined = replicates[name][~np.isnan(replicates[name])]
        low, high = np.percentile(defined, tails) if len(defined) else (np.nan, np.nan)
        report[name] = {
            "estimate": float(estimates[name]),
            "low": float(low),
            "high": float(high),
            "num_resamples_used": len(defined),
            "num_resamples_dropped": num_drawn - len(defined),
        }
    return report
