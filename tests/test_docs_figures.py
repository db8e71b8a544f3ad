"""The figures README.md, MODEL_CARD.md and results/real_245/README.md cite, recomputed from the
committed files they cite (summary.json, predictions_*.npz, slide_agreement.json, the frozen
test's report and the predictions it is rendered from, the shipped record, the data list): a doc
that drifts from its source fails here."""

import gzip
import json
import pathlib
import re
import shutil

import numpy as np
import pytest

from experiment import frozen_test
from experiment.predictions import PatchPredictions
from experiment.scoring import whole_slide_patients
from idc_inference.calibration import Calibration

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "real_245"
SHIPPED_RUN = RESULTS / "mobilenet_v1_patient"  # the model shipped before the frozen test
FROZEN = REPO / "results" / "frozen_test"


def text(name: str) -> str:
    """A document with its line breaks (and the indentation of list items) folded to spaces."""
    return re.sub(r"\s*\n\s*", " ", (REPO / name).read_text())


def predictions(run: pathlib.Path, split: str) -> PatchPredictions:
    with np.load(run / f"predictions_{split}.npz") as arrays:
        return PatchPredictions(**{k: arrays[k] for k in arrays.files})


@pytest.fixture(scope="module")
def agreement():
    return json.loads((RESULTS / "slide_agreement.json").read_text())


def signed(entry: dict, digits: int = 3, key: str = "difference") -> str:
    form = f"+.{digits}f"
    return f"{entry[key]:{form}} [{entry['low']:{form}}, {entry['high']:{form}}]"


def comparison(agreement, a: str, b: str, part="cross_validation", subset=None) -> dict:
    found = agreement[part] if part == "patient_split" else agreement[part]["paired"]
    return next(
        c for c in found if c["a"] == a and c["b"] == b and subset in (None, c.get("subset"))
    )


# ----------------------------------------------------------------- the frozen test and the card


def report_rows(report: str, section: str, keep: str = "first"):
    """The rows of the first table under `section` of report.md: first cell -> the other cells
    (of the first row with that first cell), or with keep="all" every (first cell, others)."""
    rows = []
    started = False
    for line in report[report.index(section) :].splitlines()[1:]:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= {"-"}:
                rows.append((cells[0].replace("** (chosen)", "").strip("*"), cells[1:]))
        elif started:
            break
    if keep == "all":
        return rows[1:]  # without the header
    first = {}
    for name, cells in rows[1:]:
        first.setdefault(name, cells)
    return first


@pytest.fixture(scope="module")
def frozen():
    outputs = frozen_test.candidate_outputs(FROZEN)
    shipped = frozen_test.choose(outputs)
    patch = next(o for o in outputs if o.run == shipped.run and not o.context)
    return outputs, shipped, patch


def test_the_frozen_test_report_is_what_the_committed_predictions_give(tmp_path):
    copy = tmp_path / "frozen_test"
    shutil.copytree(FROZEN, copy)
    assert frozen_test.render(copy) == (FROZEN / "report.md").read_text()


def test_the_shipped_model_is_the_protocols_choice(frozen):
    _, shipped, patch = frozen
    record = json.loads((REPO / "idc_inference/shipped/mobilenet_v1_idc.json").read_text())
    assert record["source_run"] == shipped.run
    run_summary = json.loads((FROZEN / shipped.run / "summary.json").read_text())
    assert record["summary"]["test"]["roc_auc"] == run_summary["test"]["roc_auc"]
    assert record["threshold"]["value"] == pytest.approx(patch.threshold, abs=1e-12)
    stage = record["context_stage"]
    assert stage["sigmas"] == [shipped.sigma]
    assert stage["threshold"] == pytest.approx(shipped.threshold, abs=1e-12)
    for calibration, output in ((record["calibration"], patch), (stage["calibration"], shipped)):
        assert calibration["kind"] == output.calibration.kind
        restored = Calibration.from_record(calibration)
        probe = np.linspace(0.01, 0.99, 7)
        np.testing.assert_allclose(restored.apply(probe), output.calibration.apply(probe))


def test_the_model_cards_test_figures_are_the_reports(frozen):
    _, shipped, patch = frozen
    report = (FROZEN / "report.md").read_text()
    card, readme = text("MODEL_CARD.md"), text("README.md")
    tests = report_rows(report, "## The test (once)")
    for output in (patch, shipped):
        cells = " | ".join(tests[output.name])
        assert cells in card, cells
    apart = report_rows(report, "### Whole slides and scattered patients apart", keep="all")
    for output, label in ((patch, "patch only"), (shipped, "with slide context")):
        for group, words in (("whole slides: 5", "5 whole slides"), ("scattered", "44 scattered")):
            (cells,) = [c for name, c in apart if name == output.name and c[0].startswith(group)]
            assert f"| {label} | {words}" in card
            assert " | ".join(cells[1:4]) in card, cells
    choice = report_rows(report, "## The choice (validation patients)")
    assert f"this one, {choice[shipped.name][0]} against" in card
    v1_window = next(o for o in frozen[0] if o.run == "v1_window3" and o.context)
    assert f"{choice[v1_window.name][0]} for MobileNetV1 on 3x3 neighbourhoods" in card
    paired_rows = {
        (b, cells[0]): cells[1:]
        for b, cells in report_rows(report, "### Paired differences", keep="all")
    }
    smoothed_vs_patch = paired_rows[(shipped.name, patch.name)]
    assert f"ROC AUC {smoothed_vs_patch[0]}, balanced accuracy {smoothed_vs_patch[1]}" in card
    window_vs_this = paired_rows[(v1_window.name, shipped.name)]
    assert f"{window_vs_this[0]} ROC AUC, {window_vs_this[3]} ECE" in card
    assert f"ROC AUC {window_vs_this[0]} and ECE {window_vs_this[3]}" in readme
    points = report_rows(report, "### Operating points of the chosen output", keep="all")
    assert [name for name, _ in points] == [shipped.name] * 3
    for _, cells in points:
        assert " | ".join(cells[1:]) in card, cells
    auc, bal, f1 = tests[shipped.name][0], tests[shipped.name][2], tests[shipped.name][3]
    assert f"ROC AUC {auc}, balanced accuracy {bal}, F1 {f1} with context" in readme


def test_how_few_patients_the_pooled_test_figures_rest_on(frozen):
    test = frozen[2].test
    slides = whole_slide_patients(test)
    on_slides = np.isin(test.patient, slides)
    idc = test.label == 1
    biggest = np.bincount(test.patient[idc]).argmax()
    share = np.sum(test.patient[idc] == biggest) / idc.sum()
    card = text("MODEL_CARD.md")
    assert (
        f"({', '.join(map(str, slides))}) hold {on_slides.sum():,} of the {len(test.label):,}"
        in card
    )
    assert (
        f"patient {biggest} alone holds {np.sum(test.patient[idc] == biggest):,} ({share:.0%}) "
        f"of the {idc.sum():,} IDC patches" in card
    )


def test_the_idc_free_patients_of_the_data_list(frozen):
    patches, positive = {}, set()
    with gzip.open(REPO / "data/idc_245/files.txt.gz", "rt") as listing:
        for line in listing:
            name = line.split()[1]
            patient = int(name.split("_")[0])
            patches[patient] = patches.get(patient, 0) + 1
            if name.endswith("class1.png"):
                positive.add(patient)
    free = sorted(set(patches) - positive)
    card = text("MODEL_CARD.md")
    assert f"Only {len(free)} of the {len(patches)} patients have no IDC patch" in card
    assert ", ".join(map(str, free)) in card
    sizes = [patches[p] for p in free]
    assert f"scattered patches ({min(sizes)} to {max(sizes)} each)" in card
    patch = frozen[2]
    test = patch.test
    found = [p for p in free if p in set(test.patient.tolist())]
    called = {
        p: (
            int(np.sum(test.p_idc[test.patient == p] >= patch.threshold)),
            int(np.sum(test.patient == p)),
        )
        for p in found
    }
    described = " and ".join(f"{c} of {n} ({p})" for p, (c, n) in called.items())
    assert (
        f"The {len(found)} IDC-free test patients have {described} patches called IDC at "
        f"{patch.threshold:.4f}" in card
    )
    assert f"only {len(free)} of the 245 patients are" in text("README.md")


def test_the_earlier_cross_validations_over_called_slides(agreement):
    levels = agreement["cross_validation"]["levels"]
    over = sorted(
        levels[f"MobileNetV1 | {key} | other slides | balanced accuracy"]["agreement"][
            "over_called"
        ]
        for key in ("patch only", "context")
    )
    assert f"over-called on {over[0]}-{over[1]} of 27 slides" in text("MODEL_CARD.md")


def test_paired_differences_cited_by_the_docs(agreement):
    v1 = comparison(agreement, "MobileNetV1, patch only", "MobileNetV1, context")
    v2 = comparison(agreement, "MobileNetV2, patch only", "MobileNetV2, context")
    within = signed(v1["patient_roc_auc"])
    for doc in ("README.md", "results/real_245/README.md"):
        assert within in text(doc), doc
    readme, results = text("README.md"), text("results/real_245/README.md")
    for entry in (v2["patient_roc_auc"], v1["roc_auc"], v1["balanced_accuracy"]):
        assert signed(entry) in readme and signed(entry) in results
    split = comparison(
        agreement,
        "MobileNetV1, patch only",
        "MobileNetV2, patch only",
        "patient_split",
        "all test patients",
    )
    for doc in ("README.md", "results/real_245/README.md"):
        assert f"{signed(split['roc_auc'])}" in text(doc), doc
    assert signed(split["balanced_accuracy"]) in readme


def test_the_learning_curve_shares_are_not_nested():
    counts = {
        share: json.loads((RESULTS / f"v1_patients_{share}" / "summary.json").read_text())[
            "data_info"
        ]["counts"]["train"]
        for share in ("0.25", "0.5")
    }
    # A quarter of the patients with more patches than the half cannot lie inside it.
    assert counts["0.25"]["patches"] > counts["0.5"]["patches"]
    assert "not nested" in text("results/real_245/README.md")
    assert "not nested" in (RESULTS / "study.md").read_text()


def test_the_share_of_idc_patches_the_old_overlay_hid():
    test = predictions(SHIPPED_RUN, "test")
    share = np.mean(test.p_idc[test.label == 1] < 0.2)
    doc = re.sub(r"\s+", " ", (REPO / "idc_inference/overlay.py").read_text())
    assert f"{share:.0%} of the IDC patches score below 0.2" in doc


def test_the_leak_the_readme_cites_is_the_reports():
    report = (FROZEN / "report.md").read_text()
    rows = report_rows(report, "## The leak")
    paired_row = rows["leaky minus patient split (paired)"]
    readme = text("README.md")
    assert f"rises by {paired_row[1]} over the patient split's" in readme
    accuracy = [rows[name][0] for name in rows if "`v1_" in name]
    assert f"accuracy at 0.5 moves from {accuracy[0]} to {accuracy[1]}" in readme


def test_the_nested_learning_curve_the_readme_cites_is_the_reports():
    rows = report_rows((FROZEN / "report.md").read_text(), "## Learning curve, nested")
    quarter, half, full = rows["`v1_patch_0.25`"], rows["`v1_patch_0.5`"], rows["`v1_patch`"]
    readme = text("README.md")
    assert (
        f"{quarter[2]} with a quarter of the 147 training patients, {half[2]} with half and "
        f"{full[2]} with all: all minus half {half[3]}, all minus a quarter {quarter[3]}"
    ) in readme


def test_the_published_split_the_readme_cites_is_the_reports():
    rows = report_rows((FROZEN / "report.md").read_text(), "## The published split")
    ((patients, cells),) = rows.items()
    assert patients.startswith("42 ")
    assert (
        f"V1 scores test ROC AUC {cells[0]}, balanced accuracy {cells[1]} and F1 {cells[2]} at "
        "the validation threshold"
    ) in text("README.md")
