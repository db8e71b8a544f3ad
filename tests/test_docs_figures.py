"""The figures README.md, MODEL_CARD.md and results/real_245/README.md cite, recomputed from the
committed files they cite (summary.json, predictions_*.npz, slide_agreement.json, the data list):
a doc that drifts from its source fails here."""

import gzip
import json
import pathlib
import re

import numpy as np
import pytest

from evaluation import metrics
from experiment.predictions import PatchPredictions
from experiment.scoring import whole_slide_patients

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "real_245"
SHIPPED_RUN = RESULTS / "mobilenet_v1_patient"


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


def test_the_shipped_models_test_and_validation_figures():
    summary = json.loads((SHIPPED_RUN / "summary.json").read_text())
    auc = summary["test_intervals"]["at_0.5"]["roc_auc"]
    card, readme = text("MODEL_CARD.md"), text("README.md")
    assert f"| ROC AUC | {auc['estimate']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}] |" in card
    tuned = summary["test_intervals"]["at_validation_threshold"]["balanced_accuracy"]
    assert (
        f"ROC AUC {auc['estimate']:.3f} [95% interval over patients {auc['low']:.2f}, "
        f"{auc['high']:.2f}], balanced accuracy {tuned['estimate']:.3f} [{tuned['low']:.2f}, "
        f"{tuned['high']:.2f}] at the threshold tuned on validation" in readme
    )
    validation = predictions(SHIPPED_RUN, "validation")
    threshold = metrics.best_threshold(validation.label, validation.p_idc)
    shipped = json.loads((REPO / "idc_inference/shipped/mobilenet_v1_idc.json").read_text())
    assert shipped["threshold"]["value"] == threshold
    at_half, at_tuned = (
        metrics.binary_metrics(validation.label, validation.p_idc, t)["balanced_accuracy"]
        for t in (0.5, threshold)
    )
    assert (
        f"ROC AUC {metrics.roc_auc(validation.label, validation.p_idc):.3f}, balanced accuracy "
        f"{at_half:.3f} at 0.5 and {at_tuned:.3f} at the tuned threshold {threshold:.4f}" in card
    )


def test_how_few_patients_the_pooled_test_figures_rest_on(agreement):
    test = predictions(SHIPPED_RUN, "test")
    slides = whole_slide_patients(test)
    on_slides = np.isin(test.patient, slides)
    idc = test.label == 1
    biggest = np.bincount(test.patient[idc]).argmax()
    share = np.sum(test.patient[idc] == biggest) / idc.sum()
    card = text("MODEL_CARD.md")
    assert f"hold {on_slides.sum():,} of the {len(test.label):,} test patches" in card
    assert (
        f"patient {biggest} alone holds {np.sum(test.patient[idc] == biggest):,} ({share:.0%}) "
        f"of the {idc.sum():,} IDC patches" in card
    )
    scattered = test.select(np.flatnonzero(~on_slides))
    auc = metrics.roc_auc(scattered.label, scattered.p_idc)
    assert f"On the other {len(np.unique(scattered.patient))} test patients" in card
    assert f"the pooled ROC AUC is {auc:.3f}" in card
    cited = comparison(
        agreement,
        "MobileNetV1, patch only",
        "MobileNetV1, smoothed (sigma 2.5)",
        "patient_split",
        "scattered patients",
    )
    assert cited["roc_auc"]["a"] == pytest.approx(auc, abs=1e-12)


def test_the_idc_free_patients_of_the_data_list():
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
    test = predictions(SHIPPED_RUN, "test")
    (patient,) = [p for p in free if p in set(test.patient.tolist())]
    mine = test.patient == patient
    called = int(np.sum(test.p_idc[mine].astype(np.float64) >= 0.3455875515937805))
    assert (
        f"The one IDC-free test patient, {patient}, has {called} of its {mine.sum()} patches "
        f"({called / mine.sum():.0%}) called IDC at 0.3456" in card
    )
    assert f"only {len(free)} of the 245 patients are" in text("README.md")


def test_the_slide_level_table_of_the_model_card(agreement):
    levels = agreement["cross_validation"]["levels"]
    card = text("MODEL_CARD.md")
    for label, key in (
        (
            "patch only, balanced-accuracy threshold",
            "patch only | other slides | balanced accuracy",
        ),
        ("with context, balanced-accuracy threshold", "context | other slides | balanced accuracy"),
        ("with context, area-agreement threshold", "context | other slides | area agreement"),
    ):
        stats = levels[f"MobileNetV1 | {key}"]["agreement"]
        row = (
            f"| {label} | {signed(stats['bias_mm2'], 1, 'estimate')} | "
            f"{stats['lower_limit_mm2']['estimate']:.1f} to "
            f"{stats['upper_limit_mm2']['estimate']:+.1f} | "
            f"{stats['mae_fraction']['estimate']:.3f} | {stats['over_called']} of "
            f"{stats['slides']} |"
        )
        assert row in card, row
    points = {
        method: levels[f"MobileNetV1 | {method} | other slides | sensitivity 0.95"][
            "operating_point"
        ]
        for method in ("context", "patch only")
    }
    context, patch = (
        (points[m]["sensitivity"]["estimate"], points[m]["specificity"]["estimate"])
        for m in ("context", "patch only")
    )
    assert (
        f"sensitivity {context[0]:.3f} and specificity {context[1]:.3f} with context "
        f"({patch[0]:.3f} and {patch[1]:.3f} patch only)" in card
    )


def test_paired_differences_cited_by_the_docs(agreement):
    v1 = comparison(agreement, "MobileNetV1, patch only", "MobileNetV1, context")
    v2 = comparison(agreement, "MobileNetV2, patch only", "MobileNetV2, context")
    within = signed(v1["patient_roc_auc"])
    for doc in ("README.md", "MODEL_CARD.md", "results/real_245/README.md"):
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
    for doc in ("README.md", "MODEL_CARD.md", "results/real_245/README.md"):
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
