"""Every metric against independent computations: naive loops, hand counts and scikit-learn.

The metrics are NumPy (trainer/metrics.py): scikit-learn, the library such metrics are checked
against, is the oracle here, not a dependency of training. Measured on 2 cores: importing
sklearn.metrics takes about 3 s, and its ROC AUC is 1.5-16x slower per call than the NumPy one,
which matters for a bootstrap of a few thousand resamples.
"""

import itertools

import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics

from trainer import metrics

LABELS = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1, 0])
PROBS = np.array([0.1, 0.6, 0.8, 0.4, 0.2, 0.9, 0.6, 0.3, 0.6, 0.05])


def test_confusion_and_threshold_metrics_by_hand():
    # At 0.5: predicted positive = indices 1, 2, 5, 6, 8.
    # tp = {2, 5, 8} = 3, fp = {1, 6} = 2, fn = {3} = 1, tn = {0, 4, 7, 9} = 4.
    m = metrics.binary_metrics(LABELS, PROBS, 0.5)
    assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (4, 2, 1, 3)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["majority_baseline"] == pytest.approx(6 / 10)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))


def _naive_roc_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _naive_average_precision(labels, scores):
    # Sweep every distinct threshold from high to low; AP = sum (R_k - R_{k-1}) P_k.
    total, previous_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        predicted = [s >= t for s in scores]
        tp = sum(p and y for p, y in zip(predicted, labels))
        precision = tp / sum(predicted)
        recall = tp / sum(labels)
        total += (recall - previous_recall) * precision
        previous_recall = recall
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_metrics_match_naive_definitions_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.5 + 0.3 * labels, 2)  # rounding creates ties
    assert metrics.roc_auc(labels, scores) == pytest.approx(_naive_roc_auc(labels, scores))
    assert metrics.average_precision(labels, scores) == pytest.approx(
        _naive_average_precision(labels, scores)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 500)
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)  # with ties
    assert metrics.roc_auc(labels, scores) == pytest.approx(
        sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12
    )
    assert metrics.average_precision(labels, scores) == pytest.approx(
        sklearn_metrics.average_precision_score(labels, scores), abs=1e-12
    )
    report = metrics.binary_metrics(labels, scores, 0.5)
    predictions = scores >= 0.5
    tn, fp, fn, tp = sklearn_metrics.confusion_matrix(labels, predictions).ravel()
    assert (report["tn"], report["fp"], report["fn"], report["tp"]) == (tn, fp, fn, tp)
    for key, oracle in (
        ("balanced_accuracy", sklearn_metrics.balanced_accuracy_score),
        ("f1", sklearn_metrics.f1_score),
        ("precision", sklearn_metrics.precision_score),
        ("recall", sklearn_metrics.recall_score),
        ("accuracy", sklearn_metrics.accuracy_score),
    ):
        assert report[key] == pytest.approx(oracle(labels, predictions), abs=1e-12), key
    # Youden's J: the best threshold reaches the maximum of TPR - FPR along sklearn's ROC curve.
    fpr, tpr, _ = sklearn_metrics.roc_curve(labels, scores)
    chosen = metrics.binary_metrics(labels, scores, metrics.best_threshold(labels, scores))
    assert 2 * chosen["balanced_accuracy"] - 1 == pytest.approx(np.max(tpr - fpr), abs=1e-12)


def test_auc_known_values():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert metrics.roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    # Ranking pos, neg, pos: precisions 1 at R=1/2 and 2/3 at R=1 -> AP = 1/2 + 1/3.
    assert metrics.average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(5 / 6)
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_best_threshold_maximises_balanced_accuracy_over_brute_force():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    chosen = metrics.best_threshold(labels, probs)
    best_brute = max(
        metrics.binary_metrics(labels, probs, t)["balanced_accuracy"]
        for t in np.r_[0.0, np.unique(probs), 1.01]
    )
    assert metrics.binary_metrics(labels, probs, chosen)["balanced_accuracy"] == pytest.approx(
        best_brute
    )


def test_per_patient_metrics_by_hand():
    labels = np.array([0, 1, 1, 0, 0, 0])
    probs = np.array([0.2, 0.9, 0.1, 0.7, 0.1, 0.2])
    patients = np.array([7, 7, 7, 9, 9, 9])
    m = metrics.per_patient_metrics(labels, probs, patients)
    # Patient 7: correct 2 of 3, balanced (1/2 + 1) / 2; patient 9: correct 2 of 3, one class only.
    assert m["num_patients"] == 2
    assert m["patient_accuracy_mean"] == pytest.approx(2 / 3)
    assert m["patient_accuracy_std"] == pytest.approx(0.0)
    assert m["num_patients_both_classes"] == 1
    assert m["patient_balanced_accuracy_mean"] == pytest.approx(0.75)


def test_full_report_keeps_loss():
    report = metrics.full_report(LABELS, PROBS, np.zeros(10), mean_loss=0.25)
    assert report["loss"] == 0.25 and report["num_patients"] == 1
