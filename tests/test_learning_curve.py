"""The learning curve's power-law fit and its bootstrap extrapolation."""

import numpy as np
import pytest

from evaluation import metrics
from experiment import learning_curve


def test_power_law_fit_recovers_an_exact_law():
    n = np.array([1_000.0, 4_000.0, 16_000.0])
    auc = 1.0 - 0.8 * n**-0.25
    law = learning_curve.fit_power_law(n, auc)
    assert law.scale == pytest.approx(0.8, rel=1e-9)
    assert law.exponent == pytest.approx(0.25, rel=1e-9)
    assert law.auc(64_000.0) == pytest.approx(1.0 - 0.8 * 64_000.0**-0.25, rel=1e-12)


def test_extrapolation_fits_the_runs_aucs_and_brackets_its_estimate():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(30), 40)
    labels = (rng.random(len(patients)) < 0.3).astype(np.int32)
    # Three runs whose scores separate the classes better and better.
    runs = [
        (labels, np.clip(labels * shift + rng.normal(0.3, 0.25, len(labels)), 0, 1), patients)
        for shift in (0.2, 0.3, 0.4)
    ]
    sizes = [5_000.0, 10_000.0, 20_000.0]
    result = learning_curve.extrapolate(sizes, runs, 200_000.0, num_resamples=200)
    aucs = [metrics.roc_auc(labels, p) for _, p, _ in runs]
    np.testing.assert_allclose(result["roc_auc"], aucs, rtol=1e-12)
    law = learning_curve.fit_power_law(sizes, aucs)
    assert result["predicted_roc_auc"] == pytest.approx(float(law.auc(200_000.0)), rel=1e-12)
    assert result["low"] <= result["predicted_roc_auc"] <= result["high"]
    assert result["num_resamples_used"] == 200


def test_runs_on_different_test_sets_are_refused():
    labels = np.array([0, 1, 0, 1])
    patients = np.array([1, 1, 2, 2])
    runs = [(labels, np.full(4, 0.5), patients), (labels[::-1], np.full(4, 0.5), patients)]
    with pytest.raises(ValueError, match="same test set"):
        learning_curve.extrapolate([1.0, 2.0], runs, 10.0, num_resamples=10)
