"""Beyond the paper, on finished runs: slide context, ensembles, calibration, a learning curve.

    python study.py --workdir=/tmp/real_245 --output=results/real_245/study.md

reads the runs of one experiment directory (each a training run's workdir, named as `RUNS` lists;
missing ones are skipped and said so) and writes one Markdown report. Every choice (the
smoothing width, thresholds, the ensemble's members) is made on the validation patients; the
test patients only judge, with 95% intervals from the bootstrap over test patients that
summary.json uses (`evaluation.uncertainty`, seed 0: every row is scored on the same resamples).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import numpy as np

from evaluation import metrics
from experiment import learning_curve, slide_context, slide_folds
from experiment.markdown import fmt, markdown_table
from experiment.predictions import PatchPredictions, split_predictions
from experiment.scoring import (
    METRIC_COLUMNS,
    Scored,
    mean_p_idc,
    metric_cells,
    whole_slide_patients,
)
from input_pipeline import KAGGLE_PATCHES
from input_pipeline.windows import WHOLE_SLIDE_NEIGHBOURS
from trainer.rundir import RunDirectory

# Run directory names of an experiment, by role.
PATCH_RUNS = {
    "mobilenet_v1_patient": "MobileNetV1, the paper's recipe",
    "mobilenet_v2_patient": "MobileNetV2, the paper's recipe",
    "mobilenet_v2_patient_seed1": "MobileNetV2, the paper's recipe, seed 1",
    "v2_hed_od_0.05": "MobileNetV2 with HED stain jitter 0.05 (optical density)",
    "v1_class_weights": "MobileNetV1, the paper's recipe with the class-weighted loss",
}
LEARNING_CURVE = ("v1_patients_0.25", "v1_patients_0.5", "mobilenet_v1_patient")
# Mean P(IDC) of finished runs: of the two networks, and of two seeds of one.
ENSEMBLES = (
    ("mobilenet_v1_patient", "mobilenet_v2_patient"),
    ("mobilenet_v2_patient", "mobilenet_v2_patient_seed1"),
)
# The cross-validation over whole slides, per network: runs whose test patients hold whole
# slides the network never trained on. The split of seed 0 holds 5 of the 27 among its test
# patients; the two folds name the other 22 as their test patients (data.test_patients).
SLIDE_FOLDS = {
    "MobileNetV1": ("mobilenet_v1_patient", "v1_slides_a", "v1_slides_b"),
    "MobileNetV2": ("mobilenet_v2_patient", "v2_slides_a", "v2_slides_b"),
}


def prior_corrected(table: PatchPredictions, train_counts: Mapping[str, int]) -> PatchPredictions:
    """P(IDC) with the prior shift of an inverse-frequency class-weighted loss taken out.

    Weighting class c by w_c makes the loss's minimiser p_w(c|x) proportional to w_c p(c|x); with
    "balanced" weights w_c = N / (2 N_c), so the log-odds are shifted by log(N_0 / N_1). Subtracting
    that shift recovers P(IDC) at the training prevalence.
    """
    negatives = train_counts["patches"] - train_counts["positives"]
    shift = np.log(negatives / train_counts["positives"])
    p = np.clip(table.p_idc.astype(np.float64), 1e-7, 1 - 1e-7)
    logit = np.log(p) - np.log1p(-p) - shift
    return table.with_p_idc(1.0 / (1.0 + np.exp(-logit)))


def _load(workdir: pathlib.Path, name: str) -> Scored | None:
    path = workdir / name
    if not (path / "summary.json").is_file():
        return None
    return Scored(
        name,
        split_predictions(path, "validation"),
        split_predictions(path, "test"),
        RunDirectory(path).summary(),
    )


def render(workdir: str | pathlib.Path) -> str:
    workdir = pathlib.Path(workdir)
    names = {*PATCH_RUNS, *LEARNING_CURVE, *(n for runs in SLIDE_FOLDS.values() for n in runs)}
    scored = {name: s for name in names if (s := _load(workdir, name))}
    missing = sorted(names - set(scored))
    parts = ["# Beyond the paper: slide context, ensembles, calibration, learning curve", ""]
    if missing:
        parts += [f"Runs not found (skipped): {', '.join(f'`{m}`' for m in missing)}.", ""]

    methods: list[Scored] = [scored[n] for n in PATCH_RUNS if n in scored]
    if "v1_class_weights" in scored:
        weighted = scored["v1_class_weights"]
        counts = weighted.summary["data_info"]["counts"]["train"]
        methods.append(
            Scored(
                "v1_class_weights, prior shift of the class weights removed",
                prior_corrected(weighted.validation, counts),
                prior_corrected(weighted.test, counts),
            )
        )
    for members in ENSEMBLES:
        if all(n in scored for n in members):
            runs = [scored[n] for n in members]
            methods.append(
                Scored(
                    " + ".join(members) + " (mean P(IDC))",
                    mean_p_idc([r.validation for r in runs]),
                    mean_p_idc([r.test for r in runs]),
                )
            )

    rows = [
        [
            f"`{m.name}`",
            fmt(metrics.roc_auc(m.validation.label, m.validation.p_idc)),
            fmt(m.threshold),
            *metric_cells(m.test, m.threshold),
        ]
        for m in methods
    ]
    parts += [
        "## Patch only (test patients, patient split)",
        "",
        "Thresholds are chosen on the validation patients (maximum balanced accuracy); the "
        "validation ROC AUC is what a choice between the methods may use.",
        "",
        markdown_table(("Method", "Val. ROC AUC", "Val. threshold", *METRIC_COLUMNS), rows),
        "",
    ]
    parts += _context_section(methods)
    parts += slide_folds.section(scored, SLIDE_FOLDS)
    parts += _learning_curve_section(scored)
    return "\n".join(parts) + "\n"


def _context_section(methods: list[Scored]) -> list[str]:
    if not methods:
        return []
    rows, widths = [], []
    slides = whole_slide_patients(methods[0].test)
    for method in methods:
        choice = slide_context.choose_sigma(method.validation)
        widths.append(f"`{method.name}`: sigma {choice.sigma:g}")
        smoothed = method.test.with_p_idc(slide_context.smooth_on_grid(method.test, choice.sigma))
        learned = slide_context.fit_context_model(method.validation)
        learned_threshold = learned.threshold
        on_slides = np.isin(method.test.patient, slides)
        for label, table, threshold in (
            ("patch only", method.test, method.threshold),
            (f"smoothed, sigma {choice.sigma:g}", smoothed, choice.threshold),
            (
                "learned second stage",
                method.test.with_p_idc(slide_context.context_p_idc(learned, method.test)),
                learned_threshold,
            ),
        ):
            rows.append([f"`{method.name}`", label, "all", *metric_cells(table, threshold)])
            if on_slides.any() and not on_slides.all():
                part = table.select(np.flatnonzero(on_slides))
                rows.append(
                    [f"`{method.name}`", label, "whole slides", *metric_cells(part, threshold)]
                )
    return [
        "## Slide context: P(IDC) smoothed over the slide's grid",
        "",
        "Normalised Gaussian smoothing of P(IDC) over each patch's grid neighbours "
        "(`experiment/slide_context.py`); the width and the threshold are chosen on the "
        "validation patients, among sigma = "
        + ", ".join(f"{s:g}" for s in slide_context.SIGMAS)
        + " patches. Chosen: "
        + "; ".join(widths)
        + ". The learned second stage is a logistic regression over the patch's logit, its "
        "smoothed logits at sigma "
        + ", ".join(f"{s:g}" for s in slide_context.CONTEXT_SIGMAS)
        + " and the fraction of its grid neighbours present, fitted on the validation "
        "patients' P(IDC) (patients the patch network never trained on; the training "
        "patients' P(IDC) are in-sample and too confident to teach it)"
        + f". 'whole slides': the {len(slides)} test patients whose patches have on average at "
        f"least {WHOLE_SLIDE_NEIGHBOURS:.0%} of their 4 grid neighbours present.",
        "",
        markdown_table(("Method", "P(IDC)", "Test patients", *METRIC_COLUMNS), rows),
        "",
    ]


def _learning_curve_section(scored: Mapping[str, Scored]) -> list[str]:
    names = [n for n in LEARNING_CURVE if n in scored]
    if len(names) < 3:
        return []
    counts = [scored[n].summary["data_info"]["counts"]["train"] for n in names]
    patches = [c["patches"] for c in counts]
    test_sets = [
        (scored[n].test.label, scored[n].test.p_idc, scored[n].test.patient) for n in names
    ]
    # The full set split the same way: its patch count times the share this run trained on.
    everything = scored[names[-1]].summary["data_info"]["counts"]
    total = sum(part["patches"] for part in everything.values())
    factor = KAGGLE_PATCHES / total
    target = patches[-1] * factor
    curve = learning_curve.extrapolate(patches, test_sets, target)
    rows = [
        [
            f"`{name}`",
            str(c["patients"]),
            f"{c['patches']:,}",
            *metric_cells(scored[name].test, scored[name].threshold)[:3],
        ]
        for name, c in zip(names, counts)
    ]
    law = curve["fit"]
    by_size = np.argsort(patches)
    growing = bool(np.all(np.diff(np.asarray(curve["roc_auc"])[by_size]) > 0))
    if growing and law["exponent"] > 0:
        verdict = (
            f"Fitted power law: 1 - ROC AUC = {law['scale']:.3g} x patches^-{law['exponent']:.3f}. "
            f"At {target:,.0f} training patches ({factor:.1f}x these, the full Kaggle "
            f"set's share) it predicts test ROC AUC {curve['predicted_roc_auc']:.3f} "
            f"[95% interval over test patients {curve['low']:.3f}, {curve['high']:.3f}]. The "
            "interval covers the test patients' sampling only: three points cannot show whether "
            "the curve bends, and the full set's extra patches come mostly from the same "
            "patients (whole slides instead of scattered patches), which are worth less than "
            "new patients."
        )
    else:
        verdict = (
            "Test ROC AUC does not grow with the training patches here (a quarter of the "
            "patients can hold more patches than a half when it draws more whole slides), and "
            "the differences lie "
            "within the intervals: no power law describes these points, and no extrapolation to "
            f"the full set ({factor:.1f}x the patches) is made from them."
        )
    nesting = (
        "The shares are not nested: each run's patients are drawn on their own "
        "(`input_pipeline.splits.fewer_training_patients`), so a smaller share is not part of "
        "a larger one, and the points differ in which patients they trained on as well as "
        "in how many."
    )
    return [
        "## Learning curve (the same test patients)",
        "",
        markdown_table(("Run", "Training patients", "Training patches", *METRIC_COLUMNS[:3]), rows),
        "",
        nesting + " " + verdict,
        "",
    ]
