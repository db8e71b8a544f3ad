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


def per_patient_metrics(
    labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray, threshold: float = 0.5
) -> dict:
    """Mean and spread over patients of accuracy (all patients) and balanced accuracy.

    Balanced accuracy is only defined for patients with both classes; their count is reported.
    """
    labels = np.asarray(labels).astype(bool)
    predictions = np.asarray(probabilities) >= threshold
    patients = np.asarray(patients)
    accuracies, balanced = [], []
    for patient in np.unique(patients):
        rows = patients == patient
        patient_labels, patient_predictions = labels[rows], predictions[rows]
        accuracies.append(np.mean(patient_labels == patient_predictions))
        if patient_labels.any() and not patient_labels.all():
            recall = np.mean(patient_predictions[patient_labels])
            specificity = np.mean(~patient_predictions[~patient_labels])
            balanced.append((recall + specificity) / 2.0)
    accuracies, balanced = np.asarray(accuracies), np.asarray(balanced)
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
    """binary_metrics + per-patient metrics (+ the mean cross-entropy when given)."""
    report = binary_metrics(labels, probabilities, threshold)
    report.update(per_patient_metrics(labels, probabilities, patients, threshold))
    if mean_loss is not None:
        report["loss"] = float(mean_loss)
    return report
