"""Exact binary-classification metrics for IDC detection, in NumPy.

71.6% of the Kaggle patches are negative, so accuracy alone flatters a model: a classifier that
always says "no cancer" scores 0.716. Every report therefore puts the majority-class baseline
beside accuracy and adds threshold-free (ROC AUC, PR AUC) and class-balanced (balanced accuracy,
F1 of the IDC class) measures, and the spread over patients, the unit a pathologist cares about.

All functions take the P(IDC) of every example exactly once (the evaluation loop pads and masks
the last batch, then drops the padding before calling these).
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> dict[str, int]:
    """Counts of true/false negatives/positives; class 1 (IDC) is the positive class."""
    labels = np.asarray(labels).astype(bool)
    predictions = np.asarray(predictions).astype(bool)
    return {
        "tn": int(np.sum(~labels & ~predictions)),
        "fp": int(np.sum(~labels & predictions)),
        "fn": int(np.sum(labels & ~predictions)),
        "tp": int(np.sum(labels & predictions)),
    }


def _ratio(numerator: float, denominator: float) -> float:
    # An undefined ratio (no positives predicted, say) is reported as 0, as scikit-learn does
    # with zero_division=0, so that tables stay numeric.
    return float(numerator / denominator) if denominator else 0.0


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties 1/2.

    Computed with the Mann-Whitney U statistic over mid-ranks, so ties are exact; NaN when one
    class is absent.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    num_pos, num_neg = int(labels.sum()), int((~labels).sum())
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Mid-ranks: every member of a run of equal scores gets the mean of the run's ranks.
    _, run_start, run_length = np.unique(sorted_scores, return_index=True, return_counts=True)
    mid_ranks = run_start + (run_length + 1) / 2.0
    ranks[order] = np.repeat(mid_ranks, run_length)
    u_statistic = ranks[labels].sum() - num_pos * (num_pos + 1) / 2.0
    return float(u_statistic / (num_pos * num_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """PR AUC as average precision: sum over thresholds of (R_k - R_{k-1}) * P_k.

    The step-wise form (scikit-learn's `average_precision_score`), not the trapezoid, which is
    optimistic for precision-recall curves. NaN when there is no positive.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    num_pos = int(labels.sum())
    if num_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # One point per distinct threshold: the last index of each run of equal scores.
    last_of_run = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(scores) - 1]
    true_positives = np.cumsum(sorted_labels)[last_of_run]
    predicted_positives = last_of_run + 1
    precision = true_positives / predicted_positives
    recall = true_positives / num_pos
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float = 0.5) -> dict:
    """Every threshold-dependent and threshold-free metric of one evaluation."""
    labels = np.asarray(labels).astype(np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = probabilities >= threshold
    counts = confusion_matrix(labels, predictions)
    tn, fp, fn, tp = counts["tn"], counts["fp"], counts["fn"], counts["tp"]
    num_examples = len(labels)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    positive_fraction = _ratio(tp + fn, num_examples)
    return {
        "num_examples": num_examples,
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, num_examples),
        "majority_baseline": max(positive_fraction, 1.0 - positive_fraction),
        "balanced_accuracy": (recall + specificity) / 2.0,
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "roc_auc": roc_auc(labels, probabilities),
        "pr_auc": average_precision(labels, probabilities),
        **counts,
    }


def best_threshold(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The threshold that maximises balanced accuracy (Youden's J) on these examples.

    Chosen on validation and then applied, unchanged, to test. Candidates are the midpoints
    between consecutive distinct probabilities, so the choice does not sit on an example.
    """
    labels = np.asarray(labels).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_pos, num_neg = int(labels.sum()), int((~labels).sum())
    if num_pos == 0 or num_neg == 0:
        return 0.5
    distinct = np.unique(probabilities)
    candidates = np.r_[distinct[0] - 1e-6, (distinct[:-1] + distinct[1:]) / 2.0, distinct[-1]]
    order = np.argsort(probabilities, kind="mergesort")
    sorted_probabilities, sorted_labels = probabilities[order], labels[order]
    # Examples strictly below a candidate are predicted negative.
    num_below = np.searchsorted(sorted_probabilities, candidates, side="left")
    negatives_below = np.r_[0, np.cumsum(~sorted_labels)][num_below]
    positives_below = np.r_[0, np.cumsum(sorted_labels)][num_below]
    youden = negatives_below / num_neg + (num_pos - positives_below) / num_pos - 1.0
    return float(candidates[int(np.argmax(youden))])


CALIBRATION_BINS = 15


def reliability_curve(
    labels: np.ndarray, probabilities: np.ndarray, num_bins: int = CALIBRATION_BINS
) -> dict:
    """Observed fraction of IDC against mean predicted P(IDC), in equal-width bins of P(IDC).

    Bin k holds the P(IDC) in [edges[k], edges[k + 1]), edges = linspace(0, 1, num_bins + 1);
    the last bin also holds 1. Returns the edges and, per bin, `count`, `mean_predicted` and
    `observed_fraction` (NaN in an empty bin).
    """
    labels = np.asarray(labels).astype(np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if np.any((probabilities < 0) | (probabilities > 1) | np.isnan(probabilities)):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bins = np.minimum(np.searchsorted(edges, probabilities, side="right") - 1, num_bins - 1)
    count = np.bincount(bins, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(bins, probabilities, minlength=num_bins) / count
        observed_fraction = np.bincount(bins, labels, minlength=num_bins) / count
    return {
        "bin_edges": edges,
        "count": count,
        "mean_predicted": mean_predicted,
        "observed_fraction": observed_fraction,
    }


def _calibration_gaps(curve: dict) -> tuple[np.ndarray, np.ndarray]:
    """(|observed - predicted|, count) of the non-empty bins of a reliability curve."""
    count = np.asarray(curve["count"])
    filled = count > 0
    gaps = np.abs(
        np.asarray(curve["observed_fraction"], np.float64)[filled]
        - np.asarray(curve["mean_predicted"], np.float64)[filled]
    )
    return gaps, count[filled]


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, num_bins: int = CALIBRATION_BINS
) -> float:
    """ECE = sum over bins of (count / N) * |observed fraction of IDC - mean predicted P(IDC)|.

    The binary, positive-class form, over `reliability_curve`'s equal-width bins of P(IDC) on
    [0, 1]; not the top-label form, which bins the confidence max(p, 1 - p) against the
    accuracy of the predicted class. P(IDC) is what the model reports and what a reader takes
    as a risk ("30% of patches scored 0.3 are IDC"): the positive-class form checks exactly that
    statement over the whole range of P(IDC), whereas the top-label form only covers [0.5, 1]
    and folds an error at P(IDC) = 0.2 into the same bin as one at 0.8. NaN without examples.
    A binned estimate: it depends on the bins and is biased upwards when bins hold few examples.
    """
    gaps, count = _calibration_gaps(reliability_curve(labels, probabilities, num_bins))
    return float(np.sum(count / count.sum() * gaps)) if len(count) else float("nan")


def maximum_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, num_bins: int = CALIBRATION_BINS
) -> float:
    """MCE: the largest |observed fraction - mean predicted| over the non-empty bins."""
    gaps, _ = _calibration_gaps(reliability_curve(labels, probabilities, num_bins))
    return float(gaps.max()) if len(gaps) else float("nan")


def calibration_report(
    labels: np.ndarray, probabilities: np.ndarray, num_bins: int = CALIBRATION_BINS
) -> dict:
    """The reliability curve with its ECE and MCE (a run's `test_calibration`)."""
    return {
        "num_bins": num_bins,
        "ece": expected_calibration_error(labels, probabilities, num_bins),
        "mce": maximum_calibration_error(labels, probabilities, num_bins),
        **reliability_curve(labels, probabilities, num_bins),
    }


def per_patient_table(
    labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray, threshold: float = 0.5
) -> list[dict]:
    """One row per patient, in increasing patient id: its patches, IDC patches and metrics.

    `accuracy` at `threshold`; `balanced_accuracy` and `roc_auc` only where the patient has both
    classes (NaN otherwise: a patient with no IDC patch has no recall, and no AUC).
    """
    labels = np.asarray(labels).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = probabilities >= threshold
    ids, inverse = np.unique(np.asarray(patients), return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    rows = []
    for patient, group in zip(ids, np.split(order, np.cumsum(np.bincount(inverse))[:-1])):
        patient_labels, patient_predictions = labels[group], predictions[group]
        both_classes = bool(patient_labels.any() and not patient_labels.all())
        balanced = roc = float("nan")
        if both_classes:
            recall = np.mean(patient_predictions[patient_labels])
            specificity = np.mean(~patient_predictions[~patient_labels])
            balanced = float((recall + specificity) / 2.0)
            roc = roc_auc(patient_labels, probabilities[group])
        rows.append(
            {
                "patient": patient.item(),
                "patches": len(group),
                "idc_patches": int(patient_labels.sum()),
                "accuracy": float(np.mean(patient_labels == patient_predictions)),
                "balanced_accuracy": balanced,
                "roc_auc": roc,
            }
        )
    return rows


def per_patient_distribution(table: list[dict], num_worst: int = 5) -> dict:
    """How per-patient ROC AUC and balanced accuracy spread over the patients where defined.

    For each: the number of patients where it is defined, min, quartiles (NumPy's linear
    percentiles) and max; and the `num_worst` patients with the lowest value (full rows, so
    their patch counts come along; ties in increasing patient id).
    """
    summary: dict = {"num_patients": len(table)}
    for key in ("roc_auc", "balanced_accuracy"):
        defined = [row for row in table if not np.isnan(row[key])]
        values = np.array([row[key] for row in defined], dtype=np.float64)
        quantiles = np.percentile(values, [0, 25, 50, 75, 100]) if len(values) else [np.nan] * 5
        summary[key] = {
            "num_defined": len(values),
            **{
                name: float(q)
                for name, q in zip(("min", "q1", "median", "q3", "max"), quantiles, strict=True)
            },
        }
        worst = sorted(defined, key=lambda row: row[key])[:num_worst]  # stable: by patient id
        summary[f"worst_by_{key}"] = worst
    return summary


def per_patient_metrics(
    labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray, threshold: float = 0.5
) -> dict:
    """Mean and spread over patients of accuracy (all patients) and balanced accuracy.

    Balanced accuracy is only defined for patients with both classes; their count is reported.
    """
    table = per_patient_table(labels, probabilities, patients, threshold)
    accuracies = np.array([row["accuracy"] for row in table])
    balanced = np.array([row["balanced_accuracy"] for row in table])
    balanced = balanced[~np.isnan(balanced)]
    return {
        "num_patients": len(accuracies),
        "patient_accuracy_mean": float(accuracies.mean()) if len(accuracies) else float("nan"),
        "patient_accuracy_std": float(accuracies.std()) if len(accuracies) else float("nan"),
        "patient_accuracy_min": float(accuracies.min()) if len(accuracies) else float("nan"),
        "num_patients_both_classes": len(balanced),
        "patient_balanced_accuracy_mean": float(balanced.mean()) if len(balanced) else float("nan"),
        "patient_balanced_accuracy_std": float(balanced.std()) if len(balanced) else float("nan"),
    }


def full_report(
    labels: np.ndarray,
    probabilities: np.ndarray,
    patients: np.ndarray,
    *,
    threshold: float = 0.5,
    mean_loss: float | None = None,
) -> dict:
    """binary_metrics + ECE + per-patient metrics (+ the mean cross-entropy when given)."""
    report = binary_metrics(labels, probabilities, threshold)
    report["ece"] = expected_calibration_error(labels, probabilities)
    report.update(per_patient_metrics(labels, probabilities, patients, threshold))
    if mean_loss is not None:
        report["loss"] = float(mean_loss)
    return report
