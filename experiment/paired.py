"""Paired bootstrap over patients: is method B better than method A on the same test patients?

    a = Method.of("patch only", test, selection=validation)          # threshold chosen there
    b = Method.of("smoothed", smoothed_test, selection=smoothed_validation)
    result = paired_differences(a, b)        # {metric: {"a", "b", "difference", "low", ...}}

A gain claimed for one method over another on a few dozen patients needs an interval for the
*difference*, scored on the same resamples: two overlapping per-method intervals say little, as
both move together with the patients drawn. Each resample draws the test patients with
replacement (all patches of a drawn patient come along; `uncertainty.resample_counts`, so the
same seed draws the resamples of summary.json's intervals) and scores both methods on it.

Thresholds are part of the method: where a part of a method names its `selection` data (e.g. its
validation patients, or other folds' slides), its threshold is re-chosen inside every resample
(`metrics.best_threshold`, maximum balanced accuracy) on a resample of that selection data, so
the interval carries the noise of the choice as well. Selection data whose patients are all test
patients (other folds' held-out slides) is resampled with the test patients it shares; other
selection data (validation patients) is resampled independently, and once for both methods where
they select on the same patients. A method may have several parts (the runs of a
cross-validation), each with its own threshold, their test patients disjoint; its pooled P(IDC)
gives ROC AUC and ECE, each part's calls give the threshold metrics.

Every metric of a resample follows from per-patient tallies (as in `evaluation.uncertainty`), so
2,000 resamples of ~30,000 patches take seconds. The metrics (METRICS): pooled ROC AUC, balanced
accuracy, F1, sensitivity, specificity and ECE, beside per-patient macro means: within-patient
ROC AUC (patients with both classes), balanced accuracy (both classes), sensitivity (patients
with IDC) and specificity (patients with non-IDC patches). Not re-chosen inside the resample:
anything outside the thresholds (e.g. a smoothing width), which the caller fixes beforehand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from evaluation import metrics, uncertainty
from experiment.predictions import PatchPredictions

METRICS = (
    "roc_auc",
    "balanced_accuracy",
    "f1",
    "sensitivity",
    "specificity",
    "ece",
    "patient_roc_auc",
    "patient_balanced_accuracy",
    "patient_sensitivity",
    "patient_specificity",
)
_BLOCK_ELEMENTS = 1 << 22  # resamples x candidate thresholds per block (~32 MB of float64)


@dataclasses.dataclass(frozen=True)
class Part:
    """Test patches called at one threshold: `threshold`, or, with `selection`, the one that
    maximises balanced accuracy on (a resample of) the selection data."""

    test: PatchPredictions
    selection: PatchPredictions | None = None
    threshold: float = 0.5


@dataclasses.dataclass(frozen=True)
class Method:
    """P(IDC) of the test patients, in parts with their own thresholds (disjoint patients)."""

    name: str
    parts: tuple[Part, ...]

    @classmethod
    def of(cls, name, test, selection=None, threshold=0.5) -> Method:
        return cls(name, (Part(test, selection, threshold),))

    def pooled(self) -> PatchPredictions:
        fields = ("p_idc", "label", "patient", "x", "y")
        return PatchPredictions(
            *(np.concatenate([getattr(p.test, f) for p in self.parts]) for f in fields)
        )

    def restricted(self, patients: Sequence[int]) -> Method:
        """The method on those test patients only (its thresholds still chosen as before)."""
        parts = []
        for part in self.parts:
            rows = np.flatnonzero(np.isin(part.test.patient, patients))
            if len(rows):
                parts.append(dataclasses.replace(part, test=part.test.select(rows)))
        return Method(self.name, tuple(parts))


def _with_data_row(counts: np.ndarray) -> np.ndarray:
    """Row 0: every patient once (the data as given, the point estimate); then the resamples."""
    return np.vstack([np.ones((1, counts.shape[1])), counts]).astype(np.float64)


class Resamples:
    """The resamples of the test patients, and of each other set of patients a method selects
    on; the same object serves both methods of a comparison, so that they are paired."""

    def __init__(self, test_patients: np.ndarray, num_resamples: int, seed: int):
        self.test_ids = np.unique(test_patients)
        self.test = _with_data_row(
            uncertainty.resample_counts(len(self.test_ids), num_resamples, seed)
        )
        self._num_resamples, self._seed = num_resamples, seed
        self._others: dict[bytes, np.ndarray] = {}

    def counts_for(self, patients: np.ndarray) -> np.ndarray:
        """[1 + resamples, unique patients]: how often each of `patients` is drawn."""
        ids = np.unique(patients)
        inside = np.isin(ids, self.test_ids)
        if inside.all():
            return self.test[:, np.searchsorted(self.test_ids, ids)]
        if inside.any():
            raise ValueError("selection data shares some but not all patients with the test")
        key = ids.astype(np.int64).tobytes()
        if key not in self._others:
            seed = self._seed + 1 + len(self._others)
            draws = uncertainty.resample_counts(len(ids), self._num_resamples, seed)
            self._others[key] = _with_data_row(draws)
        return self._others[key]


def _by_patient(table: PatchPredictions):
    """Per patient (increasing id): its sorted P(IDC) overall, of IDC and of non-IDC patches."""
    labels = np.asarray(table.label).astype(bool)
    p = np.asarray(table.p_idc, np.float64)
    ids, index = np.unique(table.patient, return_inverse=True)
    for a in range(len(ids)):
        mine = index == a
        yield np.sort(p[mine]), np.sort(p[mine & labels]), np.sort(p[mine & ~labels])


def resampled_best_thresholds(table: PatchPredictions, counts: np.ndarray) -> np.ndarray:
    """[R]: `metrics.best_threshold` of each resample of `table` (row r: the patches of the
    a-th patient repeated counts[r, a] times), to the last bit, without building the resamples.

    Balanced accuracy is constant between two P(IDC) of a resample, so its first maximum over
    the full table's candidates (midpoints of its distinct P(IDC)) lies between the same two
    values of the resample as the resample's own first maximum; the resample's threshold is the
    midpoint of those two (or its lowest P(IDC) - 1e-6 when all are called), as best_threshold
    computes it. 0.5 where a resample lacks a class, as there.
    """
    patients = list(_by_patient(table))
    distinct = np.unique(np.asarray(table.p_idc, np.float64))
    candidates = np.r_[distinct[0] - 1e-6, (distinct[:-1] + distinct[1:]) / 2.0, distinct[-1]]
    pos_below = np.stack([np.searchsorted(pos, candidates) for _, pos, _ in patients])
    neg_below = np.stack([np.searchsorted(neg, candidates) for _, _, neg in patients])
    counts = np.asarray(counts, np.float64)
    num_pos = counts @ np.array([len(pos) for _, pos, _ in patients], np.float64)
    num_neg = counts @ np.array([len(neg) for _, _, neg in patients], np.float64)
    best = np.zeros(len(counts), np.int64)
    block = max(1, _BLOCK_ELEMENTS // len(candidates))
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, len(counts), block):
            c, rows = counts[start : start + block], slice(start, start + block)
            n_pos, n_neg = num_pos[rows, None], num_neg[rows, None]
            youden = (c @ neg_below) / n_neg + (n_pos - c @ pos_below) / n_pos - 1.0
            best[rows] = np.argmax(np.nan_to_num(youden, nan=-np.inf), axis=1)
    chosen = candidates[best]
    lower = np.full(len(counts), -np.inf)
    upper = np.full(len(counts), np.inf)
    for a, (values, _, _) in enumerate(patients):
        drawn = counts[:, a] > 0
        i = np.searchsorted(values, chosen)
        below = np.where(i > 0, values[np.maximum(i - 1, 0)], -np.inf)
        above = np.where(i < len(values), values[np.minimum(i, len(values) - 1)], np.inf)
        lower = np.where(drawn, np.maximum(lower, below), lower)
        upper = np.where(drawn, np.minimum(upper, above), upper)
    thresholds = np.where(np.isinf(lower), upper - 1e-6, (lower + upper) / 2.0)
    thresholds = np.where(np.isinf(upper), lower, thresholds)
    return np.where((num_pos > 0) & (num_neg > 0), thresholds, 0.5)


def confusion_at(table: PatchPredictions, thresholds: np.ndarray) -> np.ndarray:
    """[R, patients, 4]: tn, fp, fn, tp of each patient (increasing id) when P(IDC) >= the
    threshold of resample r is called IDC."""
    thresholds = np.asarray(thresholds, np.float64)
    out = []
    for _, pos, neg in _by_patient(table):
        tp = len(pos) - np.searchsorted(pos, thresholds)
        fp = len(neg) - np.searchsorted(neg, thresholds)
        out.append(np.stack([len(neg) - fp, fp, len(pos) - tp, tp], axis=1))
    return np.stack(out, axis=1).astype(np.float64)


def _ratio(numerator, denominator) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def _weighted_mean(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mean over the drawn patients (with their multiplicity) where `values` is defined."""
    defined = ~np.isnan(values)
    weights = counts * defined
    return _ratio(np.sum(weights * np.nan_to_num(values), axis=-1), weights.sum(axis=-1))


def threshold_replicates(counts: np.ndarray, confusion: np.ndarray) -> dict[str, np.ndarray]:
    """The threshold metrics of each resample, pooled and as per-patient means, from the
    per-patient confusion counts [R, patients, 4] and the resamples' counts [R, patients]."""
    tn, fp, fn, tp = np.moveaxis(confusion, -1, 0)
    totals = np.einsum("rp,rpk->rk", counts, confusion)
    values = uncertainty.threshold_metrics(totals, ("balanced_accuracy", "f1"))
    values["sensitivity"] = _ratio(totals[:, 3], totals[:, 3] + totals[:, 2])
    values["specificity"] = _ratio(totals[:, 0], totals[:, 0] + totals[:, 1])
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    values["patient_sensitivity"] = _weighted_mean(counts, sensitivity)
    values["patient_specificity"] = _weighted_mean(counts, specificity)
    values["patient_balanced_accuracy"] = _weighted_mean(counts, (sensitivity + specificity) / 2)
    return values


def resampled_ece(table: PatchPredictions, counts: np.ndarray) -> np.ndarray:
    """ECE (`metrics.expected_calibration_error`'s bins) of each resample: the sum over bins of
    |IDC patches - summed P(IDC)| over all patches, from per-patient bin tallies."""
    bins = metrics.CALIBRATION_BINS
    p = np.asarray(table.p_idc, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.minimum(np.searchsorted(edges, p, side="right") - 1, bins - 1)
    _, index = np.unique(table.patient, return_inverse=True)
    cells = index * bins + which
    size = counts.shape[1] * bins

    def tally(weights):
        return np.bincount(cells, weights, minlength=size).reshape(-1, bins)

    gap = counts @ (tally(np.asarray(table.label, np.float64)) - tally(p))
    return np.abs(gap).sum(axis=1) / (counts @ tally(None).sum(axis=1))


def method_replicates(method: Method, resamples: Resamples) -> dict[str, np.ndarray]:
    """Every metric of METRICS on the data (row 0) and on each resample (rows 1...)."""
    test_ids, counts = resamples.test_ids, resamples.test
    confusion = np.zeros((len(counts), len(test_ids), 4))
    taken = np.zeros(len(test_ids), bool)
    for part in method.parts:
        columns = np.searchsorted(test_ids, np.unique(part.test.patient))
        if taken[columns].any():
            raise ValueError(f"{method.name}: a test patient lies in two parts")
        taken[columns] = True
        if part.selection is None:
            thresholds = np.full(len(counts), float(part.threshold))
        else:
            selected = resamples.counts_for(part.selection.patient)
            thresholds = resampled_best_thresholds(part.selection, selected)
        confusion[:, columns] = confusion_at(part.test, thresholds)
    if not taken.all():
        raise ValueError(f"{method.name} does not score every test patient of the comparison")
    pooled = method.pooled()
    values = threshold_replicates(counts, confusion)
    values["roc_auc"] = uncertainty.resampled_metrics(
        pooled.label, pooled.p_idc, pooled.patient, counts, metric_names=("roc_auc",)
    )["roc_auc"]
    within = np.array(
        [
            metrics.roc_auc(pooled.label[mine], pooled.p_idc[mine])
            for patient in test_ids
            for mine in [pooled.patient == patient]
        ]
    )
    values["patient_roc_auc"] = _weighted_mean(counts, within)
    values["ece"] = resampled_ece(pooled, counts)
    return {name: values[name] for name in METRICS}


def part_thresholds(method: Method) -> list[float]:
    """Each part's threshold on the data as given (chosen on its whole selection data)."""
    return [
        float(part.threshold)
        if part.selection is None
        else metrics.best_threshold(part.selection.label, part.selection.p_idc)
        for part in method.parts
    ]


def paired_differences(
    a: Method,
    b: Method,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """B - A for every metric of METRICS: the difference on the data, its percentile interval
    over the paired resamples, and `share_at_most_zero`, the share of resamples where B - A
    <= 0 (a one-sided bootstrap p-value for "B is higher"; for ECE, lower is better).

    Both methods must score the same test patients. Resamples where a metric is undefined for
    either method (e.g. no IDC patch drawn) are left out of its interval and counted.
    """
    patients_a, patients_b = np.unique(a.pooled().patient), np.unique(b.pooled().patient)
    if not np.array_equal(patients_a, patients_b):
        raise ValueError(f"{a.name} and {b.name} are scored on different test patients")
    resamples = Resamples(patients_a, num_resamples, seed)
    values_a = method_replicates(a, resamples)
    values_b = method_replicates(b, resamples)
    tails = [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)]
    report = {
        "a": a.name,
        "b": b.name,
        "num_patients": len(patients_a),
        "num_resamples": num_resamples,
        "seed": seed,
        "thresholds": {"a": part_thresholds(a), "b": part_thresholds(b)},
    }
    for name in METRICS:
        difference = values_b[name] - values_a[name]
        replicates = difference[1:][~np.isnan(difference[1:])]
        low, high = np.percentile(replicates, tails) if len(replicates) else (np.nan, np.nan)
        report[name] = {
            "a": float(values_a[name][0]),
            "b": float(values_b[name][0]),
            "difference": float(difference[0]),
            "low": float(low),
            "high": float(high),
            "share_at_most_zero": float(np.mean(replicates <= 0)) if len(replicates) else np.nan,
            "num_resamples_used": len(replicates),
        }
    return report
