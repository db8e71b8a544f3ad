"""The evaluation of issue 32 on finished runs: paired differences and slide-level agreement.

    markdown, figures = render({"MobileNetV1": [dir_seed0, dir_fold_a, dir_fold_b], ...},
                               {"MobileNetV1": dir_seed0, "MobileNetV2": ...}, "bland_altman.png")

(`python study.py --cv=... --patient_split=... --output=...` writes them.) Two kinds of runs:

- a cross-validation over whole slides, per network: runs whose held-out whole slides are
  disjoint (`slide_folds`); each slide is judged as the run that held it out predicts it, every
  choice for it made on the other runs' held-out slides (as the shipped context stage was) or on
  the run's validation patients. Paired differences (context against patch only, each network
  against the first, on the same slides), called against labelled IDC area per slide, lesion
  sensitivity by size and operating points;
- runs of one patient split (the same test patients, thresholds on their validation patients):
  paired differences, on all test patients and apart on the whole slides and the scattered
  patients among them.

Intervals: percentile bootstrap over patients (slides), 2,000 resamples, seed 0; in the paired
differences each threshold is re-chosen inside each resample (`experiment.paired`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from experiment import figures, lesions, paired, slide_agreement, slide_context
from experiment import held_out_tables as tables
from experiment.held_out_tables import AREA_RULES
from experiment.markdown import markdown_table
from experiment.predictions import split_predictions
from experiment.scoring import whole_slide_patients

INTRODUCTION = (
    "Written by `study.py --cv=... --patient_split=...` (`experiment/held_out.py`) from the runs' "
    "committed predictions (`predictions_{validation,test}.npz`). Intervals: percentile "
    "bootstrap over patients (slides), 2,000 resamples, seed 0. In a paired difference both "
    "methods are scored on the same resamples, and each threshold is re-chosen inside every "
    "resample on a resample of the data it is chosen on (`experiment/paired.py`); 'resamples "
    "with B - A <= 0' is the one-sided bootstrap p-value of 'B is higher' (for ECE lower is "
    "better). Pooled metrics weigh patients by their patches; the per-patient means weigh "
    "each patient once (where the metric is defined for it).",
)
SHORT_METRICS = ("roc_auc", "patient_roc_auc", "balanced_accuracy", "patient_balanced_accuracy")
# The first columns of every slide-level table: which P(IDC) under which thresholds.
LEVEL_COLUMNS = ("Network", "P(IDC)", "Threshold, chosen on", "Thresholds")
METHODS = ("patch only", "context")


def _runs(directories: Sequence[str]):
    return [
        (pathlib.Path(d).name, split_predictions(d, "validation"), split_predictions(d, "test"))
        for d in directories
    ]


def _fold_methods(folds: Sequence[slide_agreement.Fold]) -> dict:
    """The folds patch only and with context (the smoothing stage, chosen on each selection)."""
    return {"patch only": list(folds), "context": [slide_agreement.with_context(f) for f in folds]}


def _as_method(name: str, folds: Sequence[slide_agreement.Fold]) -> paired.Method:
    return paired.Method(name, tuple(paired.Part(f.test, selection=f.selection) for f in folds))


def cross_validation_paired(networks: Mapping[str, Mapping[str, list]]) -> list[dict]:
    """Context against patch only per network; every network against the first, each way."""
    results = []
    for network, methods in networks.items():
        a, b = (_as_method(f"{network}, {m}", methods[m]) for m in METHODS)
        results.append(paired.paired_differences(a, b))
    first, *others = networks
    for network in others:
        for method in METHODS:
            a = _as_method(f"{first}, {method}", networks[first][method])
            b = _as_method(f"{network}, {method}", networks[network][method])
            results.append(paired.paired_differences(a, b))
    return results


def slide_level(folds: Sequence[slide_agreement.Fold], rule: str) -> dict:
    """Areas, agreement, operating point and lesions of the folds' slides under `rule`."""
    pooled, calls, thresholds = slide_agreement.pooled_calls(folds, rule)
    areas = slide_agreement.slide_areas(pooled, calls)
    found = lesions.labelled_lesions(pooled, calls)
    false = lesions.false_positive_regions(pooled, calls)
    return {
        "thresholds": thresholds,
        "choices": [f.choice for f in folds if f.choice],
        "areas": areas,
        "agreement": slide_agreement.agreement(areas),
        "operating_point": slide_agreement.operating_point(pooled, calls),
        "lesions": lesions.sensitivity_by_size(found, areas.patient),
        "false_positive_regions": false,
    }


def cross_validation_levels(cv: Mapping[str, Sequence[str]]):
    """The folds of each network's cross-validation, by method, and their slide-level results
    under every (choice data, threshold rule) reported."""
    networks, levels = {}, {}
    for network, directories in cv.items():
        runs = _runs(directories)
        for chosen_on in ("other slides", "validation"):
            methods = _fold_methods(slide_agreement.cross_validation(runs, chosen_on))
            if chosen_on == "other slides":
                networks[network] = methods
            rules = (
                slide_agreement.THRESHOLD_RULES
                if chosen_on == "other slides"
                else ("balanced accuracy", "sensitivity 0.95")
            )
            for method, folds in methods.items():
                for rule in rules:
                    levels[(network, method, chosen_on, rule)] = slide_level(folds, rule)
    return networks, levels


def cross_validation_section(cv: Mapping[str, Sequence[str]], figure: pathlib.Path):
    networks, levels = cross_validation_levels(cv)
    comparisons = cross_validation_paired(networks)
    some = next(iter(levels.values()))["areas"]
    pooled = [f.test for f in next(iter(networks.values()))["patch only"]]
    slides, patches = len(some.patient), sum(len(t.label) for t in pooled)
    idc_free = int(np.sum(some.labelled == 0))
    figures.plot_bland_altman(
        figure,
        {
            (n, m, r): levels[(n, m, "other slides", r)]["areas"]
            for n in networks
            for m in METHODS
            for r in AREA_RULES
        },
    )
    parts = [
        f"## Whole slides held out of training: {slides} slides ({patches:,} patches)",
        "",
        "Each slide is judged as the run that held it out predicts it (runs: "
        + "; ".join(
            f"{n}: " + ", ".join(f"`{pathlib.Path(d).name}`" for d in ds) for n, ds in cv.items()
        )
        + "). 'on other slides': every choice for a run's slides (the smoothing width of the "
        "context stage, thresholds) is made on the other runs' held-out slides, as for the shipped "
        "stage; 'on validation': on the run's validation patients. Context: the shipped kind of "
        "stage, P(IDC) smoothed over the slide's grid (`ContextStage.smoothing`), its width and "
        "threshold chosen on the same data.",
        "",
        "### Paired differences (choices on other slides, thresholds re-chosen in each resample)",
        "",
    ]
    for result in comparisons:
        parts += [
            f"**{result['b']}** against **{result['a']}**:",
            "",
            tables.paired_table(result),
            "",
        ]
    parts += [
        "### Called against labelled IDC area, slide by slide",
        "",
        "Area: patches called (or labelled) IDC x 0.04 mm2 (a patch is 200 x 200 um). Bias: the "
        "mean over slides of called - labelled; limits of agreement: bias +- 1.96 SD; MAE: mean "
        "absolute error; the fraction is of the slide's patches. Thresholds, one per run: "
        "'balanced accuracy' maximises it, 'area agreement' minimises the mean absolute area "
        "error, 'sensitivity 0.95' is the highest that calls 95% of the IDC patches, each on the "
        "data named (never the slide judged). Over / under: slides whose called area is above / "
        f"below the labelled. {idc_free} of the {slides} slides are free of IDC: slide-level "
        "specificity (an IDC-free slide called free) is not measured here.",
        "",
        markdown_table(
            (
                *LEVEL_COLUMNS,
                "Bias, mm2 [95% CI]",
                "Limits of agreement, mm2",
                "MAE, mm2 [95% CI]",
                "Bias, fraction [95% CI]",
                "MAE, fraction [95% CI]",
                "Over / under",
            ),
            tables.agreement_rows(levels),
        ),
        "",
        f"![Bland-Altman plots]({figure.name})",
        "",
        "IDC fraction of each slide's patches, labelled and called (thresholds on other slides):",
        "",
    ]
    header, *rows = tables.per_slide_rows(levels, list(networks))
    parts += [markdown_table(header, rows), ""]
    bins = [
        f"{lo} patch" if lo == hi else (f">= {lo}" if hi == np.inf else f"{lo}-{hi}")
        for lo, hi in lesions.SIZE_BINS
    ]
    parts += [
        "### Lesions found, by size",
        "",
        "A lesion: a 4-connected group of labelled IDC patches on the slide's grid (patches "
        "sharing an edge, as the map's regions are drawn); found when at least one of its "
        "patches is called. Cells: found / lesions (sensitivity [95% CI over slides]). False "
        "regions: 4-connected groups of called patches without a labelled IDC patch, mean per "
        "slide (total).",
        "",
        markdown_table(
            (
                *LEVEL_COLUMNS[:3],
                *(f"Lesions of {b}" for b in bins),
                "False regions per slide",
            ),
            tables.lesion_rows(levels),
        ),
        "",
        "### Operating points",
        "",
        "Sensitivity and specificity of the pooled patches of the held-out slides at each run's "
        "threshold (95% CI over slides, the thresholds fixed).",
        "",
        markdown_table(
            (*LEVEL_COLUMNS, "Sensitivity", "Specificity"),
            tables.operating_rows(levels),
        ),
        "",
    ]
    return parts, {"levels": levels, "paired": comparisons}


def _smoothed(table, sigma: float):
    return table.with_p_idc(slide_context.smooth_on_grid(table, sigma))


def patient_split_section(runs: Mapping[str, str]):
    """Paired differences on one patient split's test patients: all, whole slides, scattered."""
    methods = {}
    for network, directory in runs.items():
        ((_, validation, test),) = _runs([directory])
        choice = slide_context.choose_sigma(validation)
        methods[network] = {
            "patch only": paired.Method.of(f"{network}, patch only", test, selection=validation),
            "context": paired.Method.of(
                f"{network}, smoothed (sigma {choice.sigma:g})",
                _smoothed(test, choice.sigma),
                selection=_smoothed(validation, choice.sigma),
            ),
        }
    first, *others = methods
    pairs = [(methods[n]["patch only"], methods[n]["context"]) for n in methods]
    pairs += [(methods[first][m], methods[n][m]) for n in others for m in METHODS]
    test = methods[first]["patch only"].pooled()
    slides = whole_slide_patients(test)
    scattered = np.setdiff1d(np.unique(test.patient), slides)
    subsets = {
        "all test patients": np.unique(test.patient),
        "whole slides": slides,
        "scattered patients": scattered,
    }
    parts = [
        "## One patient split's test patients: paired differences",
        "",
        f"Runs: {', '.join(f'{n} `{pathlib.Path(d).name}`' for n, d in runs.items())}. Thresholds "
        "(and the smoothing width, fixed before the bootstrap) chosen on the validation patients, "
        "re-chosen on a resample of them in each resample; the validation patients are resampled "
        f"independently of the test patients. Whole slides: {len(slides)} of the "
        f"{len(subsets['all test patients'])} test patients (`scoring.whole_slide_patients`); "
        "scattered: the others.",
        "",
    ]
    results = []
    for a, b in pairs:
        rows = []
        for subset, patients in subsets.items():
            if not len(patients):
                continue
            result = paired.paired_differences(a.restricted(patients), b.restricted(patients))
            results.append({"subset": subset, **result})
            label = f"{subset} ({len(patients)})"
            rows += tables.paired_rows(result, (*SHORT_METRICS, "ece"), label)
        header = (
            "Test patients",
            "Metric",
            a.name,
            b.name,
            "B - A [95% CI]",
            "resamples with B - A <= 0",
        )
        parts += [f"**{b.name}** against **{a.name}**:", "", markdown_table(header, rows), ""]
    return parts, results


def render(
    cv: Mapping[str, Sequence[str]], patient_split: Mapping[str, str], figure
) -> tuple[str, dict]:
    """The report (Markdown) and its figures as data; writes the Bland-Altman figure."""
    parts = ["# Paired differences and slide-level agreement", "", *INTRODUCTION, ""]
    data = {}
    if cv:
        section, data["cross_validation"] = cross_validation_section(cv, pathlib.Path(figure))
        parts += section
    if patient_split:
        section, data["patient_split"] = patient_split_section(patient_split)
        parts += section
    return "\n".join(parts) + "\n", data
