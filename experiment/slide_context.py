"""The slide as context in the experiment: smoothing widths and the second stage, chosen and
fitted on the validation patients' P(IDC), applied to any split's `PatchPredictions`.

IDC is a region, not a patch: a patch inside a tumour has tumour around it. The Kaggle file names
give every patch's place on its slide's 50-pixel grid, so a patch network's P(IDC) can be
smoothed over the grid after the fact, with nothing learned but one width:

    smoothed = smooth_on_grid(table, sigma=1.5)          # sigma in patches (50 px steps)
    choice = choose_sigma(validation)                    # the width, chosen on validation
    stage = fit_context_model(validation)                # the learned second stage
    p_context = context_p_idc(stage, test)

The grid arithmetic and the second stage live in `idc_inference.context_stage`, where the slide
program (map_slide.py --context) uses them; this module reads them on the experiment's tables
(each patient one slide).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from evaluation import metrics
from experiment.predictions import PatchPredictions
from idc_inference import context_stage
from idc_inference.context_stage import ContextStage
from input_pipeline import windows
from input_pipeline.windows import grid_cells

SIGMAS = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
TRUNCATE = context_stage.TRUNCATE
CONTEXT_SIGMAS = context_stage.CONTEXT_SIGMAS


def smooth_on_grid(table: PatchPredictions, sigma: float) -> np.ndarray:
    """P(IDC) of each patch averaged with its grid neighbours' under a Gaussian of `sigma` patches.

    Each patient's patches form one slide; patients never mix. sigma 0 returns P(IDC) unchanged.
    """
    rows, cols = grid_cells(table.x, table.y)
    return context_stage.smooth_on_grid(table.p_idc, rows, cols, sigma, table.patient)


def neighbour_fraction(table: PatchPredictions) -> np.ndarray:
    """Per patch, the fraction of its 4 grid neighbours that are present (a slide's density)."""
    rows, cols = grid_cells(table.x, table.y)
    return windows.neighbour_fraction(rows, cols, table.patient)


@dataclasses.dataclass(frozen=True)
class SigmaChoice:
    sigma: float
    threshold: float  # maximises balanced accuracy of the smoothed P(IDC) on validation
    validation_roc_auc: dict[float, float]  # per candidate sigma


def choose_sigma(validation: PatchPredictions, sigmas: Sequence[float] = SIGMAS) -> SigmaChoice:
    """The width with the highest validation ROC AUC, and its validation-tuned threshold.

    Ties go to the narrower kernel (the less the map is blurred, the better regions keep their
    borders).
    """
    scores = {
        float(s): metrics.roc_auc(validation.label, smooth_on_grid(validation, s)) for s in sigmas
    }
    best = max(scores.values())
    sigma = min(s for s, v in scores.items() if v == best)
    threshold = metrics.best_threshold(validation.label, smooth_on_grid(validation, sigma))
    return SigmaChoice(sigma, threshold, scores)


# ----------------------------------------------------------------------------- learned stage


def fit_context_model(
    table: PatchPredictions, l2: float = 1.0, fitted_on: str = ""
) -> ContextStage:
    """The second stage fitted on `table`: patients the patch network never trained on."""
    rows, cols = grid_cells(table.x, table.y)
    return context_stage.fit_context_stage(
        table.p_idc, table.label, rows, cols, table.patient, l2=l2, fitted_on=fitted_on
    )


def fit_smoothing_stage(table: PatchPredictions, fitted_on: str = "") -> ContextStage:
    """Smoothing as a context stage, its width and threshold chosen on `table`."""
    choice = choose_sigma(table)  # the study's choice; sigma 0 would leave P(IDC) as it is
    return ContextStage.smoothing(choice.sigma, choice.threshold, fitted_on)


def context_p_idc(stage: ContextStage, table: PatchPredictions) -> np.ndarray:
    """The second stage's P(IDC) of every patch of `table` (each patient one slide)."""
    rows, cols = grid_cells(table.x, table.y)
    return stage.predict(table.p_idc, rows, cols, table.patient)
