"""The tables of the held-out evaluation (`experiment.held_out`), and its figures as JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from experiment.markdown import fmt, fmt_signed, markdown_table

AREA_RULES = ("balanced accuracy", "area agreement")
METRIC_LABELS = {
    "roc_auc": "ROC AUC, pooled",
    "patient_roc_auc": "ROC AUC within a patient, mean",
    "balanced_accuracy": "balanced accuracy, pooled",
    "patient_balanced_accuracy": "balanced accuracy per patient, mean",
    "f1": "F1, pooled",
    "sensitivity": "sensitivity, pooled",
    "patient_sensitivity": "sensitivity per patient, mean",
    "specificity": "specificity, pooled",
    "patient_specificity": "specificity per patient, mean",
    "ece": "ECE (lower is better)",
}


def interval(entry: Mapping, signed: bool = False, digits: int = 3, key: str = "") -> str:
    """'value [low, high]' of an entry: its `key`, else its difference, else its estimate."""
    value = entry[key or next(k for k in ("difference", "estimate") if k in entry)]
    form = f"{'+' if signed else ''}.{digits}f"
    low, high = (format(entry[k], form) for k in ("low", "high"))
    return f"{(fmt_signed if signed else fmt)(value, digits)} [{low}, {high}]"


def paired_rows(result: Mapping, names: Sequence[str], *first: str) -> list[list[str]]:
    """Rows of a paired comparison: (first cells,) metric, A, B, B - A [CI], share <= 0."""
    return [
        [
            *first,
            METRIC_LABELS[name],
            fmt(result[name]["a"]),
            fmt(result[name]["b"]),
            interval(result[name], signed=True),
            fmt(result[name]["share_at_most_zero"]),
        ]
        for name in names
    ]


def paired_table(result: Mapping, names: Sequence[str] = tuple(METRIC_LABELS)) -> str:
    header = ("Metric", result["a"], result["b"], "B - A [95% CI]", "resamples with B - A <= 0")
    return markdown_table(header, paired_rows(result, names))


def thresholds(entry: Mapping) -> str:
    return ", ".join(f"{t:.3f}" for t in entry["thresholds"])


def agreement_rows(levels: Mapping) -> list[list[str]]:
    rows = []
    for (network, method, chosen_on, rule), entry in levels.items():
        stats = entry["agreement"]
        rows.append(
            [
                network,
                method + (f" ({', '.join(entry['choices'])})" if entry["choices"] else ""),
                f"{rule}, on {chosen_on}",
                thresholds(entry),
                interval(stats["bias_mm2"], signed=True, digits=1),
                f"{stats['lower_limit_mm2']['estimate']:.1f} to "
                f"{stats['upper_limit_mm2']['estimate']:.1f}",
                interval(stats["mae_mm2"], digits=1),
                interval(stats["bias_fraction"], signed=True),
                interval(stats["mae_fraction"]),
                f"{stats['over_called']} / {stats['under_called']}",
            ]
        )
    return rows


def lesion_rows(levels: Mapping) -> list[list[str]]:
    rows = []
    for (network, method, chosen_on, rule), entry in levels.items():
        cells = [
            f"{b['detected']} / {b['lesions']} ({interval(b, digits=2, key='sensitivity')})"
            if b["lesions"]
            else "none"
            for b in entry["lesions"]
        ]
        false = np.array(list(entry["false_positive_regions"].values()))
        rows.append(
            [
                network,
                method,
                f"{rule}, on {chosen_on}",
                *cells,
                f"{false.mean():.1f} ({false.sum()})",
            ]
        )
    return rows


def operating_rows(levels: Mapping) -> list[list[str]]:
    return [
        [
            network,
            method,
            f"{rule}, on {chosen_on}",
            thresholds(entry),
            interval(entry["operating_point"]["sensitivity"]),
            interval(entry["operating_point"]["specificity"]),
        ]
        for (network, method, chosen_on, rule), entry in levels.items()
    ]


def per_slide_rows(levels: Mapping, networks: Sequence[str]) -> list[list[str]]:
    columns = [
        (n, m, r)
        for n in networks
        for m, r in (
            ("patch only", AREA_RULES[0]),
            ("context", AREA_RULES[0]),
            ("context", AREA_RULES[1]),
        )
    ]
    first = levels[(*columns[0][:2], "other slides", columns[0][2])]["areas"]
    rows = []
    for i, patient in enumerate(first.patient):
        cells = [
            str(patient),
            f"{first.patches[i]:,}",
            f"{first.labelled[i] / first.patches[i]:.2f}",
        ]
        for n, m, r in columns:
            areas = levels[(n, m, "other slides", r)]["areas"]
            cells.append(f"{areas.called[i] / areas.patches[i]:.2f}")
        rows.append(cells)
    header = ("Slide", "Patches", "Labelled IDC")
    header += tuple(f"{n}, {m}, {r} threshold" for n, m, r in columns)
    return [list(header), *rows]


def _plain(value):
    """JSON values: floats (NaN as null), lists, dicts with string keys."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def as_json(data: Mapping) -> dict:
    """The report's figures as plain JSON: per (network, P(IDC), chosen on, rule) the
    thresholds, agreement, operating point, lesions and false regions, per slide the labelled
    and called patches; and every paired comparison."""
    out = {}
    if "cross_validation" in data:
        levels = {}
        for key, entry in data["cross_validation"]["levels"].items():
            areas = entry["areas"]
            levels[" | ".join(key)] = {
                **{k: v for k, v in entry.items() if k != "areas"},
                "slides": {
                    "patient": areas.patient,
                    "patches": areas.patches,
                    "labelled": areas.labelled,
                    "called": areas.called,
                },
            }
        out["cross_validation"] = {
            "levels": levels,
            "paired": data["cross_validation"]["paired"],
        }
    if "patient_split" in data:
        out["patient_split"] = data["patient_split"]
    return _plain(out)
