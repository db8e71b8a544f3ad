"""summary.json: what a finished run reports, assembled from plain values.

`build_summary` takes the config, the run's record (data description, per-epoch history, images
per second) and the test split's labels, patients and P(IDC); it adds the metrics at 0.5 and at
the threshold tuned on validation, bootstrap intervals over test patients, calibration and the
per-patient view. Nothing here touches a device: the loop evaluates, this module reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from evaluation import metrics, uncertainty
from trainer import state as state_lib


def build_summary(
    config: ml_collections.ConfigDict,
    *,
    data: Mapping,
    history: Sequence[Mapping],
    steps: int,
    best_step: int | None,
    images_per_second: Sequence[float],
    test_report: Mapping,
    test_labels: np.ndarray,
    test_patients: np.ndarray,
    test_probabilities: np.ndarray,
) -> dict:
    """summary.json's content (without wall time and invocations, which the loop adds)."""
    threshold = history[-1]["val_tuned_threshold"] if history else 0.5
    tuned = metrics.full_report(test_labels, test_probabilities, test_patients, threshold=threshold)
    profile = state_lib.model_profile(config)
    last = history[-1] if history else {}
    return {
        "model": config.model.name,
        "alpha": config.model.alpha,
        "image_size": config.preprocess.image_size,
        **{k: v for k, v in data.items() if k != "info"},
        "data_info": data.get("info", {}),
        "num_epochs": config.num_epochs,
        "steps": steps,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
        "compute_dtype": str(jnp.dtype(state_lib.compute_dtype(config))),
        "trainable_parameters": profile.params,
        "batch_norm_statistics": profile.batch_stats,
        "multiply_adds_per_image": profile.macs,
        "train_images_per_second": (
            float(np.median(images_per_second)) if len(images_per_second) else math.nan
        ),
        "best_step": best_step,
        "final_train": {
            "loss": last.get("train_loss", math.nan),
            "accuracy": last.get("train_accuracy", math.nan),
        },
        "final_validation": {k[len("val_") :]: v for k, v in last.items() if k.startswith("val_")},
        "test": dict(test_report),
        "test_at_validation_threshold": tuned,
        **test_statistics(
            test_labels,
            test_probabilities,
            test_patients,
            threshold,
            bootstrap_resamples=config.eval_bootstrap_resamples,
        ),
    }


# The same resamples of the test patients for every run: intervals of two models evaluated on one
# test split are then computed on the same resampled sets.
BOOTSTRAP_SEED = 0


def test_statistics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    patients: np.ndarray,
    tuned_threshold: float,
    *,
    bootstrap_resamples: int,
) -> dict:
    """summary.json's `test_intervals`, `test_calibration` and `test_per_patient`.

    `test_intervals`: percentile bootstrap intervals over the test patients
    (`uncertainty.bootstrap_intervals`, `bootstrap_resamples` resamples; None when
    0): `at_0.5` for every metric, `at_validation_threshold` for the threshold metrics at the
    threshold tuned on validation (the same resamples). Under the random-patch split the test
    patients also gave patches to training: resampling patients still respects the correlation
    of their test patches, but the intervals then describe a leaky estimate (sampling noise only,
    not the leak's optimism). `test_calibration`: reliability curve, ECE and MCE of P(IDC).
    `test_per_patient`: one row per test patient and the spread of per-patient AUC and balanced
    accuracy, with the worst patients.
    """
    intervals = None
    if bootstrap_resamples > 0:
        options = dict(num_resamples=bootstrap_resamples, seed=BOOTSTRAP_SEED)
        intervals = {
            "at_0.5": uncertainty.bootstrap_intervals(
                labels, probabilities, patients, threshold=0.5, **options
            ),
            "at_validation_threshold": uncertainty.bootstrap_intervals(
                labels,
                probabilities,
                patients,
                threshold=tuned_threshold,
                metric_names=uncertainty.THRESHOLD_METRICS,
                **options,
            ),
        }
    table = metrics.per_patient_table(labels, probabilities, patients)
    return {
        "test_intervals": intervals,
        "test_calibration": metrics.calibration_report(labels, probabilities),
        "test_per_patient": {
            "threshold": 0.5,
            "distribution": metrics.per_patient_distribution(table),
            "patients": table,
        },
    }
