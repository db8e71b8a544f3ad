"""The frozen test (results/frozen_test/PROTOCOL.md): every candidate's outputs, every choice on
the validation patients, the test scored once.

    outputs = candidate_outputs(results_dir)        # per run: patch only and smoothed, calibrated
    shipped = choose(outputs)                       # the highest validation ROC AUC with context
    text = render(results_dir)                      # report.md, reliability.png

A candidate is a finished run of the stratified split (`CANDIDATES`). Each gives two outputs:
its patch-level P(IDC), and the same smoothed over the slide grid at the width of highest
validation ROC AUC (`slide_context.choose_sigma`). Each output is calibrated on the validation
patients (`calibrating.calibrate_scores`: temperature or isotonic by held-out Brier score) and
its threshold is the calibrated scale's of maximum validation balanced accuracy. The test
patients only judge: per-output intervals from the bootstrap over them, paired intervals for
the differences (`paired.paired_differences`, thresholds re-chosen inside each resample on a
resample of the validation patients), whole slides and scattered patients apart, and how the
called IDC area of each test slide agrees with the labelled area (`slide_agreement`).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from evaluation import metrics
from experiment import calibrating, paired, slide_agreement, slide_context, split_studies
from experiment.figures import plot_reliability_diagram
from experiment.markdown import fmt, fmt_interval, fmt_signed, markdown_table
from experiment.predictions import PatchPredictions, split_predictions
from experiment.scoring import scored_intervals, whole_slide_patients
from experiment.slide_folds import per_slide_roc_auc
from idc_inference.calibration import Calibration

CANDIDATES = {
    "v1_patch": "MobileNetV1, patch (50 px -> 96)",
    "v1_window3": "MobileNetV1, 3x3 window (150 px)",
    "v2_patch": "MobileNetV2, patch (50 px -> 96)",
    "v2_window3": "MobileNetV2, 3x3 window (150 px)",
}
NUM_RESAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class Output:
    """One output of one candidate, calibrated on validation, with what was chosen there."""

    run: str
    context: bool
    sigma: float  # 0 without context
    calibration: Calibration
    threshold: float  # calibrated scale, maximum validation balanced accuracy
    validation: PatchPredictions  # calibrated P(IDC)
    test: PatchPredictions  # calibrated P(IDC)
    test_uncalibrated: PatchPredictions

    @property
    def name(self) -> str:
        context = f", smoothed (sigma {self.sigma:g})" if self.context else ", patch only"
        return CANDIDATES.get(self.run, self.run) + context

    @property
    def validation_roc_auc(self) -> float:
        return metrics.roc_auc(self.validation.label, self.validation.p_idc)


def outputs_of(run: str, validation: PatchPredictions, test: PatchPredictions) -> list[Output]:
    """The run's patch-level and smoothed outputs, each calibrated on `validation`."""
    choice = slide_context.choose_sigma(validation)
    outputs = []
    for context, sigma in ((False, 0.0), (True, choice.sigma)):
        if context:
            val = validation.with_p_idc(slide_context.smooth_on_grid(validation, sigma))
            tst = test.with_p_idc(slide_context.smooth_on_grid(test, sigma))
        else:
            val, tst = validation, test
        fitted, threshold = calibrating.calibrate_scores(val.p_idc, val, "validation patients")
        outputs.append(
            Output(
                run,
                context,
                sigma,
                fitted,
                threshold,
                val.with_p_idc(fitted.apply(val.p_idc)),
                tst.with_p_idc(fitted.apply(tst.p_idc)),
                tst,
            )
        )
    return outputs


def candidate_outputs(directory: str | pathlib.Path) -> list[Output]:
    """Every finished candidate's outputs, in `CANDIDATES`' order."""
    directory = pathlib.Path(directory)
    outputs = []
    for run in CANDIDATES:
        if (directory / run / "summary.json").is_file():
            validation = split_predictions(directory / run, "validation")
            outputs += outputs_of(run, validation, split_predictions(directory / run, "test"))
    return outputs


def choose(outputs: list[Output]) -> Output:
    """The protocol's choice: the context output of highest validation ROC AUC."""
    return max((o for o in outputs if o.context), key=lambda o: o.validation_roc_auc)


def _method(output: Output) -> paired.Method:
    return paired.Method.of(output.name, output.test, selection=output.validation)


def _rows_by_group(output: Output) -> list[list[str]]:
    slides = whole_slide_patients(output.test)
    rows = []
    for group, keep in (
        ("whole slides", np.isin(output.test.patient, slides)),
        ("scattered patients", ~np.isin(output.test.patient, slides)),
    ):
        if not keep.any():
            continue
        part = output.test.select(np.flatnonzero(keep))
        at_half, tuned = scored_intervals(part, output.threshold)
        rows.append(
            [
                output.name,
                f"{group}: {len(np.unique(part.patient))} ({len(part.label):,} patches, "
                f"{part.label.mean():.0%} IDC)",
                fmt_interval(at_half["roc_auc"]),
                fmt_interval(tuned["balanced_accuracy"]),
                fmt_interval(tuned["f1"]),
                fmt(metrics.expected_calibration_error(part.label, part.p_idc)),
            ]
        )
    return rows


def _paired_rows(pairs: list[tuple[Output, Output]]) -> list[list[str]]:
    rows = []
    for a, b in pairs:
        report = paired.paired_differences(
            _method(a), _method(b), num_resamples=NUM_RESAMPLES, seed=0
        )
        cells = []
        for name in ("roc_auc", "balanced_accuracy", "f1", "ece", "patient_roc_auc"):
            entry = report[name]
            cells.append(
                f"{fmt_signed(entry['difference'])} [{fmt_signed(entry['low'])}, "
                f"{fmt_signed(entry['high'])}]"
            )
        rows.append([b.name, a.name, *cells])
    return rows


def _comparisons(outputs: list[Output]) -> list[tuple[Output, Output]]:
    """(A, B) pairs whose gain B - A the report tests: context over patch, window over patch,
    V2 over V1 (same input and output)."""
    by_key = {(o.run, o.context): o for o in outputs}
    pairs = []
    for run in CANDIDATES:
        if (run, False) in by_key:
            pairs.append((by_key[run, False], by_key[run, True]))
    for network in ("v1", "v2"):
        for context in (False, True):
            a, b = (by_key.get((f"{network}_{i}", context)) for i in ("patch", "window3"))
            if a and b:
                pairs.append((a, b))
    for run_input in ("patch", "window3"):
        for context in (False, True):
            a, b = (by_key.get((f"{n}_{run_input}", context)) for n in ("v1", "v2"))
            if a and b:
                pairs.append((a, b))
    return pairs


def _agreement_rows(outputs: list[Output]) -> list[list[str]]:
    """The test slides' called against labelled IDC area, at the output's threshold."""
    rows = []
    for output in outputs:
        slides = output.test.select(
            np.flatnonzero(np.isin(output.test.patient, whole_slide_patients(output.test)))
        )
        areas = slide_agreement.slide_areas(slides, slides.p_idc >= output.threshold)
        stats = slide_agreement.agreement(areas, num_resamples=NUM_RESAMPLES)
        rows.append(
            [
                output.name,
                str(len(areas.patient)),
                fmt_interval(stats["bias_fraction"]),
                fmt_interval(stats["mae_fraction"]),
                fmt_interval(stats["mae_mm2"], 2),
            ]
        )
    return rows


def _operating_point_rows(output: Output) -> list[list[str]]:
    """The output at each operating point, its threshold chosen on the validation patients
    (area agreement: on the validation whole slides, the only ones with an area to agree on)."""
    val = output.validation
    val_slides = val.select(np.flatnonzero(np.isin(val.patient, whole_slide_patients(val))))
    rules = {
        "balanced accuracy (the model's)": output.threshold,
        "area agreement (validation slides)": slide_agreement.agreement_threshold(val_slides),
        "sensitivity 0.95": slide_agreement.threshold_at_sensitivity(val.label, val.p_idc, 0.95),
    }
    test = output.test
    slides = test.select(np.flatnonzero(np.isin(test.patient, whole_slide_patients(test))))
    rows = []
    for rule, threshold in rules.items():
        point = slide_agreement.operating_point(test, test.p_idc >= threshold)
        areas = slide_agreement.slide_areas(slides, slides.p_idc >= threshold)
        stats = slide_agreement.agreement(areas, num_resamples=NUM_RESAMPLES)
        rows.append(
            [
                output.name,
                rule,
                fmt(threshold),
                fmt_interval(point["sensitivity"]),
                fmt_interval(point["specificity"]),
                fmt_interval(stats["bias_fraction"]),
                fmt_interval(stats["mae_mm2"], 2),
            ]
        )
    return rows


def render(directory: str | pathlib.Path) -> str:
    """report.md of the frozen test (and reliability.png beside it)."""
    directory = pathlib.Path(directory)
    outputs = candidate_outputs(directory)
    missing = [run for run in CANDIDATES if not (directory / run / "summary.json").is_file()]
    parts = [
        "# The frozen test: neighbourhood input, slide context and calibration",
        "",
        "Protocol: [PROTOCOL.md](PROTOCOL.md) (the split, the candidates and every choice rule, "
        "committed before the candidates were compared). Data: the 245-patient data, stratified "
        "split of seed 0; every choice on its 49 validation patients; the 49 test patients "
        "(6,478 patches, 5 whole slides) judge once. Intervals: 95%, from "
        f"{NUM_RESAMPLES:,} bootstrap resamples of the test patients. "
        "`python study.py --frozen_test=results/frozen_test` re-renders this file from the "
        "runs' committed predictions.",
        "",
    ]
    if missing:
        parts += [f"Runs not found (skipped): {', '.join(f'`{m}`' for m in missing)}.", ""]
    if not outputs:
        return "\n".join(parts) + "\n"
    shipped = choose(outputs)
    parts += [
        "## The choice (validation patients)",
        "",
        markdown_table(
            ("Output", "Val. ROC AUC", "Width", "Calibration", "Threshold (calibrated)"),
            [
                [
                    ("**" + o.name + "** (chosen)") if o is shipped else o.name,
                    fmt(o.validation_roc_auc),
                    f"{o.sigma:g}" if o.context else "",
                    o.calibration.kind,
                    fmt(o.threshold),
                ]
                for o in outputs
            ],
        ),
        "",
        "## The test (once)",
        "",
        "Balanced accuracy and F1 at the validation threshold; ECE of the P(IDC) as it comes out "
        "of the network or the smoothing, then calibrated; the ROC AUC within a slide is the "
        "mean over the 5 test whole slides.",
        "",
    ]
    rows = []
    for o in outputs:
        at_half, tuned = scored_intervals(o.test, o.threshold)
        slides = o.test.select(
            np.flatnonzero(np.isin(o.test.patient, whole_slide_patients(o.test)))
        )
        within = per_slide_roc_auc(slides)
        raw_ece = metrics.expected_calibration_error(o.test.label, o.test_uncalibrated.p_idc)
        ece = metrics.expected_calibration_error(o.test.label, o.test.p_idc)
        rows.append(
            [
                o.name,
                fmt_interval(at_half["roc_auc"]),
                fmt_interval(within),
                fmt_interval(tuned["balanced_accuracy"]),
                fmt_interval(tuned["f1"]),
                f"{fmt(raw_ece)} -> {fmt(ece)}",
            ]
        )
    parts += [
        markdown_table(
            (
                "Output",
                "ROC AUC [95% CI]",
                "ROC AUC within a slide",
                "Bal. acc. [95% CI]",
                "F1 [95% CI]",
                "ECE raw -> calibrated",
            ),
            rows,
        ),
        "",
        "### Whole slides and scattered patients apart",
        "",
        markdown_table(
            ("Output", "Test patients", "ROC AUC", "Bal. acc.", "F1", "ECE"),
            [row for o in outputs for row in _rows_by_group(o)],
        ),
        "",
        "### Paired differences (B - A, the same resamples of test patients)",
        "",
        "Thresholds re-chosen inside every resample on a resample of the validation patients; "
        "'per patient' is the mean ROC AUC within test patients that hold both classes. ECE: "
        "lower is better.",
        "",
        markdown_table(
            ("B", "A", "ROC AUC", "Bal. acc.", "F1", "ECE", "ROC AUC per patient"),
            _paired_rows(_comparisons(outputs)),
        ),
        "",
        "### Called against labelled IDC area on the 5 test slides",
        "",
        "Per slide, the share of its patches called IDC minus the labelled share (bias, mean "
        "absolute error) and the absolute area error (mm2, a patch 0.04 mm2); intervals over "
        "the slides (5: wide).",
        "",
        markdown_table(
            ("Output", "Slides", "Bias of the IDC share", "MAE of the share", "MAE (mm2)"),
            _agreement_rows(outputs),
        ),
        "",
    ]
    parts += [
        "### Operating points of the chosen output",
        "",
        "Each threshold chosen on validation: maximum balanced accuracy (what the model ships), "
        "the smallest mean absolute area error on the 5 validation whole slides, and 0.95 "
        "sensitivity over the validation patches; sensitivity and specificity over the test "
        "patches, area bias and error over the 5 test slides.",
        "",
        markdown_table(
            (
                "Output",
                "Threshold rule",
                "Threshold",
                "Sensitivity",
                "Specificity",
                "Bias of the IDC share",
                "MAE (mm2)",
            ),
            _operating_point_rows(shipped),
        ),
        "",
    ]
    plot_reliability_diagram(
        directory / "reliability.png",
        [
            (
                f"{shipped.name}, raw",
                metrics.calibration_report(shipped.test.label, shipped.test_uncalibrated.p_idc),
            ),
            (
                f"{shipped.name}, calibrated",
                metrics.calibration_report(shipped.test.label, shipped.test.p_idc),
            ),
        ],
        title="Reliability on the frozen test (the chosen output)",
    )
    parts += ["![reliability](reliability.png)", ""]
    parts += split_studies.render(directory)
    return "\n".join(parts) + "\n"
