"""Slide-level outputs against the labels: called against labelled IDC area, slide by slide.

    areas = slide_areas(table, calls)                 # per slide: patches, labelled, called
    stats = agreement(areas)                          # bias, limits of agreement, MAE, intervals
    t = agreement_threshold(selection)                # the threshold that best matches areas
    t95 = threshold_at_sensitivity(labels, p, 0.95)   # a fixed-sensitivity operating point

A map reports the IDC area of a slide (summary.json's IDC area and IDC fraction of the tissue):
the tiles called IDC times a tile's area. Here a tile is a Kaggle patch, 200 um x 200 um
(`PATCH_MM2` = 0.04 mm2; 50 pixels at ~4 um per pixel), and the labelled area is the IDC patches
times the same. Agreement between the two over slides is read as Bland & Altman do: the bias
(mean of called - labelled), the limits of agreement (bias +- 1.96 SD of the differences: where
95% of slides' errors should fall) and the mean absolute error, of the area (mm2) and of the IDC
fraction of the slide's patches; each with a percentile interval from the bootstrap over slides.

The threshold that maximises balanced accuracy need not give the right area: on slides that are
mostly benign a few per cent of false calls add more area than the missed IDC removes.
`agreement_threshold` chooses the threshold that minimises the mean absolute area error instead,
on selection slides (never the slide judged). `cross_validation` assembles the held-out slides of
a cross-validation (each slide from the run that held it out; `slide_folds`), every choice for a
fold's slides made on the other folds' held-out slides or on the run's validation patients,
patch only or with the slide-context stage that ships (`ContextStage.smoothing`, its width and
threshold chosen on the same selection data, `slide_context.fit_smoothing_stage`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from evaluation import metrics, uncertainty
from experiment import paired, slide_context
from experiment.predictions import PatchPredictions
from experiment.slide_folds import _concatenate, held_out_slides

PATCH_MM2 = 0.2 * 0.2  # a Kaggle patch: 200 um x 200 um
LIMITS_SD = 1.96


@dataclasses.dataclass(frozen=True)
class SlideAreas:
    """Per slide (patient, increasing id): its patches, labelled IDC patches and called ones."""

    patient: np.ndarray
    patches: np.ndarray
    labelled: np.ndarray
    called: np.ndarray

    @property
    def difference_mm2(self) -> np.ndarray:
        return (self.called - self.labelled) * PATCH_MM2

    @property
    def difference_fraction(self) -> np.ndarray:
        return (self.called - self.labelled) / self.patches

    @property
    def mean_mm2(self) -> np.ndarray:
        return (self.called + self.labelled) / 2 * PATCH_MM2


def slide_areas(table: PatchPredictions, calls: np.ndarray) -> SlideAreas:
    """Each slide's labelled and called IDC patches (`calls`: bool per patch of `table`)."""
    ids, index = np.unique(table.patient, return_inverse=True)
    return SlideAreas(
        patient=ids,
        patches=np.bincount(index, minlength=len(ids)),
        labelled=np.bincount(index, np.asarray(table.label) == 1, minlength=len(ids)),
        called=np.bincount(index, np.asarray(calls, bool), minlength=len(ids)),
    )


def _agreement_statistics(counts: np.ndarray, areas: SlideAreas) -> dict[str, np.ndarray]:
    """The statistics for each row of slide counts [R, slides] (a slide drawn c times counts c
    times; the SD is the sample SD over the drawn slides)."""
    d_mm2, d_fraction = areas.difference_mm2, areas.difference_fraction
    n = counts.sum(axis=1)
    bias = counts @ d_mm2 / n
    variance = (counts @ d_mm2**2 - n * bias**2) / (n - 1)
    sd = np.sqrt(np.maximum(variance, 0.0))
    return {
        "bias_mm2": bias,
        "lower_limit_mm2": bias - LIMITS_SD * sd,
        "upper_limit_mm2": bias + LIMITS_SD * sd,
        "mae_mm2": counts @ np.abs(d_mm2) / n,
        "bias_fraction": counts @ d_fraction / n,
        "mae_fraction": counts @ np.abs(d_fraction) / n,
    }


def agreement(areas: SlideAreas, num_resamples: int = 2000, seed: int = 0) -> dict:
    """Bias, limits of agreement and mean absolute errors of the called area against the
    labelled, over the slides, each {"estimate", "low", "high"} (bootstrap over slides); with
    the SD of the differences and how many slides are over- and under-called."""
    counts = uncertainty.resample_counts(len(areas.patient), num_resamples, seed)
    on_data = _agreement_statistics(np.ones((1, len(areas.patient))), areas)
    replicates = _agreement_statistics(counts.astype(np.float64), areas)
    report = {
        name: {
            "estimate": float(on_data[name][0]),
            "low": float(np.percentile(values, 2.5)),
            "high": float(np.percentile(values, 97.5)),
        }
        for name, values in replicates.items()
    }
    difference = areas.called - areas.labelled
    report.update(
        slides=len(areas.patient),
        sd_mm2=float(np.std(areas.difference_mm2, ddof=1)),
        over_called=int(np.sum(difference > 0)),
        under_called=int(np.sum(difference < 0)),
    )
    return report


def _candidates(p_idc: np.ndarray) -> np.ndarray:
    """Below every P(IDC), the midpoints between distinct ones, and above every one."""
    distinct = np.unique(np.asarray(p_idc, np.float64))
    return np.r_[distinct[0] - 1e-6, (distinct[:-1] + distinct[1:]) / 2.0, distinct[-1] + 1e-6]


def area_errors(table: PatchPredictions, thresholds: np.ndarray) -> np.ndarray:
    """[thresholds]: the mean over the slides of |called - labelled IDC area| (mm2)."""
    thresholds = np.asarray(thresholds, np.float64)
    total = np.zeros(len(thresholds))
    p = np.asarray(table.p_idc, np.float64)
    patients = np.unique(table.patient)
    for patient in patients:
        mine = table.patient == patient
        values = np.sort(p[mine])
        called = len(values) - np.searchsorted(values, thresholds)
        total += np.abs(called - np.sum(table.label[mine] == 1))
    return total * PATCH_MM2 / len(patients)


def agreement_threshold(table: PatchPredictions) -> float:
    """The threshold that minimises the mean absolute IDC-area error over the slides of
    `table` (the lowest such, among midpoints between its distinct P(IDC) and both ends)."""
    candidates = _candidates(table.p_idc)
    return float(candidates[int(np.argmin(area_errors(table, candidates)))])


def threshold_at_sensitivity(labels: np.ndarray, p_idc: np.ndarray, target: float) -> float:
    """The highest threshold at which at least `target` of the IDC patches are called."""
    positives = np.sort(np.asarray(p_idc, np.float64)[np.asarray(labels) == 1])[::-1]
    if not len(positives):
        raise ValueError("no IDC patch to reach a sensitivity on")
    recall = np.arange(1, len(positives) + 1) / len(positives)
    return float(positives[int(np.searchsorted(recall >= target, True))])


def operating_point(table: PatchPredictions, calls: np.ndarray, seed: int = 0) -> dict:
    """Sensitivity and specificity of the calls (bool per patch), pooled, with percentile
    intervals from the bootstrap over the patients (`evaluation.uncertainty`'s; the calls fixed)."""
    ids, index = np.unique(table.patient, return_inverse=True)
    cell = 2 * (np.asarray(table.label) == 1) + np.asarray(calls, bool)  # tn, fp, fn, tp
    confusion = np.bincount(index * 4 + cell, minlength=4 * len(ids)).reshape(-1, 4)
    counts = np.vstack([np.ones(len(ids)), uncertainty.resample_counts(len(ids), 2000, seed)])
    values = paired.threshold_replicates(
        counts, np.broadcast_to(confusion.astype(np.float64), (len(counts), *confusion.shape))
    )
    out = {}
    for name in ("sensitivity", "specificity"):
        replicates = values[name][1:][~np.isnan(values[name][1:])]
        low, high = np.percentile(replicates, [2.5, 97.5])
        out[name] = {"estimate": float(values[name][0]), "low": float(low), "high": float(high)}
    return out


# ------------------------------------------------------------------------ the cross-validation


@dataclasses.dataclass(frozen=True)
class Fold:
    """One run's held-out slides and the data its choices are made on."""

    run: str
    test: PatchPredictions
    selection: PatchPredictions
    choice: str = ""  # what was chosen beyond thresholds (the smoothing width)


def cross_validation(
    runs: Sequence[tuple[str, PatchPredictions, PatchPredictions]], chosen_on: str
) -> list[Fold]:
    """The folds of runs (name, validation, test) whose test patients are disjoint: each fold's
    held-out whole slides, its choices on "other slides" (the other folds' held-out slides) or
    on "validation" (the run's validation patients)."""
    held = [held_out_slides(test) for _, _, test in runs]
    _concatenate(held)  # refuses a slide held out by two runs
    folds = []
    for i, (name, validation, _) in enumerate(runs):
        if chosen_on == "other slides":
            selection = _concatenate([t for j, t in enumerate(held) if j != i])
        elif chosen_on == "validation":
            selection = validation
        else:
            raise ValueError(f"chosen_on must be 'other slides' or 'validation', not {chosen_on!r}")
        folds.append(Fold(name, held[i], selection))
    return folds


def with_context(fold: Fold) -> Fold:
    """The fold under the shipped kind of context stage: smoothing, its width (and threshold)
    chosen on the fold's selection data, applied to its test and selection P(IDC) alike."""
    stage = slide_context.fit_smoothing_stage(fold.selection)
    return Fold(
        fold.run,
        fold.test.with_p_idc(slide_context.context_p_idc(stage, fold.test)),
        fold.selection.with_p_idc(slide_context.context_p_idc(stage, fold.selection)),
        f"sigma {stage.sigmas[0]:g}",
    )


THRESHOLD_RULES: dict[str, Callable[[PatchPredictions], float]] = {
    "balanced accuracy": lambda t: metrics.best_threshold(t.label, t.p_idc),
    "area agreement": agreement_threshold,
    "sensitivity 0.95": lambda t: threshold_at_sensitivity(t.label, t.p_idc, 0.95),
}


def pooled_calls(
    folds: Sequence[Fold], rule: str
) -> tuple[PatchPredictions, np.ndarray, list[float]]:
    """The folds' held-out slides pooled, each fold's called at the threshold `rule` chooses
    on its selection data; and those thresholds."""
    thresholds = [THRESHOLD_RULES[rule](fold.selection) for fold in folds]
    pooled = _concatenate([fold.test for fold in folds])
    calls = np.concatenate(
        [f.test.p_idc.astype(np.float64) >= t for f, t in zip(folds, thresholds)]
    )
    return pooled, calls, thresholds
