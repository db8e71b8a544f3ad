"""The studies beyond the paper: prior-shift correction and the report over synthetic runs."""

import json

import numpy as np
import pytest

from evaluation import metrics
from experiment import study
from experiment.predictions import PatchPredictions


def test_prior_correction_undoes_balanced_class_weights():
    counts = {"patches": 1000, "positives": 200}
    p = np.array([0.05, 0.3, 0.5, 0.9])
    # What a loss weighted w_c = N / (2 N_c) converges to, by Bayes' rule.
    w0, w1 = 1000 / (2 * 800), 1000 / (2 * 200)
    weighted = w1 * p / (w1 * p + w0 * (1 - p))
    table = PatchPredictions(weighted.astype(np.float32), *(np.zeros(4, np.int32),) * 4)
    np.testing.assert_allclose(study.prior_corrected(table, counts).p_idc, p, rtol=1e-5)


def fake_run(path, rng, quality, train_patients, train_patches, first_test_patient=100):
    path.mkdir(parents=True)
    counts = {"patches": train_patches, "positives": train_patches // 4, "patients": train_patients}
    held_out = {"patches": 5_000, "positives": 1_000, "patients": 37}
    split_counts = {"train": counts, "validation": held_out, "test": held_out}
    (path / "summary.json").write_text(json.dumps({"data_info": {"counts": split_counts}}))
    for split, num_patients, first in (("validation", 8, 900), ("test", 10, first_test_patient)):
        patient = np.repeat(np.arange(num_patients, dtype=np.int32) + first, 36)
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
    # The folds of the cross-validation over slides: other test patients, whole slides.
    for network, quality in (("v1", 0.4), ("v2", 0.35)):
        for fold, first in (("a", 200), ("b", 300)):
            fake_run(root / f"{network}_slides_{fold}", rng, quality, 200, 24_000, first)
    return root


def test_report_scores_every_run_on_its_own_predictions(experiment_dir):
    report = study.render(experiment_dir)
    assert "`v1_class_weights`" in report.split("Runs not found (skipped): ")[1].split("\n")[0]
    test = np.load(experiment_dir / "mobilenet_v1_patient" / "predictions_test.npz")
    auc = metrics.roc_auc(test["label"], test["p_idc"])
    row = next(line for line in report.splitlines() if line.startswith("| `mobilenet_v1_patient`"))
    assert f"| {auc:.3f} [" in row
    assert "mobilenet_v1_patient + mobilenet_v2_patient (mean P(IDC))" in report
    # The IDC bands are regions: smoothing must be chosen and help on these slides.
    assert "## Slide context" in report and "smoothed, sigma" in report
    assert "Fitted power law" in report


def test_cross_validation_over_slides_pools_held_out_slides_at_each_runs_threshold(
    experiment_dir,
):
    from experiment import slide_folds

    report = study.render(experiment_dir)
    section = report.split("## Slide context on whole slides held out")[1].split("\n## ")[0]
    runs = ("mobilenet_v2_patient", "v2_slides_a", "v2_slides_b")
    tables = [
        {
            split: dict(np.load(experiment_dir / run / f"predictions_{split}.npz"))
            for split in ("validation", "test")
        }
        for run in runs
    ]
    # Patch only: ROC AUC of the pooled P(IDC); balanced accuracy with each run's calls at the
    # threshold that maximises its own validation balanced accuracy (scikit-learn's, over the
    # midpoints between distinct validation P(IDC)).
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    label = np.concatenate([t["test"]["label"] for t in tables])
    p = np.concatenate([t["test"]["p_idc"] for t in tables])
    calls = []
    for t in tables:
        validation = t["validation"]
        distinct = np.unique(validation["p_idc"].astype(np.float64))
        candidates = (distinct[:-1] + distinct[1:]) / 2
        scores = [
            balanced_accuracy_score(validation["label"], validation["p_idc"] >= c)
            for c in candidates
        ]
        best = candidates[int(np.argmax(scores))]
        calls.append((t["test"]["p_idc"] >= best).astype(int))
    balanced = balanced_accuracy_score(label, np.concatenate(calls))
    row = next(
        line
        for line in section.splitlines()
        if line.startswith("| MobileNetV2 | patch only | validation |")
    )
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == f"30 ({len(label):,})"
    assert cells[4].startswith(f"{metrics.roc_auc(label, p):.3f} [")
    patient = np.concatenate([t["test"]["patient"] for t in tables])
    within = [roc_auc_score(label[patient == k], p[patient == k]) for k in np.unique(patient)]
    assert cells[5].startswith(f"{np.mean(within):.3f} [")
    assert cells[6].startswith(f"{balanced:.3f} [")
    assert "| MobileNetV1 + MobileNetV2 (mean P(IDC)) | learned second stage | other slides |" in (
        section
    )
    # Shifting P(IDC) by a run's threshold keeps every call.
    shifted = slide_folds.at_own_threshold(p, 0.3)
    np.testing.assert_array_equal(shifted >= 0.5, p >= 0.3)


def test_held_out_slides_of_runs_pool_the_whole_slides_of_each_runs_test_patients(
    experiment_dir,
):
    from experiment import slide_folds

    runs = [experiment_dir / name for name in ("v2_slides_a", "v2_slides_b")]
    pooled = slide_folds.held_out_slides_of_runs([str(r) for r in runs])
    tests = [np.load(r / "predictions_test.npz") for r in runs]
    # The fake runs' test patients are all dense 6 x 6 grids: every one is a whole slide.
    np.testing.assert_array_equal(pooled.patient, np.concatenate([t["patient"] for t in tests]))
    np.testing.assert_array_equal(pooled.p_idc, np.concatenate([t["p_idc"] for t in tests]))
    with pytest.raises(ValueError, match="held out by two runs"):
        slide_folds.held_out_slides_of_runs([str(runs[0]), str(runs[0])])


def test_the_held_out_report_of_the_cross_validation_and_the_split(experiment_dir, tmp_path):
    """study.py --cv/--patient_split on the fake runs: the area bias of each network's patch
    calls equals a hand count at the thresholds scikit-learn's balanced accuracy chooses on the
    other folds' slides; the paired ROC AUC gain equals scikit-learn's difference."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from tests.commands import run_program

    runs = {
        n: [
            experiment_dir / r for r in (f"mobilenet_{n}_patient", f"{n}_slides_a", f"{n}_slides_b")
        ]
        for n in ("v1", "v2")
    }
    output = tmp_path / "agreement.md"
    result = run_program(
        "study.py",
        f"--output={output}",
        *(f"--cv={n}=" + ",".join(map(str, dirs)) for n, dirs in runs.items()),
        f"--patient_split=v1={runs['v1'][0]}",
        f"--patient_split=v2={runs['v2'][0]}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(output.with_suffix(".json").read_text())
    assert (tmp_path / "bland_altman.png").stat().st_size > 10_000
    tests = [dict(np.load(d / "predictions_test.npz")) for d in runs["v1"]]
    bias = []
    for i, test in enumerate(tests):
        rest = [t for j, t in enumerate(tests) if j != i]
        label = np.concatenate([t["label"] for t in rest])
        p = np.concatenate([t["p_idc"] for t in rest]).astype(np.float64)
        distinct = np.unique(p)
        candidates = np.r_[distinct[0] - 1e-6, (distinct[:-1] + distinct[1:]) / 2]
        scores = [balanced_accuracy_score(label, p >= c) for c in candidates]
        threshold = candidates[int(np.argmax(scores))]
        for patient in np.unique(test["patient"]):
            mine = test["patient"] == patient
            called = np.sum(test["p_idc"][mine].astype(np.float64) >= threshold)
            bias.append((called - test["label"][mine].sum()) * 0.04)
    level = figures["cross_validation"]["levels"][
        "v1 | patch only | other slides | balanced accuracy"
    ]
    assert level["agreement"]["bias_mm2"]["estimate"] == pytest.approx(np.mean(bias), abs=1e-9)
    v1, v2 = (np.load(runs[n][0] / "predictions_test.npz") for n in ("v1", "v2"))
    gain = roc_auc_score(v2["label"], v2["p_idc"]) - roc_auc_score(v1["label"], v1["p_idc"])
    compared = next(
        c
        for c in figures["patient_split"]
        if c["subset"] == "all test patients"
        and c["a"] == "v1, patch only"
        and c["b"] == "v2, patch only"
    )
    assert compared["roc_auc"]["difference"] == pytest.approx(gain, abs=1e-12)
    assert (
        compared["roc_auc"]["low"]
        <= compared["roc_auc"]["difference"]
        <= compared["roc_auc"]["high"]
    )
    report = output.read_text()
    assert "**v2, context** against **v2, patch only**" in report
    assert "![Bland-Altman plots](bland_altman.png)" in report
    refused = run_program(
        "study.py", f"--output={output}", f"--workdir={experiment_dir}", f"--cv=v1={runs['v1'][0]}"
    )
    assert refused.returncode == 2 and "not both" in refused.stderr
