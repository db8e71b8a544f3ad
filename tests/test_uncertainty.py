"""The bootstrap over patients against resamples materialised row by row, and its figures.

`uncertainty.resampled_metrics` computes each resample's metrics from per-patient statistics
and the draw counts, never building the resampled set. Here the resampled sets are built (every
patch of a patient repeated as often as the patient was drawn) and scored with
`evaluation.metrics` and scikit-learn: the ROC AUC and the threshold metrics must agree to the last
bit with `evaluation.metrics` (integer arithmetic on both sides), and PR AUC and every scikit-learn
value within float rounding.
"""

import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics

from evaluation import metrics, uncertainty
from experiment import figures


def synthetic_patients(num_patients, mean_patches, seed, ties=False):
    """Labels, P(IDC) and patient ids with patient effects: IDC share and score shift per patient.

    Patient ids are non-contiguous, unsorted in the rows, and of varying patch counts.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 2 * mean_patches, num_patients)
    ids = rng.permutation(10 * num_patients)[:num_patients] + 100
    patients = rng.permutation(np.repeat(ids, sizes))
    position = np.searchsorted(np.sort(ids), patients)
    idc_share, shift = rng.beta(0.8, 1.5, num_patients), rng.normal(0, 0.15, num_patients)
    labels = (rng.random(len(patients)) < idc_share[position]).astype(np.int64)
    scores = rng.normal(0.3 + 0.35 * labels + shift[position], 0.2)
    scores = np.clip(scores, 0, 1).astype(np.float32)
    if ties:
        scores = np.round(scores, 2)
    return labels, scores, patients


def materialise(labels, scores, patients, counts_row):
    """The resampled set: every patch of the a-th patient (increasing id) counts_row[a] times."""
    ids = np.unique(patients)
    rows = np.concatenate(
        [np.repeat(np.flatnonzero(patients == p), k) for p, k in zip(ids, counts_row)]
    )
    return labels[rows], scores[rows]


def test_resample_counts_draw_patients_with_replacement():
    counts = uncertainty.resample_counts(7, 300, seed=3)
    assert counts.shape == (300, 7) and counts.dtype.kind == "i"
    np.testing.assert_array_equal(counts.sum(axis=1), 7)  # 7 draws per resample
    assert (counts == 0).any() and (counts >= 2).any()  # some left out, some drawn twice
    np.testing.assert_array_equal(counts, uncertainty.resample_counts(7, 300, seed=3))
    assert not np.array_equal(counts, uncertainty.resample_counts(7, 300, seed=4))


@pytest.mark.parametrize(("seed", "threshold"), [(0, 0.5), (1, 0.37)])
def test_replicates_equal_the_metrics_of_the_materialised_resamples(seed, threshold):
    labels, scores, patients = synthetic_patients(12, 25, seed, ties=True)
    counts = uncertainty.resample_counts(12, 6, seed=seed)
    replicates = uncertainty.resampled_metrics(
        labels, scores, patients, counts, threshold=threshold
    )
    for r, counts_row in enumerate(counts):
        y, s = materialise(labels, scores, patients, counts_row)
        patches_per_patient = np.bincount(np.unique(patients, return_inverse=True)[1])
        assert len(y) == np.sum(counts_row * patches_per_patient)
        ours = {name: values[r] for name, values in replicates.items()}
        reference = metrics.binary_metrics(y, s, threshold)
        for name in ("roc_auc", "balanced_accuracy", "f1", "accuracy"):
            assert ours[name] == reference[name], (r, name)  # exact: same integers, same divisions
        assert ours["pr_auc"] == pytest.approx(reference["pr_auc"], rel=1e-12, abs=0)
        predictions = s >= threshold
        for name, oracle in (
            ("roc_auc", sklearn_metrics.roc_auc_score(y, s)),
            ("pr_auc", sklearn_metrics.average_precision_score(y, s)),
            ("balanced_accuracy", sklearn_metrics.balanced_accuracy_score(y, predictions)),
            ("f1", sklearn_metrics.f1_score(y, predictions)),
            ("accuracy", sklearn_metrics.accuracy_score(y, predictions)),
        ):
            assert ours[name] == pytest.approx(oracle, rel=1e-12, abs=0), (r, name)


def test_intervals_are_deterministic_and_hold_the_point_estimate():
    labels, scores, patients = synthetic_patients(40, 75, seed=5)
    report = uncertainty.bootstrap_intervals(labels, scores, patients, num_resamples=500, seed=11)
    assert report == uncertainty.bootstrap_intervals(
        labels, scores, patients, num_resamples=500, seed=11
    )
    other_seed = uncertainty.bootstrap_intervals(labels, scores, patients, num_resamples=500)
    assert other_seed["roc_auc"]["low"] != report["roc_auc"]["low"]
    assert report["num_patients"] == 40 and report["num_examples"] == len(labels)
    point = metrics.binary_metrics(labels, scores, 0.5)
    for name in uncertainty.BOOTSTRAP_METRICS:
        interval = report[name]
        assert interval["estimate"] == point[name], name
        assert interval["low"] < interval["estimate"] < interval["high"], name
        assert (interval["num_resamples_used"], interval["num_resamples_dropped"]) == (500, 0)
        # The percentile interval of the replicates, recomputed from them.
        replicates = uncertainty.resampled_metrics(
            labels, scores, patients, uncertainty.resample_counts(40, 500, seed=11)
        )[name]
        np.testing.assert_array_equal(
            [interval["low"], interval["high"]], np.percentile(replicates, [2.5, 97.5])
        )


def test_duplicating_every_patch_leaves_the_patient_bootstrap_unchanged():
    # Copies of a patch add no information. Resampling patients carries all copies together, so
    # the intervals stay exactly the same; a patch-level bootstrap (every patch its own
    # "patient") takes the copies for independent evidence and narrows.
    labels, scores, patients = synthetic_patients(20, 15, seed=2)
    copies = np.repeat(np.arange(len(labels)), 3)

    def intervals(y, s, p):
        return uncertainty.bootstrap_intervals(y, s, p, num_resamples=400, seed=1)

    def widths(report):
        return {
            name: report[name]["high"] - report[name]["low"] for name in ("roc_auc", "accuracy")
        }

    by_patient = intervals(labels, scores, patients)
    duplicated = intervals(labels[copies], scores[copies], patients[copies])
    assert duplicated.pop("num_examples") == 3 * by_patient.pop("num_examples")
    assert duplicated == by_patient
    by_patch = widths(intervals(labels, scores, np.arange(len(labels))))
    duplicated_by_patch = widths(intervals(labels[copies], scores[copies], np.arange(len(copies))))
    for name, width in widths(by_patient).items():
        assert duplicated_by_patch[name] < by_patch[name] < width, name


def test_undefined_resamples_are_dropped_and_counted():
    # Patient 10 holds every IDC patch, patients 20 and 30 none. A resample without patient 10
    # has no IDC (no AUC, balanced accuracy, F1 or PR AUC); one of patient 10 alone has no
    # non-IDC patch (no AUC or balanced accuracy). Accuracy is always defined.
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.4, 0.7, 0.2, 0.6, 0.1, 0.3, 0.8])
    patients = np.array([10, 10, 10, 20, 20, 30, 30, 30])
    counts = uncertainty.resample_counts(3, 300, seed=0)
    without_idc = int(np.sum(counts[:, 0] == 0))
    only_idc = int(np.sum(counts[:, 0] == 3))
    assert without_idc > 0 and only_idc > 0
    report = uncertainty.bootstrap_intervals(labels, scores, patients, num_resamples=300)
    expected_dropped = {
        "roc_auc": without_idc + only_idc,
        "balanced_accuracy": without_idc + only_idc,
        "f1": without_idc,
        "pr_auc": without_idc,
        "accuracy": 0,
    }
    for name, dropped in expected_dropped.items():
        assert report[name]["num_resamples_dropped"] == dropped, name
        assert report[name]["num_resamples_used"] == 300 - dropped, name
        assert report[name]["low"] <= report[name]["estimate"] <= report[name]["high"], name


def test_threshold_metrics_only_and_errors():
    labels, scores, patients = synthetic_patients(8, 10, seed=4)
    at_tuned = uncertainty.bootstrap_intervals(
        labels,
        scores,
        patients,
        threshold=0.42,
        num_resamples=50,
        metric_names=uncertainty.THRESHOLD_METRICS,
    )
    assert set(uncertainty.THRESHOLD_METRICS) <= at_tuned.keys()
    assert "roc_auc" not in at_tuned and at_tuned["threshold"] == 0.42
    assert at_tuned["f1"]["estimate"] == metrics.binary_metrics(labels, scores, 0.42)["f1"]
    with pytest.raises(ValueError, match="brier"):
        uncertainty.bootstrap_intervals(labels, scores, patients, metric_names=("brier",))
    with pytest.raises(ValueError, match="num_resamples"):
        uncertainty.bootstrap_intervals(labels, scores, patients, num_resamples=0)


def test_a_single_patient_gives_no_interval():
    # Every resample of one patient is the data itself: a zero-width interval would read as
    # certainty, so there is none.
    labels, scores, _ = synthetic_patients(1, 40, seed=3)
    report = uncertainty.bootstrap_intervals(labels, scores, np.zeros(len(labels)))
    assert report["num_patients"] == 1 and report["num_resamples"] == 0 and report["note"]
    point = metrics.binary_metrics(labels, scores, 0.5)
    for name in uncertainty.BOOTSTRAP_METRICS:
        interval = report[name]
        assert interval["estimate"] == point[name]
        assert np.isnan(interval["low"]) and np.isnan(interval["high"])
        assert (interval["num_resamples_used"], interval["num_resamples_dropped"]) == (0, 0)


# ----------------------------------------------------------------------------- figures


NO_IDC = ([0, 0], [0.1, 0.7], [1, 1])


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reliability_diagram_and_per_patient_figures_render(tmp_path):
    labels, scores, patients = synthetic_patients(10, 20, seed=6)
    curve = metrics.calibration_report(labels, scores * 0.5)  # the bins above 0.5 empty
    # As read back from summary.json: lists, NaN written as null.
    as_json = {
        k: [None if np.isnan(v) else v for v in np.asarray(c, float)] if np.ndim(c) else c
        for k, c in curve.items()
    }
    assert None in as_json["mean_predicted"]  # some bins are empty
    path = tmp_path / "reliability.png"
    figures.plot_reliability_diagram(path, [("run A", curve), ("run B", as_json)])
    assert _is_png(path)

    # Patient 1: no IDC patch, so no per-patient AUC or balanced accuracy.
    labels, scores, patients = (np.r_[a, b] for a, b in zip((labels, scores, patients), NO_IDC))
    table = metrics.per_patient_table(labels, scores, patients)
    assert any(np.isnan(row["roc_auc"]) for row in table)  # some patients have one class
    rows_json = [{k: (None if v != v else v) for k, v in row.items()} for row in table]
    path = tmp_path / "per_patient.png"
    figures.plot_per_patient_distribution(path, [("run A", table), ("run B", rows_json)])
    assert _is_png(path)
