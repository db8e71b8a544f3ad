"""Slide context: the normalised Gaussian smoothing over the grid against a naive double loop."""

import numpy as np
import pytest

from experiment import slide_context
from experiment.predictions import PatchPredictions
from idc_inference import context_stage


def scattered_slides(seed: int = 0) -> PatchPredictions:
    """Two patients' patches scattered over their grids, with holes, edges and an isolated one."""
    rng = np.random.default_rng(seed)
    rows, cols, patients = [], [], []
    for patient, (height, width) in ((7, (9, 12)), (3, (5, 4))):
        cells = rng.choice(height * width, size=height * width * 2 // 3, replace=False)
        rows += list(cells // width)
        cols += list(cells % width)
        patients += [patient] * len(cells)
    rows, cols, patients = rows + [40], cols + [40], patients + [7]  # far from everything
    n = len(rows)
    return PatchPredictions(
        p_idc=rng.random(n).astype(np.float32),
        label=rng.integers(0, 2, n).astype(np.int32),
        patient=np.array(patients, np.int32),
        x=np.array(cols, np.int32) * 50 + 1,
        y=np.array(rows, np.int32) * 50 + 1,
    )


def naive_smoothing(table: PatchPredictions, sigma: float) -> np.ndarray:
    radius = int(slide_context.TRUNCATE * sigma + 0.5)
    rows, cols = (table.y - 1) // 50, (table.x - 1) // 50
    out = np.zeros(len(rows))
    for i in range(len(rows)):
        num = den = 0.0
        for j in range(len(rows)):
            dr, dc = abs(int(rows[i] - rows[j])), abs(int(cols[i] - cols[j]))
            if table.patient[i] != table.patient[j] or dr > radius or dc > radius:
                continue
            weight = np.exp(-(dr**2) / (2 * sigma**2)) * np.exp(-(dc**2) / (2 * sigma**2))
            num += weight * float(table.p_idc[j])
            den += weight
        out[i] = num / den
    return out


@pytest.mark.parametrize("sigma", [0.5, 1.5, 3.0])
def test_smoothing_equals_the_naive_normalised_convolution(sigma):
    table = scattered_slides()
    smoothed = slide_context.smooth_on_grid(table, sigma)
    # Float32 output of float64 sums of at most ~100 terms in [0, 1]: a few float32 ulps.
    np.testing.assert_allclose(smoothed, naive_smoothing(table, sigma), rtol=0, atol=2e-7)
    assert smoothed[-1] == table.p_idc[-1], "an isolated patch keeps its own P(IDC)"


def test_no_smoothing_at_sigma_zero_and_choice_on_validation():
    table = scattered_slides(1)
    np.testing.assert_array_equal(slide_context.smooth_on_grid(table, 0.0), table.p_idc)
    # Labels that are a smooth region: smoothing the noisy P(IDC) must help, and be chosen.
    rows, cols = (table.y - 1) // 50, (table.x - 1) // 50
    region = ((rows - 4) ** 2 + (cols - 6) ** 2 < 10).astype(np.int32)
    noisy = np.clip(0.3 + 0.4 * region + np.random.default_rng(2).normal(0, 0.3, len(rows)), 0, 1)
    validation = PatchPredictions(noisy.astype(np.float32), region, table.patient, table.x, table.y)
    choice = slide_context.choose_sigma(validation)
    assert choice.sigma > 0
    assert choice.validation_roc_auc[choice.sigma] > choice.validation_roc_auc[0.0]


def test_neighbour_fraction_counts_the_four_grid_neighbours():
    x = np.array([1, 51, 1, 201], np.int32)
    y = np.array([1, 1, 51, 201], np.int32)
    table = PatchPredictions(
        np.zeros(4, np.float32), np.zeros(4, np.int32), np.zeros(4, np.int32), x, y
    )
    np.testing.assert_array_equal(slide_context.neighbour_fraction(table), [0.5, 0.25, 0.25, 0.0])


def test_logistic_regression_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 3))
    labels = (features @ [1.5, -2.0, 0.5] + rng.normal(0, 1, 400) > 0.3).astype(int)
    weights, bias = context_stage.fit_logistic_regression(features, labels, l2=2.0)
    # scikit-learn minimises C * sum(log loss) + |w|^2 / 2: C = 1 / l2 is the same objective.
    reference = LogisticRegression(C=0.5, tol=1e-12, max_iter=10_000).fit(features, labels)
    np.testing.assert_allclose(weights, reference.coef_[0], rtol=1e-5, atol=1e-7)
    assert bias == pytest.approx(reference.intercept_[0], rel=1e-5, abs=1e-7)


def test_context_model_learns_that_regions_matter():
    table = scattered_slides(3)
    rows, cols = (table.y - 1) // 50, (table.x - 1) // 50
    region = ((rows - 4) ** 2 + (cols - 6) ** 2 < 10).astype(np.int32)
    noisy = np.clip(0.3 + 0.4 * region + np.random.default_rng(4).normal(0, 0.3, len(rows)), 0, 1)
    validation = PatchPredictions(noisy.astype(np.float32), region, table.patient, table.x, table.y)
    model = slide_context.fit_context_model(validation)
    from evaluation import metrics

    context = slide_context.context_p_idc(model, validation)
    assert metrics.roc_auc(region, context) > metrics.roc_auc(region, noisy)
    # Its threshold is the one that maximises balanced accuracy on the patches it was fitted on.
    assert model.threshold == metrics.best_threshold(region, context)
    # The record (what a weights file carries) gives back the same stage.
    again = context_stage.ContextStage.from_record(model.to_record())
    np.testing.assert_array_equal(slide_context.context_p_idc(again, validation), context)


def test_a_context_stage_record_with_the_wrong_weights_is_refused():
    record = context_stage.ContextStage(np.zeros(5), 0.0).to_record()
    with pytest.raises(context_stage.ContextStageError, match="needs 5 finite weights"):
        context_stage.ContextStage.from_record({**record, "weights": [0.0] * 4})
    with pytest.raises(context_stage.ContextStageError, match="unreadable"):
        context_stage.ContextStage.from_record({k: v for k, v in record.items() if k != "bias"})


def test_the_smoothing_stage_is_smoothing_at_its_chosen_width():
    table = scattered_slides(5)
    rows, cols = (table.y - 1) // 50, (table.x - 1) // 50
    region = ((rows - 4) ** 2 + (cols - 6) ** 2 < 10).astype(np.int32)
    noisy = np.clip(0.3 + 0.4 * region + np.random.default_rng(6).normal(0, 0.3, len(rows)), 0, 1)
    # Away from 0 and 1, where the stage's logit clips at 1e-6.
    noisy = np.clip(noisy, 0.01, 0.99).astype(np.float32)
    validation = PatchPredictions(noisy, region, table.patient, table.x, table.y)
    stage = slide_context.fit_smoothing_stage(validation)
    choice = slide_context.choose_sigma(validation)
    assert choice.sigma > 0 and stage.kind == "smoothing" and stage.sigmas == (choice.sigma,)
    assert stage.threshold == choice.threshold
    expected = naive_smoothing(validation, choice.sigma)
    np.testing.assert_allclose(
        slide_context.context_p_idc(stage, validation), expected, rtol=0, atol=1e-6
    )
    again = context_stage.ContextStage.from_record(stage.to_record())
    assert again.kind == "smoothing" and again.sigmas == stage.sigmas
    np.testing.assert_array_equal(again.weights, stage.weights)
