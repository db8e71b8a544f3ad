"""Slide-level agreement and lesions against naive references: scipy's connected components,
areas counted by hand, limits of agreement and thresholds by brute force."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import recall_score

from evaluation import metrics, uncertainty
from experiment import lesions, slide_agreement, slide_context
from experiment.predictions import PatchPredictions


def grid_table(label_grids, p_grids, first_patient=1):
    """One slide per pair of grids (rows x cols; NaN P(IDC) = no patch there)."""
    parts = []
    for k, (labels, p) in enumerate(zip(label_grids, p_grids)):
        rows, cols = np.nonzero(~np.isnan(p))
        parts.append(
            (p[rows, cols], labels[rows, cols], np.full(len(rows), first_patient + k), cols, rows)
        )
    p, label, patient, cols, rows = (np.concatenate(x) for x in zip(*parts))
    return PatchPredictions(
        p.astype(np.float32),
        label.astype(np.int32),
        patient.astype(np.int32),
        (cols * 50 + 1).astype(np.int32),
        (rows * 50 + 1).astype(np.int32),
    )


# A hand-built slide: '#' labelled IDC, '.' not, ' ' no patch. Lesions (4-connected): the 2 x 3
# block (6 patches), the L of 3, the single at the bottom right, and the two diagonal singles
# at the top right (one lesion of 2 with 8-connectivity).
SLIDE = [
    "##.. #.",
    "##.. .#",
    "##.....",
    ".......",
    "#......",
    "##....#",
]


def hand_built():
    labels = np.array([[c == "#" for c in row] for row in SLIDE], float)
    p = np.where(np.array([[c == " " for c in row] for row in SLIDE]), np.nan, 0.1)
    p[0, 0] = 0.9  # one patch of the block called
    p[4, 0] = p[5, 0] = p[5, 1] = 0.8  # the whole L called
    p[3, 3] = p[3, 4] = 0.7  # a false-positive region of 2 on benign tissue
    p[1, 3] = 0.95  # and a single one
    return grid_table([labels], [p])


def test_lesions_of_a_hand_built_slide():
    table = hand_built()
    calls = table.p_idc >= 0.5
    found = lesions.labelled_lesions(table, calls, connectivity=4)
    assert sorted(zip(found.size.tolist(), found.called.tolist())) == [
        (1, 0),
        (1, 0),
        (1, 0),
        (3, 3),
        (6, 1),
    ]
    assert found.detected().sum() == 2
    assert found.detected(min_fraction=0.5).sum() == 1  # the block has 1 of 6 called
    eight = lesions.labelled_lesions(table, calls, connectivity=8)
    assert sorted(eight.size.tolist()) == [1, 2, 3, 6]
    assert lesions.false_positive_regions(table, calls) == {1: 2}
    rows = lesions.sensitivity_by_size(found, [1], num_resamples=20)
    assert [(r["lesions"], r["detected"]) for r in rows] == [(3, 0), (1, 1), (1, 1), (0, 0)]


@pytest.mark.parametrize("connectivity", [4, 8])
def test_components_equal_scipy_label_on_random_slides(connectivity):
    rng = np.random.default_rng(connectivity)
    grids = [rng.random((14, 17)) < 0.45 for _ in range(3)]
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    rows, cols, groups, expected = [], [], [], []
    for g, grid in enumerate(grids):
        oracle, _ = ndimage.label(grid, structure)
        r, c = np.nonzero(grid)
        rows += r.tolist()
        cols += c.tolist()
        groups += [g] * len(r)
        expected += (oracle[r, c] + 1000 * g).tolist()
    got = lesions.grid_components(np.array(rows), np.array(cols), np.array(groups), connectivity)
    # The same partition: each of ours is one of scipy's, and the other way round.
    pairs = set(zip(got.tolist(), expected))
    assert len(pairs) == len(set(got.tolist())) == len(set(expected))


def test_lesion_sensitivity_interval_is_the_bootstrap_over_slides():
    rng = np.random.default_rng(5)
    labels = [rng.random((12, 12)) < 0.3 for _ in range(6)]
    table = grid_table(labels, [rng.random((12, 12)) for _ in labels], first_patient=10)
    calls = table.p_idc >= 0.6
    found = lesions.labelled_lesions(table, calls)
    rows = lesions.sensitivity_by_size(found, np.unique(table.patient), num_resamples=300, seed=2)
    counts = uncertainty.resample_counts(6, 300, 2)
    for row, (low, high) in zip(rows, lesions.SIZE_BINS):
        mine = (found.size >= low) & (found.size <= high)
        hits = found.detected()[mine]
        assert row["sensitivity"] == pytest.approx(
            hits.mean() if len(hits) else np.nan, nan_ok=True
        )
        slide = np.searchsorted(np.unique(table.patient), found.patient[mine])
        replicates = []
        for c in counts:  # the lesions of the drawn slides, each slide as often as drawn
            drawn = np.repeat(np.arange(6), c)
            picked = np.concatenate([hits[slide == s] for s in drawn])
            if len(picked):
                replicates.append(picked.mean())
        if replicates:
            np.testing.assert_allclose(
                [row["low"], row["high"]], np.percentile(replicates, [2.5, 97.5]), rtol=1e-12
            )


def test_areas_bias_and_limits_of_agreement_equal_the_hand_computation():
    rng = np.random.default_rng(0)
    labels = [rng.random((8, 9)) < share for share in (0.1, 0.3, 0.5, 0.2, 0.05)]
    p = [np.clip(lab * 0.4 + rng.random(lab.shape) * 0.6, 0, 1) for lab in labels]
    table = grid_table(labels, p)
    calls = table.p_idc >= 0.45
    areas = slide_agreement.slide_areas(table, calls)
    called = np.array([np.sum(pp >= np.float32(0.45)) for pp in p]) * 0.04
    labelled = np.array([lab.sum() for lab in labels]) * 0.04
    np.testing.assert_allclose(areas.called * 0.04, called)
    np.testing.assert_allclose(areas.labelled * 0.04, labelled)
    stats = slide_agreement.agreement(areas, num_resamples=400, seed=1)
    d = called - labelled
    assert stats["bias_mm2"]["estimate"] == pytest.approx(d.mean(), abs=1e-12)
    assert stats["sd_mm2"] == pytest.approx(np.std(d, ddof=1))
    assert stats["upper_limit_mm2"]["estimate"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))
    assert stats["mae_fraction"]["estimate"] == pytest.approx(np.mean(np.abs(d / 0.04 / 72)))
    assert stats["over_called"] == np.sum(d > 0)
    upper, mae = [], []
    for c in uncertainty.resample_counts(5, 400, 1):
        drawn = np.repeat(d, c)
        upper.append(drawn.mean() + 1.96 * drawn.std(ddof=1))
        mae.append(np.abs(drawn).mean())
    for name, values in (("upper_limit_mm2", upper), ("mae_mm2", mae)):
        np.testing.assert_allclose(
            [stats[name]["low"], stats[name]["high"]], np.percentile(values, [2.5, 97.5]), rtol=1e-9
        )


def test_agreement_threshold_is_the_brute_force_minimum_of_the_area_error():
    rng = np.random.default_rng(4)
    labels = [rng.random((10, 10)) < share for share in (0.05, 0.2, 0.6, 0.35)]
    table = grid_table(
        labels, [np.round(lab * 0.3 + rng.random(lab.shape) * 0.7, 2) for lab in labels]
    )
    chosen = slide_agreement.agreement_threshold(table)

    def error(t):
        return np.mean(
            [
                abs(np.sum(table.p_idc[m] >= t) - np.sum(table.label[m])) * 0.04
                for m in (table.patient == k for k in np.unique(table.patient))
            ]
        )

    grid = np.linspace(-0.01, 1.01, 1021)  # every 0.001: between all distinct values (0.01 apart)
    best = min(error(t) for t in grid)
    assert error(chosen) == pytest.approx(best, abs=1e-12)
    assert chosen <= min(t for t in grid if error(t) == pytest.approx(best, abs=1e-12)) + 0.01


def test_threshold_at_sensitivity_is_the_highest_that_reaches_it():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 500)
    p = np.round(rng.random(500), 2)  # ties
    for target in (0.5, 0.9, 0.95, 1.0):
        t = slide_agreement.threshold_at_sensitivity(labels, p, target)
        reaching = [c for c in np.unique(p) if np.mean(p[labels == 1] >= c) >= target]
        assert t == max(reaching)
    point = slide_agreement.operating_point(
        PatchPredictions(p, labels, np.arange(500) % 7, labels, labels), p >= 0.3
    )
    assert point["sensitivity"]["estimate"] == pytest.approx(recall_score(labels, p >= 0.3))
    assert point["specificity"]["estimate"] == pytest.approx(
        recall_score(labels, p >= 0.3, pos_label=0)
    )


def test_cross_validation_chooses_each_folds_threshold_and_width_on_the_other_folds():
    rng = np.random.default_rng(7)

    def run(first):
        labels = [rng.random((9, 9)) < 0.3 for _ in range(3)]
        test = grid_table(
            labels, [lab * 0.3 + rng.random(lab.shape) * 0.7 for lab in labels], first
        )
        return (f"run{first}", test, test)

    runs = [run(1), run(10), run(20)]
    folds = slide_agreement.cross_validation(runs, "other slides")
    pooled, calls, thresholds = slide_agreement.pooled_calls(folds, "balanced accuracy")
    for i, fold in enumerate(folds):
        others = [r[2] for j, r in enumerate(runs) if j != i]
        label = np.concatenate([t.label for t in others])
        p = np.concatenate([t.p_idc for t in others])
        assert thresholds[i] == metrics.best_threshold(label, p)
        context = slide_agreement.with_context(fold)
        choice = slide_context.choose_sigma(fold.selection)
        assert context.choice == f"sigma {choice.sigma:g}"
        np.testing.assert_allclose(
            context.test.p_idc, slide_context.smooth_on_grid(fold.test, choice.sigma), atol=1e-5
        )
    assert len(pooled.label) == len(calls) == sum(len(r[2].label) for r in runs)
    with pytest.raises(ValueError, match="held out by two runs"):
        slide_agreement.cross_validation([runs[0], runs[0]], "validation")
