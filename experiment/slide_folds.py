"""Slide context judged on whole slides that no part of the pipeline trained on.

For each network, the runs of `study.SLIDE_FOLDS`: the split of seed 0 (5 of the 27 whole slides
among its test patients) and two folds whose test patients are the other 22 slides
(`data.test_patients`), each run trained and validated on the remaining patients. For each run
the smoothing width, the second stage and every threshold are chosen either on its validation
patients, or on the other runs' held-out slides (whole slides like the ones judged, each
predicted by a network that never trained on it; `CHOSEN_ON`); its held-out slides are then
scored. The three runs' slides are pooled (27 patients, each predicted by a network that never
saw it), and intervals come from the bootstrap over those patients.

Pooling runs: ROC AUC and ECE are of the pooled P(IDC) as the runs give it. Balanced accuracy and
F1 use each run's own validation threshold: P(IDC) is shifted in logit by that threshold
(`at_own_threshold`: the threshold moves to 0.5, and each patch's call is unchanged) before the
calls are pooled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from evaluation import metrics
from experiment import slide_context
from experiment.markdown import fmt, fmt_interval, markdown_table
from experiment.predictions import PatchPredictions
from experiment.scoring import (
    METRIC_COLUMNS,
    Scored,
    mean_p_idc,
    scored_intervals,
    whole_slide_patients,
)

_EPS = 1e-7


def at_own_threshold(p_idc: np.ndarray, threshold: float) -> np.ndarray:
    """P(IDC) shifted in logit so that `threshold` falls on 0.5 (the calls are unchanged)."""
    p = np.clip(np.asarray(p_idc, np.float64), _EPS, 1 - _EPS)
    t = float(np.clip(threshold, _EPS, 1 - _EPS))
    logit = np.log(p) - np.log1p(-p) - (np.log(t) - np.log1p(-t))
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)


def per_slide_roc_auc(table: PatchPredictions, num_resamples: int = 2000, seed: int = 0) -> dict:
    """Mean over slides (patients with both classes) of the ROC AUC within each slide: how well
    a map ranks its own tiles, whatever the offsets between networks; with a percentile
    bootstrap interval over the slides."""
    scores = np.array(
        [
            metrics.roc_auc(table.label[mine], table.p_idc[mine])
            for patient in np.unique(table.patient)
            if 0 < (table.label[mine := table.patient == patient]).mean() < 1
        ]
    )
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, len(scores), (num_resamples, len(scores)))].mean(axis=1)
    return {
        "estimate": float(scores.mean()),
        "low": float(np.percentile(means, 2.5)),
        "high": float(np.percentile(means, 97.5)),
        "slides": len(scores),
    }


CV_COLUMNS = (
    "ROC AUC, pooled [95% CI]",
    "ROC AUC within a slide, mean [95% CI]",
    *METRIC_COLUMNS[2:],
)


def pooled_cells(parts: Sequence[tuple[PatchPredictions, float]]) -> list[str]:
    """CV_COLUMNS of the pooled held-out slides, each part at its own threshold."""
    pooled = _concatenate([table for table, _ in parts])
    shifted = pooled.with_p_idc(
        np.concatenate([at_own_threshold(t.p_idc, threshold) for t, threshold in parts])
    )
    raw, tuned = scored_intervals(pooled, 0.5, calls=shifted)
    return [
        fmt_interval(raw["roc_auc"]),
        fmt_interval(per_slide_roc_auc(pooled)),
        fmt_interval(tuned["balanced_accuracy"]),
        fmt_interval(tuned["f1"]),
        fmt(metrics.expected_calibration_error(pooled.label, pooled.p_idc)),
    ]


def _concatenate(tables: Sequence[PatchPredictions]) -> PatchPredictions:
    patients = [set(t.patient.tolist()) for t in tables]
    if sum(map(len, patients)) != len(set().union(*patients)):
        raise ValueError("a patient is held out by two runs of one cross-validation")
    return PatchPredictions(
        *(
            np.concatenate([getattr(t, field) for t in tables])
            for field in ("p_idc", "label", "patient", "x", "y")
        )
    )


def held_out_slides(test: PatchPredictions) -> PatchPredictions:
    """A run's test patches of the patients that are whole slides."""
    slides = whole_slide_patients(test)
    return test.select(np.flatnonzero(np.isin(test.patient, slides)))


def held_out_slides_of_runs(workdirs: Sequence[str]) -> PatchPredictions:
    """The held-out whole slides of finished runs, pooled: what a context stage for whole slides
    is fitted on (export_model.py --context_slides)."""
    from experiment.predictions import split_predictions  # noqa: PLC0415

    return _concatenate(
        [held_out_slides(split_predictions(workdir, "test")) for workdir in workdirs]
    )


def context_methods(
    test: PatchPredictions, choose_on: PatchPredictions
) -> dict[str, tuple[PatchPredictions, float, str]]:
    """`test` under each method, every choice made on `choose_on`: (P(IDC), threshold, choice)."""
    choice = slide_context.choose_sigma(choose_on)
    stage = slide_context.fit_context_model(choose_on)
    return {
        "patch only": (test, metrics.best_threshold(choose_on.label, choose_on.p_idc), ""),
        "smoothed": (
            test.with_p_idc(slide_context.smooth_on_grid(test, choice.sigma)),
            choice.threshold,
            f"sigma {choice.sigma:g}",
        ),
        "learned second stage": (
            test.with_p_idc(slide_context.context_p_idc(stage, test)),
            stage.threshold,
            "",
        ),
    }


CHOSEN_ON = {
    "validation": "the run's validation patients",
    "other slides": "the other runs' held-out slides",
}


def section(scored: Mapping[str, Scored], folds: Mapping[str, Sequence[str]]) -> list[str]:
    """The study's table of the cross-validation over whole slides (empty without its runs)."""
    networks = {
        network: [scored[name] for name in runs]
        for network, runs in folds.items()
        if all(name in scored for name in runs)
    }
    if not networks:
        return []
    if len(networks) == len(folds) > 1:  # the ensemble of the networks, run by run
        runs_of = list(networks.values())
        networks[" + ".join(networks) + " (mean P(IDC))"] = [
            Scored(
                " + ".join(r.name for r in same_split),
                mean_p_idc([r.validation for r in same_split]),
                mean_p_idc([r.test for r in same_split]),
            )
            for same_split in zip(*runs_of)
        ]
    rows, widths = [], []
    for network, runs in networks.items():
        held_out = [held_out_slides(run.test) for run in runs]
        by_method: dict[tuple[str, str], list] = {}
        for i, (run, test) in enumerate(zip(runs, held_out)):
            choose_on = {
                "validation": run.validation,
                "other slides": _concatenate([t for j, t in enumerate(held_out) if j != i]),
            }
            for chosen_on, table in choose_on.items():
                for method, (part, threshold, choice) in context_methods(test, table).items():
                    by_method.setdefault((method, chosen_on), []).append((part, threshold))
                    if choice:
                        widths.append(f"{network} `{run.name}` on {chosen_on}: {choice}")
        for (method, chosen_on), parts in by_method.items():
            slides = sum(len(np.unique(t.patient)) for t, _ in parts)
            patches = sum(len(t.label) for t, _ in parts)
            rows.append(
                [network, method, chosen_on, f"{slides} ({patches:,})", *pooled_cells(parts)]
            )
    return [
        "## Slide context on whole slides held out of training (cross-validation)",
        "",
        "Each network trained three times: on the split of seed 0 (its test patients hold 5 of "
        "the 27 whole slides) and on two folds that hold out the other 22 slides as their test "
        "patients (`data.test_patients`). The held-out slides of the three runs are pooled, each "
        "predicted by a network that never trained on its patient. Every choice (width, second "
        "stage, thresholds) for a run's slides was made either on that run's validation patients "
        "(mostly scattered patches, few neighbours) or on the other two runs' held-out slides "
        "(whole slides, predicted by networks that never trained on them; none of the slides "
        "judged). The pooled ROC AUC also pays for the offsets between the three runs' P(IDC); "
        "the mean ROC AUC within a slide (slides with both classes) is how well a map ranks its "
        "own tiles. Balanced accuracy and F1 use each run's own threshold; intervals are over the "
        "pooled slides (patients). Widths chosen: " + "; ".join(widths) + ".",
        "",
        markdown_table(("Network", "P(IDC)", "Chosen on", "Slides (patches)", *CV_COLUMNS), rows),
        "",
    ]
