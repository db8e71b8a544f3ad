"""Every metric against independent computations: naive loops, hand counts and scikit-learn.

The metrics are NumPy (evaluation/metrics.py): scikit-learn, the library such metrics are checked
against, is the oracle here, not a dependency of training. Measured on 2 cores: importing
sklearn.metrics takes about 3 s, and its ROC AUC is 1.5-16x slower per call than the NumPy one,
which matters for a bootstrap of a few thousand resamples.
"""

import itertools

import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics

from evaluation import metrics

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


# ----------------------------------------------------------------------------- calibration

# Eight bins: edges 0, .125, .25, .375, .5, .625, .75, .875, 1 are exact in binary, so the
# probabilities 0, .25, .5, .875 and 1 sit exactly on edges.
CALIBRATION_PROBS = np.array([0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.875, 0.9, 1.0, 1.0])
CALIBRATION_LABELS = np.array([0, 0, 1, 0, 0, 1, 1, 1, 1, 0])


def test_reliability_curve_by_hand_with_values_on_bin_edges():
    curve = metrics.reliability_curve(CALIBRATION_LABELS, CALIBRATION_PROBS, num_bins=8)
    np.testing.assert_array_equal(curve["bin_edges"], np.arange(9) / 8)
    # [0, .125): 0, .1            [.25, .375): .25, .3 (an edge opens its bin)
    # [.5, .625): .5, .6          [.875, 1] (closed at 1): .875, .9, 1, 1
    np.testing.assert_array_equal(curve["count"], [2, 0, 2, 0, 2, 0, 0, 4])
    nan = np.nan
    # Means: (0 + .1) / 2, (.25 + .3) / 2, (.5 + .6) / 2, (.875 + .9 + 1 + 1) / 4 = 3.775 / 4.
    np.testing.assert_allclose(
        curve["mean_predicted"], [0.05, nan, 0.275, nan, 0.55, nan, nan, 0.94375], rtol=1e-15
    )
    # IDC among them: 0 of 2, 1 of 2 (.25), 1 of 2 (.6), 3 of 4 (.875, .9, one 1.0).
    np.testing.assert_array_equal(
        curve["observed_fraction"], [0.0, nan, 0.5, nan, 0.5, nan, nan, 0.75]
    )
    # ECE: gaps |0 - .05| = .05, |.5 - .275| = .225, |.5 - .55| = .05, |.75 - .94375| = .19375,
    # weighted by 2/10, 2/10, 2/10, 4/10: .01 + .045 + .01 + .0775 = .1425. MCE: .225.
    ece = metrics.expected_calibration_error(CALIBRATION_LABELS, CALIBRATION_PROBS, num_bins=8)
    mce = metrics.maximum_calibration_error(CALIBRATION_LABELS, CALIBRATION_PROBS, num_bins=8)
    assert ece == pytest.approx(0.1425, rel=1e-14)
    assert mce == pytest.approx(0.225, rel=1e-14)
    report = metrics.calibration_report(CALIBRATION_LABELS, CALIBRATION_PROBS, num_bins=8)
    assert (report["ece"], report["mce"], report["num_bins"]) == (ece, mce, 8)


def test_reliability_bins_hold_their_left_edge_at_the_default_fifteen_bins():
    edges = metrics.reliability_curve([0], [0.5])["bin_edges"]
    assert len(edges) == metrics.CALIBRATION_BINS + 1 == 16
    # Each edge (k/15 is not exact in binary) opens bin k; the float just below closes bin k-1.
    probabilities = np.r_[edges, np.nextafter(edges[1:], 0.0)]
    curve = metrics.reliability_curve(np.zeros(len(probabilities)), probabilities)
    expected = np.r_[np.arange(15), 14, np.arange(15)]  # 1.0 is in the last, closed bin
    np.testing.assert_array_equal(curve["count"], np.bincount(expected, minlength=15))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.reliability_curve([0], [1.0 + 1e-9])


def test_perfect_and_worst_calibration():
    # P(IDC) equal to the observed fraction in every bin: ECE 0; certain and always wrong: ECE 1.
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    probabilities = np.array([0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75])
    assert metrics.expected_calibration_error(labels, probabilities) == 0.0
    assert metrics.expected_calibration_error([0, 1], [1.0, 0.0]) == 1.0


def test_full_report_has_the_ece():
    report = metrics.full_report(LABELS, PROBS, np.zeros(10))
    assert report["ece"] == metrics.expected_calibration_error(LABELS, PROBS)


# ----------------------------------------------------------------------------- per patient


def test_per_patient_table_and_distribution_by_hand():
    labels = np.array([0, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0, 1])
    probs = np.array([0.2, 0.9, 0.2, 0.7, 0.1, 0.2, 0.6, 0.8, 0.3, 0.4, 0.45, 0.9])
    patients = np.array([7, 7, 7, 7, 9, 9, 9, 3, 3, 3, 3, 3])
    table = metrics.per_patient_table(labels, probs, patients)
    nan = float("nan")
    # Patient 3: labels 1 0 1 0 1, predicted 1 0 0 0 1: 4 of 5 right; recall 2/3, specificity 1.
    #   AUC: IDC .8, .4, .9 against .3, .45: .8 > both, .4 > .3 only, .9 > both: 5 of 6 pairs.
    # Patient 7: labels 0 1 1 0, predicted 0 1 0 1: 2 of 4 right; recall 1/2, specificity 1/2.
    #   AUC: IDC .9, .2 against .2, .7: .9 > both, .2 ties .2 (1/2): 2.5 of 4 pairs.
    # Patient 9: no IDC patch, predicted 0 0 1: 2 of 3 right; no balanced accuracy, no AUC.
    expected = [
        dict(patient=3, patches=5, idc_patches=3, accuracy=0.8, balanced_accuracy=5 / 6),
        dict(patient=7, patches=4, idc_patches=2, accuracy=0.5, balanced_accuracy=0.5),
        dict(patient=9, patches=3, idc_patches=0, accuracy=2 / 3, balanced_accuracy=nan),
    ]
    for row, auc in zip(expected, (5 / 6, 2.5 / 4, nan), strict=True):
        row["roc_auc"] = auc
    assert [row.keys() for row in table] == [row.keys() for row in expected]
    for got, want in zip(table, expected, strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-15, nan_ok=True), (want, key)
        assert type(got["patient"]) is int

    summary = metrics.per_patient_distribution(table, num_worst=1)
    assert summary["num_patients"] == 3
    # Two defined values a < b: linear percentiles a + q (b - a).
    for key, (a, b) in (("roc_auc", (0.625, 5 / 6)), ("balanced_accuracy", (0.5, 5 / 6))):
        spread = summary[key]
        assert spread["num_defined"] == 2
        for name, q in (("min", 0), ("q1", 0.25), ("median", 0.5), ("q3", 0.75), ("max", 1)):
            assert spread[name] == pytest.approx(a + q * (b - a), rel=1e-15), (key, name)
        assert summary[f"worst_by_{key}"] == [table[1]]  # patient 7, with its patch counts
    worst = metrics.per_patient_distribution(table)["worst_by_roc_auc"]
    assert [row["patient"] for row in worst] == [7, 3]  # the default 5, but only 2 defined
    # The mean/std summary of full_report is the table's.
    per_patient = metrics.per_patient_metrics(labels, probs, patients)
    assert per_patient["patient_accuracy_mean"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert per_patient["patient_balanced_accuracy_mean"] == pytest.approx((5 / 6 + 0.5) / 2)


def test_per_patient_distribution_without_any_defined_patient():
    table = metrics.per_patient_table([0, 0, 1], [0.1, 0.7, 0.4], [1, 1, 2])
    summary = metrics.per_patient_distribution(table)
    assert summary["roc_auc"]["num_defined"] == 0 and np.isnan(summary["roc_auc"]["median"])
    assert summary["worst_by_balanced_accuracy"] == []
