"""The paired bootstrap against a naive reference: every resample built patch by patch, its
thresholds chosen on the built selection data, its metrics from scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_auc_score

from evaluation import metrics, uncertainty
from experiment import paired
from experiment.predictions import PatchPredictions


def table(rng, patients, per_patient, noise, signal=None, decimals=2):
    """Patches of `patients` (each its own IDC share), P(IDC) = signal + noise, rounded (ties)."""
    patient = np.repeat(np.asarray(patients, np.int32), per_patient)
    share = rng.uniform(0.1, 0.7, len(patients)).repeat(per_patient)
    label = (rng.random(len(patient)) < share).astype(np.int32)
    signal = 0.3 * label if signal is None else signal
    p = np.clip(0.35 + signal + rng.normal(0, noise, len(patient)), 0, 1)
    cells = np.tile(np.arange(per_patient), len(patients))
    return PatchPredictions(
        np.round(p, decimals).astype(np.float32),
        label,
        patient,
        (cells % 7 * 50 + 1).astype(np.int32),
        (cells // 7 * 50 + 1).astype(np.int32),
    )


def build(t: PatchPredictions, counts_row: np.ndarray) -> PatchPredictions:
    """The resample itself: every patch of the a-th patient (increasing id) counts_row[a] times."""
    return t.select(np.concatenate([np.zeros(0, np.int64), *copies(t, counts_row)]))


def copies(t: PatchPredictions, counts_row: np.ndarray) -> list[np.ndarray]:
    """The rows of each drawn copy of a patient, one entry per copy."""
    ids = np.unique(t.patient)
    rows = [np.flatnonzero(t.patient == ids[a]) for a in range(len(ids))]
    return [r for r, c in zip(rows, counts_row) for _ in range(int(c))]


def naive_metrics(t: PatchPredictions, calls: np.ndarray, copies_of: list) -> dict:
    """Every metric of METRICS on the built resample `t` (its copies' rows `copies_of`)."""
    out = {"ece": metrics.expected_calibration_error(t.label, t.p_idc)}
    both = 0 < t.label.mean() < 1
    out["roc_auc"] = roc_auc_score(t.label, t.p_idc) if both else np.nan
    out["balanced_accuracy"] = balanced_accuracy_score(t.label, calls) if both else np.nan
    out["f1"] = f1_score(t.label, calls, zero_division=0) if t.label.any() else np.nan
    out["sensitivity"] = recall_score(t.label, calls) if t.label.any() else np.nan
    out["specificity"] = recall_score(t.label, calls, pos_label=0) if not t.label.all() else np.nan
    per = {name: [] for name in ("roc", "sens", "spec", "bal")}
    # One entry per drawn copy of a patient (the built resample lists the copies in order).
    ends = np.cumsum([len(rows) for rows in copies_of])
    for lo, hi in zip(np.r_[0, ends[:-1]], ends):
        lab, call, p = t.label[lo:hi], calls[lo:hi], t.p_idc[lo:hi]
        sens = recall_score(lab, call) if lab.any() else np.nan
        spec = recall_score(lab, call, pos_label=0) if not lab.all() else np.nan
        per["sens"].append(sens)
        per["spec"].append(spec)
        per["bal"].append((sens + spec) / 2)
        per["roc"].append(roc_auc_score(lab, p) if 0 < lab.mean() < 1 else np.nan)
    for name, key in (("roc_auc", "roc"), ("sensitivity", "sens"), ("specificity", "spec")):
        out[f"patient_{name}"] = np.nanmean(per[key])
    out["patient_balanced_accuracy"] = np.nanmean(per["bal"])
    return out


def test_resampled_thresholds_equal_best_threshold_on_each_built_resample():
    rng = np.random.default_rng(3)
    selection = table(rng, range(9), 25, 0.2, decimals=2)  # many ties
    counts = uncertainty.resample_counts(9, 300, seed=5)
    counts[0] = [0, 0, 0, 0, 9, 0, 0, 0, 0]  # one patient only: perhaps one class
    fast = paired.resampled_best_thresholds(selection, counts)
    naive = [
        metrics.best_threshold(b.label, b.p_idc) for b in (build(selection, c) for c in counts)
    ]
    np.testing.assert_array_equal(fast, naive)


@pytest.fixture(scope="module")
def cross_validation():
    """Three folds of test patients, each part's threshold chosen on the other two folds
    (selection inside the test pool); and a method whose threshold comes from validation."""
    rng = np.random.default_rng(1)
    folds = [table(rng, range(10 * k, 10 * k + 4), 18, 0.25) for k in range(3)]
    validation = table(rng, range(100, 106), 20, 0.25)

    def others(tables, i):
        rest = [t for j, t in enumerate(tables) if j != i]
        return PatchPredictions(
            *(
                np.concatenate([getattr(t, f) for t in rest])
                for f in "p_idc label patient x y".split()
            )
        )

    a = paired.Method(
        "folds",
        tuple(paired.Part(t, selection=others(folds, i)) for i, t in enumerate(folds)),
    )
    pooled = a.pooled()
    shifted = [t.with_p_idc(np.clip(t.p_idc + 0.05 * t.label, 0, 1)) for t in folds]
    b = paired.Method.of(
        "one threshold",
        pooled.with_p_idc(np.concatenate([t.p_idc for t in shifted])),
        selection=validation,
    )
    return a, b, folds, validation


def test_paired_replicates_equal_the_naive_loop_over_built_resamples(cross_validation):
    a, b, folds, validation = cross_validation
    num_resamples, seed = 25, 7
    resamples = paired.Resamples(a.pooled().patient, num_resamples, seed)
    got = {m.name: paired.method_replicates(m, resamples) for m in (a, b)}
    test_counts = uncertainty.resample_counts(12, num_resamples, seed)
    validation_counts = uncertainty.resample_counts(6, num_resamples, seed + 1)
    for r in range(num_resamples + 1):
        row = np.ones(12) if r == 0 else test_counts[r - 1]
        calls = []
        for k, fold in enumerate(folds):  # fold k's patients are columns 4k .. 4k + 3
            mine = build(fold, row[4 * k : 4 * k + 4])
            rest = [build(f, row[4 * j : 4 * j + 4]) for j, f in enumerate(folds) if j != k]
            chosen = (
                np.concatenate([t.label for t in rest]),
                np.concatenate([t.p_idc for t in rest]),
            )
            calls.append(mine.p_idc.astype(np.float64) >= metrics.best_threshold(*chosen))
        built = build(a.pooled(), row)
        expected = naive_metrics(built, np.concatenate(calls), copies(a.pooled(), row))
        v = build(validation, np.ones(6) if r == 0 else validation_counts[r - 1])
        built_b = build(b.pooled(), row)
        expected_b = naive_metrics(
            built_b,
            built_b.p_idc.astype(np.float64) >= metrics.best_threshold(v.label, v.p_idc),
            copies(b.pooled(), row),
        )
        for name in paired.METRICS:
            np.testing.assert_allclose(
                got["folds"][name][r], expected[name], rtol=1e-12, err_msg=name
            )
            np.testing.assert_allclose(
                got["one threshold"][name][r], expected_b[name], rtol=1e-12, err_msg=name
            )
    report = paired.paired_differences(a, b, num_resamples=num_resamples, seed=seed)
    difference = got["one threshold"]["roc_auc"] - got["folds"]["roc_auc"]
    assert report["roc_auc"]["difference"] == difference[0]
    np.testing.assert_allclose(
        [report["roc_auc"]["low"], report["roc_auc"]["high"]],
        np.percentile(difference[1:], [2.5, 97.5]),
    )
    assert report["roc_auc"]["share_at_most_zero"] == np.mean(difference[1:] <= 0)


def test_a_method_against_itself_differs_by_exactly_zero(cross_validation):
    a, _, _, _ = cross_validation
    report = paired.paired_differences(a, a, num_resamples=200)
    for name in paired.METRICS:
        entry = report[name]
        assert entry["difference"] == entry["low"] == entry["high"] == 0.0, name
        assert entry["share_at_most_zero"] == 1.0


def test_less_noise_wins_and_swapping_the_methods_flips_the_sign():
    rng = np.random.default_rng(2)
    noisy = table(rng, range(30), 40, 0.35)
    validation = table(rng, range(100, 120), 40, 0.35)

    def cleaned(t):  # the same patches with most of their noise taken back out
        noise = t.p_idc - (0.35 + 0.3 * t.label)
        return t.with_p_idc(np.clip(t.p_idc - 0.8 * noise, 0, 1))

    clean = cleaned(noisy)
    a = paired.Method.of("noisy", noisy, selection=validation)
    b = paired.Method.of("clean", clean, selection=cleaned(validation))
    forward = paired.paired_differences(a, b, num_resamples=500)
    backward = paired.paired_differences(b, a, num_resamples=500)
    for name in ("roc_auc", "balanced_accuracy", "patient_roc_auc"):
        assert forward[name]["low"] > 0 and forward[name]["share_at_most_zero"] == 0.0, name
        assert backward[name]["difference"] == -forward[name]["difference"]
        np.testing.assert_allclose(backward[name]["high"], -forward[name]["low"], atol=1e-15)
    assert roc_auc_score(clean.label, clean.p_idc) - roc_auc_score(noisy.label, noisy.p_idc) == (
        pytest.approx(forward["roc_auc"]["difference"], abs=1e-12)
    )


def test_methods_on_other_patients_or_half_shared_selection_data_are_refused(cross_validation):
    a, b, folds, _ = cross_validation
    with pytest.raises(ValueError, match="different test patients"):
        paired.paired_differences(a, paired.Method.of("one fold", folds[0]))
    half = PatchPredictions(
        *(
            np.concatenate([getattr(folds[0], f), getattr(folds[0], f)])
            for f in "p_idc label patient x y".split()
        )
    )
    half = half.with_p_idc(half.p_idc)
    mixed = np.r_[folds[0].patient, folds[0].patient + 1000].astype(np.int32)
    bad = paired.Method.of(
        "mixed selection",
        a.pooled(),
        selection=PatchPredictions(half.p_idc, half.label, mixed, half.x, half.y),
    )
    with pytest.raises(ValueError, match="some but not all"):
        paired.paired_differences(a, bad, num_resamples=10)


def test_restricted_keeps_only_the_named_patients_and_their_thresholds(cross_validation):
    a, _, folds, _ = cross_validation
    part = a.restricted([0, 1, 20])
    assert [np.unique(p.test.patient).tolist() for p in part.parts] == [[0, 1], [20]]
    assert paired.part_thresholds(part) == [paired.part_thresholds(a)[i] for i in (0, 2)]
