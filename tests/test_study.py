"""The studies beyond the paper: prior-shift correction and the report over synthetic runs."""

import json

import numpy as np
import pytest

from experiment import study
from experiment.predictions import PatchPredictions
from trainer import metrics


def test_prior_correction_undoes_balanced_class_weights():
    counts = {"patches": 1000, "positives": 200}
    p = np.array([0.05, 0.3, 0.5, 0.9])
    # What a loss weighted w_c = N / (2 N_c) converges to, by Bayes' rule.
    w0, w1 = 1000 / (2 * 800), 1000 / (2 * 200)
    weighted = w1 * p / (w1 * p + w0 * (1 - p))
    table = PatchPredictions(weighted.astype(np.float32), *(np.zeros(4, np.int32),) * 4)
    np.testing.assert_allclose(study.prior_corrected(table, counts).p_idc, p, rtol=1e-5)


def fake_run(path, rng, quality, train_patients, train_patches):
    path.mkdir(parents=True)
    counts = {"patches": train_patches, "positives": train_patches // 4, "patients": train_patients}
    held_out = {"patches": 5_000, "positives": 1_000, "patients": 37}
    split_counts = {"train": counts, "validation": held_out, "test": held_out}
    (path / "summary.json").write_text(json.dumps({"data_info": {"counts": split_counts}}))
    for split, num_patients in (("validation", 8), ("test", 10)):
        patient = np.repeat(np.arange(num_patients, dtype=np.int32) + 100, 36)
        cell = np.tile(np.arange(36), num_patients)
        x, y = (cell % 6) * 50 + 1, (cell // 6) * 50 + 1
        label = ((cell % 6) < 2 + patient % 3).astype(np.int32)  # an IDC band on each slide
        p = np.clip(0.3 + quality * label + rng.normal(0, 0.3, len(label)), 0, 1)
        np.savez(
            path / f"predictions_{split}.npz",
            p_idc=p.astype(np.float32),
            label=label,
            patient=patient,
            x=x.astype(np.int32),
            y=y.astype(np.int32),
        )


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiment")
    rng = np.random.default_rng(0)
    fake_run(root / "mobilenet_v1_patient", rng, 0.4, 171, 24_000)
    fake_run(root / "mobilenet_v2_patient", rng, 0.35, 171, 24_000)
    fake_run(root / "v1_patients_0.25", rng, 0.2, 43, 6_000)
    fake_run(root / "v1_patients_0.5", rng, 0.3, 86, 12_000)
    return root


def test_report_scores_every_run_on_its_own_predictions(experiment_dir):
    report = study.render(experiment_dir)
    assert "Runs not found (skipped): `v1_class_weights`." in report
    test = np.load(experiment_dir / "mobilenet_v1_patient" / "predictions_test.npz")
    auc = metrics.roc_auc(test["label"], test["p_idc"])
    row = next(line for line in report.splitlines() if line.startswith("| `mobilenet_v1_patient`"))
    assert f"| {auc:.3f} [" in row
    assert "mobilenet_v1_patient + mobilenet_v2_patient (mean P(IDC))" in report
    # The IDC bands are regions: smoothing must be chosen and help on these slides.
    assert "## Slide context" in report and "smoothed, sigma" in report
    assert "Fitted power law" in report
