"""Calibration of P(IDC) (idc_inference/calibration.py): fitted maps recover the truth behind
synthetic miscalibrated scores, and pool-adjacent-violators equals scikit-learn's isotonic
regression. The tolerances are a few standard errors of the finite samples drawn here."""

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from evaluation import metrics
from idc_inference import calibration
from idc_inference.errors import CalibrationError


def _miscalibrated(rng, n, distort):
    """True P(IDC) q ~ U(0.02, 0.98), labels ~ Bernoulli(q), scores distort(q)."""
    q = rng.uniform(0.02, 0.98, n)
    y = (rng.random(n) < q).astype(np.int32)
    return distort(q), y, q


def _overconfident(q):
    logit = np.log(q) - np.log1p(-q)
    return 1.0 / (1.0 + np.exp(-(2.5 * logit + 0.8)))  # T = 1/2.5, and a prior shift


def test_pool_adjacent_violators_equals_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.random(300) + np.linspace(0, 1, 300)
    weight = rng.uniform(0.5, 2.0, 300)
    expected = (
        IsotonicRegression().fit(np.arange(300), y, sample_weight=weight).predict(np.arange(300))
    )
    np.testing.assert_allclose(calibration.pool_adjacent_violators(y, weight), expected, atol=1e-12)


def test_isotonic_fit_reproduces_scikit_learn_at_its_points():
    rng = np.random.default_rng(1)
    p, y, _ = _miscalibrated(rng, 2000, lambda q: q**2)
    fitted = calibration.fit_isotonic(p, y)
    expected = IsotonicRegression(out_of_bounds="clip").fit(p, y).predict(p)
    np.testing.assert_allclose(fitted.apply(p), expected, atol=1e-6)


def test_temperature_recovers_the_truth_of_overconfident_shifted_scores():
    rng = np.random.default_rng(2)
    p, y, _ = _miscalibrated(rng, 50_000, _overconfident)
    fitted = calibration.fit_temperature(p, y)
    assert fitted.temperature == pytest.approx(2.5, rel=0.05)
    assert fitted.bias == pytest.approx(-0.8 / 2.5, abs=0.05)
    fresh_p, fresh_y, fresh_q = _miscalibrated(np.random.default_rng(3), 50_000, _overconfident)
    assert np.abs(fitted.apply(fresh_p) - fresh_q).max() < 0.03
    before = metrics.expected_calibration_error(fresh_y, fresh_p)
    after = metrics.expected_calibration_error(fresh_y, fitted.apply(fresh_p))
    assert before > 0.05 and after < 0.015


def test_isotonic_recovers_a_distortion_no_temperature_fits():
    distort = lambda q: np.where(q < 0.5, q**3 * 4, 1 - (1 - q) ** 0.5 * 0.7)  # noqa: E731
    p, y, _ = _miscalibrated(np.random.default_rng(4), 50_000, distort)
    fitted = calibration.fit_isotonic(p, y)
    fresh_p, fresh_y, fresh_q = _miscalibrated(np.random.default_rng(5), 50_000, distort)
    assert np.abs(fitted.apply(fresh_p) - fresh_q).mean() < 0.02
    temperature = calibration.fit_temperature(p, y)
    assert np.abs(temperature.apply(fresh_p) - fresh_q).mean() > 0.03


def test_fit_picks_the_lower_held_out_brier_score_and_records_round_trip():
    rng = np.random.default_rng(6)
    p, y, _ = _miscalibrated(rng, 3000, _overconfident)
    groups = np.repeat(np.arange(30), 100)
    fitted, scores = calibration.fit(p, y, groups, fitted_on="validation patients")
    assert fitted.kind == min(scores, key=scores.get)
    assert set(scores) == {"temperature", "isotonic"}
    again = calibration.Calibration.from_record(fitted.to_record())
    np.testing.assert_array_equal(again.apply(p), fitted.apply(p))
    assert again.fitted_on == "validation patients"
    assert (
        calibration.Calibration.from_record(None).apply(p).tolist() == p.astype(np.float32).tolist()
    )
    with pytest.raises(CalibrationError, match="unknown calibration"):
        calibration.Calibration.from_record({"kind": "histogram"})


# ----------------------------------------------------------------------------- in the programs


def _sigmoid_of_scaled_logit(p, temperature, bias):
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return 1.0 / (1.0 + np.exp(-((np.log(p) - np.log1p(-p)) / temperature + bias)))


def test_exported_weights_carry_calibrations_that_the_model_and_the_slide_program_apply(
    tmp_path_factory,
):
    """export_model.py fits both calibrations on the validation patients; with calibrations of
    known parameters written into the record, IDCModel.predict and map_slide.py's patch and
    context P(IDC) are the network's P(IDC) mapped by the formula written here."""
    import json  # noqa: PLC0415

    from idc_inference import model as model_lib  # noqa: PLC0415
    from idc_inference.predictor import Predictor  # noqa: PLC0415
    from input_pipeline.patches import find_png_files, load_patch  # noqa: PLC0415
    from tests.commands import run_program  # noqa: PLC0415
    from tests.test_inference import trained_tiny_workdir  # noqa: PLC0415
    from tests.test_slides import (  # noqa: PLC0415
        DEMO_PATCHES,
        DEMO_PATIENT,
        DEMO_SLIDE,
        map_program,
        naive_context_p_idc,
        read_labels_csv,
    )

    tiny_run = trained_tiny_workdir(tmp_path_factory)
    tmp_path = tmp_path_factory.mktemp("calibrated")
    weights = tmp_path / "tiny.safetensors"
    result = run_program(
        "export_model.py", f"--workdir={tiny_run}", f"--output={weights}", "--nopatients"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sidecar = weights.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    for fitted in (record["calibration"], record["context_stage"]["calibration"]):
        assert fitted["kind"] in ("temperature", "isotonic")
        assert "validation patients" in fitted["fitted_on"]
    assert "calibrated" in record["threshold"]["source"]

    record["calibration"] = {"kind": "temperature", "temperature": 2.0, "bias": 0.3}
    record["context_stage"]["calibration"] = {
        "kind": "temperature",
        "temperature": 0.5,
        "bias": -0.2,
    }
    sidecar.write_text(json.dumps(record))
    model = model_lib.load(weights)
    files, _ = find_png_files([DEMO_PATCHES])
    raw = Predictor.from_workdir(tiny_run, batch_size=64, tta=model.tta)[0]
    network = dict(zip(map(str, files), raw(np.stack([load_patch(f).image for f in files]))))
    got = model.predict_files(files)
    np.testing.assert_allclose(
        got.p_idc,
        _sigmoid_of_scaled_logit([network[str(f)] for f in got.files], 2.0, 0.3),
        atol=2e-6,
    )

    out = tmp_path / "maps"
    result = map_program(f"--workdir={weights}", f"--output_dir={out}", "--context", DEMO_SLIDE)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_labels_csv(out / f"{DEMO_PATIENT}.tiles.csv")
    by_place = {(n.x - 1, n.y - 1): network[str(f)] for f, n in zip(got.files, got.names)}
    p_network = np.array([by_place[(float(r["x"]), float(r["y"]))] for r in rows], np.float64)
    np.testing.assert_allclose(
        [float(r["p_idc_patch"]) for r in rows],
        _sigmoid_of_scaled_logit(p_network, 2.0, 0.3),
        atol=2e-6,
    )
    stage = record["context_stage"]
    expected = naive_context_p_idc(
        stage, [float(r["x"]) // 50 for r in rows], [float(r["y"]) // 50 for r in rows], p_network
    )
    np.testing.assert_allclose(
        [float(r["p_idc"]) for r in rows], _sigmoid_of_scaled_logit(expected, 0.5, -0.2), atol=2e-5
    )
