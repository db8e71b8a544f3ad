"""Calibrating what ships: the patch network's P(IDC) and the slide-context stage's, each fitted
where its threshold is chosen (`idc_inference.calibration.fit`: temperature or isotonic, the
kind by its held-out Brier score over the fitting patients), with the threshold then chosen
again on the calibrated scale.

    calibration, threshold = calibrate_patches(validation)          # export_model.py
    stage = calibrate_stage(stage, table)                             # the stage's own
"""

from __future__ import annotations

import dataclasses

from evaluation import metrics
from experiment.predictions import PatchPredictions
from experiment.slide_context import context_p_idc
from idc_inference import calibration as calibration_lib
from idc_inference.calibration import Calibration
from idc_inference.context_stage import ContextStage


def calibrate_scores(
    p_idc, table: PatchPredictions, fitted_on: str = ""
) -> tuple[Calibration, float]:
    """(the calibration of these scores of `table`'s patches, the threshold of maximum balanced
    accuracy of the calibrated scores)."""
    fitted, _ = calibration_lib.fit(p_idc, table.label, table.patient, fitted_on=fitted_on)
    threshold = metrics.best_threshold(table.label, fitted.apply(p_idc))
    return fitted, float(threshold)


def calibrate_patches(table: PatchPredictions, fitted_on: str = "") -> tuple[Calibration, float]:
    """The patch network's calibration and threshold, fitted on `table` (validation patients)."""
    return calibrate_scores(table.p_idc, table, fitted_on)


def calibrate_stage(stage: ContextStage, table: PatchPredictions) -> ContextStage:
    """`stage` with a calibration of its output and its threshold, fitted on `table`."""
    raw = context_p_idc(dataclasses.replace(stage, calibration=Calibration()), table)
    fitted, threshold = calibrate_scores(raw, table, stage.fitted_on)
    return dataclasses.replace(stage, calibration=fitted, threshold=threshold)
