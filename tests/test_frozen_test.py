"""The frozen test's report (experiment/frozen_test.py, split_studies.py) on fake runs: every
choice follows from the validation tables alone, every figure from the test tables, checked
against scikit-learn and the calibration applied by hand."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from experiment import frozen_test, split_studies
from experiment.predictions import split_predictions
from tests.test_study import fake_run


@pytest.fixture(scope="module")
def frozen_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen")
    rng = np.random.default_rng(1)
    for run, quality in (("v1_patch", 0.3), ("v2_patch", 0.35), ("v2_window3", 0.45)):
        fake_run(root / run, rng, quality, 147, 22_000)
    fake_run(root / "v1_patch_0.5", rng, 0.25, 74, 11_000)
    # The leaky run: its test patches half of v1_patch's (the same patients and cells).
    fake_run(root / "v1_leaky", rng, 0.5, 147, 27_000)
    for split in ("validation", "test"):
        path = root / "v1_leaky" / f"predictions_{split}.npz"
        with np.load(path) as table:
            arrays = {k: table[k] for k in table.files}
        keep = np.arange(len(arrays["label"])) % 2 == 0
        np.savez(path, **{k: v[keep] for k, v in arrays.items()})
    return root


def test_every_output_is_calibrated_and_chosen_on_validation(frozen_dir):
    outputs = frozen_test.candidate_outputs(frozen_dir)
    assert [(o.run, o.context) for o in outputs] == [
        (run, context) for run in ("v1_patch", "v2_patch", "v2_window3") for context in (0, 1)
    ]
    for output in outputs:
        raw_validation = split_predictions(frozen_dir / output.run, "validation")
        raw_test = split_predictions(frozen_dir / output.run, "test")
        if not output.context:
            np.testing.assert_array_equal(output.test_uncalibrated.p_idc, raw_test.p_idc)
            np.testing.assert_allclose(
                output.validation.p_idc, output.calibration.apply(raw_validation.p_idc)
            )
        np.testing.assert_allclose(
            output.test.p_idc, output.calibration.apply(output.test_uncalibrated.p_idc)
        )
        assert output.validation_roc_auc == pytest.approx(
            roc_auc_score(output.validation.label, output.validation.p_idc)
        )
    chosen = frozen_test.choose(outputs)
    best = max(roc_auc_score(o.validation.label, o.validation.p_idc) for o in outputs if o.context)
    assert chosen.context and chosen.validation_roc_auc == pytest.approx(best)


def test_the_report_has_every_section_and_the_test_roc_auc_of_each_output(frozen_dir):
    text = frozen_test.render(frozen_dir)
    for heading in (
        "## The choice (validation patients)",
        "## The test (once)",
        "### Paired differences",
        "### Operating points of the chosen output",
        "## Learning curve, nested",
        "## The leak of a patch-level split, on the same patients",
    ):
        assert heading in text, heading
    assert "`v1_window3`" in text  # named as missing
    for output in frozen_test.candidate_outputs(frozen_dir):
        expected = f"{roc_auc_score(output.test.label, output.test.p_idc):.3f}"
        assert f"| {output.name} | {expected} [" in text
    assert (frozen_dir / "reliability.png").is_file()


def test_the_leak_is_measured_on_the_same_patches(frozen_dir):
    leaky = split_predictions(frozen_dir / "v1_leaky", "test")
    honest = split_studies.same_patches(split_predictions(frozen_dir / "v1_patch", "test"), leaky)
    for field in ("patient", "x", "y", "label"):
        np.testing.assert_array_equal(getattr(honest, field), getattr(leaky, field))
    text = "\n".join(split_studies.leakage(frozen_dir))
    assert f"{roc_auc_score(honest.label, honest.p_idc):.3f} [" in text
    with pytest.raises(KeyError):
        split_studies.same_patches(leaky, split_predictions(frozen_dir / "v1_patch", "test"))


def test_the_learning_curve_needs_two_shares_and_names_them(frozen_dir):
    lines = split_studies.learning_curve(frozen_dir)
    text = "\n".join(lines)
    assert "`v1_patch_0.5` | 74 (11,000)" in text and "`v1_patch` | 147 (22,000)" in text
    summary = json.loads((frozen_dir / "v1_patch" / "summary.json").read_text())
    assert summary["data_info"]["counts"]["train"]["patients"] == 147
