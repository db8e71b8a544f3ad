"""Calibration of P(IDC): a monotone map from what the network (or the slide-context stage) says
to a probability that means what it says, so that of the tiles given 0.7, about 70% are IDC.

    calibration = fit(p_validation, label_validation, groups=patient)   # chooses the kind
    p = calibration.apply(p_idc)
    record = calibration.to_record()         # stored in the weights record; from_record reads it

Two kinds, as in the literature on calibrating networks:
- "temperature" (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017):
  sigmoid(logit(p) / T + b), one temperature and, because a test set's share of IDC differs
  from training's (the 245-patient data: 20% of training patches, 25-40% elsewhere), one bias:
  Platt's two-parameter form (Platt 1999), fitted by maximum likelihood;
- "isotonic" (Zadrozny & Elkan, KDD 2002): the non-decreasing step function of least squared
  error, by pool-adjacent-violators, applied by linear interpolation between its steps.
`fit` picks the one with the lower Brier score on held-out patients (cross-validation over the
fitting patients, `groups`): isotonic adapts to any shape but needs more data; temperature
cannot overfit a few patients. Both keep the order of the scores (isotonic may tie some), so a
threshold moves with them: it is chosen again on the calibrated scores.

Plain NumPy and SciPy, no trainer and no scikit-learn (tests/test_calibration.py checks PAV
against scikit-learn's IsotonicRegression).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from scipy import optimize

from idc_inference.errors import CalibrationError

KINDS = ("identity", "temperature", "isotonic")
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A fitted monotone map of P(IDC); `identity` changes nothing."""

    kind: str = "identity"
    temperature: float = 1.0
    bias: float = 0.0
    knots_x: tuple[float, ...] = ()  # isotonic: the steps' scores, increasing
    knots_y: tuple[float, ...] = ()  # and their calibrated probabilities, non-decreasing
    fitted_on: str = ""

    def apply(self, p_idc: np.ndarray) -> np.ndarray:
        """Calibrated P(IDC), float32, of scores in [0, 1]."""
        p = np.asarray(p_idc, np.float64)
        if self.kind == "identity":
            out = p
        elif self.kind == "temperature":
            out = 1.0 / (1.0 + np.exp(-(_logit(p) / self.temperature + self.bias)))
        else:
            out = np.interp(p, self.knots_x, self.knots_y)
        return out.astype(np.float32)

    def to_record(self) -> dict:
        record = {"kind": self.kind, "fitted_on": self.fitted_on}
        if self.kind == "temperature":
            record.update(temperature=self.temperature, bias=self.bias)
        if self.kind == "isotonic":
            record.update(knots_x=list(self.knots_x), knots_y=list(self.knots_y))
        return record

    @classmethod
    def from_record(cls, record: Mapping | None) -> Calibration:
        """The calibration of a weights record (None: identity, as records before it)."""
        if record is None:
            return cls()
        kind = record.get("kind")
        if kind not in KINDS:
            raise CalibrationError(f"unknown calibration {kind!r}: expected one of {KINDS}")
        x, y = tuple(record.get("knots_x", ())), tuple(record.get("knots_y", ()))
        if kind == "isotonic" and (len(x) < 1 or len(x) != len(y) or np.any(np.diff(x) < 0)):
            raise CalibrationError("an isotonic calibration needs increasing knots, one y each")
        return cls(
            kind=kind,
            temperature=float(record.get("temperature", 1.0)),
            bias=float(record.get("bias", 0.0)),
            knots_x=x,
            knots_y=y,
            fitted_on=record.get("fitted_on", ""),
        )


def fit_temperature(p_idc: np.ndarray, label: np.ndarray, fitted_on: str = "") -> Calibration:
    """sigmoid(logit(p) / T + b) of maximum likelihood (Platt scaling of the logit)."""
    z, y = _logit(p_idc), np.asarray(label, np.float64)

    def negative_log_likelihood(theta):
        inverse_t, b = theta
        s = z * inverse_t + b
        # log(1 + e^s) - y s, and its gradient
        loss = np.logaddexp(0.0, s) - y * s
        q = 1.0 / (1.0 + np.exp(-s))
        return loss.mean(), np.array([((q - y) * z).mean(), (q - y).mean()])

    result = optimize.minimize(
        negative_log_likelihood,
        x0=np.array([1.0, 0.0]),
        jac=True,
        method="L-BFGS-B",
        bounds=[(1e-3, 1e3), (-20.0, 20.0)],
    )
    inverse_t, b = result.x
    return Calibration(
        "temperature", temperature=float(1.0 / inverse_t), bias=float(b), fitted_on=fitted_on
    )


def pool_adjacent_violators(y: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing sequence closest to `y` in weighted least squares (Ayer et al. 1955)."""
    y = np.asarray(y, np.float64)
    w = np.ones_like(y) if weight is None else np.asarray(weight, np.float64)
    means, weights, counts = [], [], []
    for value, mass in zip(y, w):
        means.append(value)
        weights.append(mass)
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m2, w2, c2 = means.pop(), weights.pop(), counts.pop()
            total = weights[-1] + w2
            means[-1] = (means[-1] * weights[-1] + m2 * w2) / total
            weights[-1] = total
            counts[-1] += c2
    return np.repeat(means, counts)


def fit_isotonic(p_idc: np.ndarray, label: np.ndarray, fitted_on: str = "") -> Calibration:
    """The isotonic regression of the labels on the scores, kept as its steps' end points."""
    p = np.asarray(p_idc, np.float64)
    order = np.argsort(p, kind="stable")
    scores, fitted = p[order], pool_adjacent_violators(np.asarray(label, np.float64)[order])
    # Equal scores get one value (their mean), then each step is kept by its first and last
    # score: np.interp between them reproduces the step function and joins steps linearly.
    unique, start = np.unique(scores, return_index=True)
    values = np.add.reduceat(fitted, start) / np.diff(np.append(start, len(scores)))
    keep = np.ones(len(unique), bool)
    keep[1:-1] = (values[1:-1] != values[:-2]) | (values[1:-1] != values[2:])
    return Calibration(
        "isotonic",
        knots_x=tuple(float(v) for v in unique[keep]),
        knots_y=tuple(float(v) for v in values[keep]),
        fitted_on=fitted_on,
    )


FITTERS = {"temperature": fit_temperature, "isotonic": fit_isotonic}


def held_out_brier(
    p_idc: np.ndarray, label: np.ndarray, groups: np.ndarray, kind: str, folds: int = 5
) -> float:
    """The Brier score of `kind` fitted on the other folds' groups, over every item (groups,
    e.g. patients, are dealt to `folds` folds in order of their ids)."""
    p, y, groups = np.asarray(p_idc), np.asarray(label), np.asarray(groups)
    unique = np.unique(groups)
    fold_of = dict(zip(unique.tolist(), (np.arange(len(unique)) % folds).tolist()))
    fold = np.array([fold_of[g] for g in groups.tolist()])
    squared = np.empty(len(p))
    for k in range(min(folds, len(unique))):
        held = fold == k
        fitted = FITTERS[kind](p[~held], y[~held])
        squared[held] = (fitted.apply(p[held]) - y[held]) ** 2
    return float(squared.mean())


def fit(
    p_idc: np.ndarray, label: np.ndarray, groups: np.ndarray, fitted_on: str = ""
) -> tuple[Calibration, dict[str, float]]:
    """The kind with the lower held-out Brier score, refitted on everything; and the scores."""
    scores = {kind: held_out_brier(p_idc, label, groups, kind) for kind in FITTERS}
    best = min(scores, key=scores.get)
    return FITTERS[best](p_idc, label, fitted_on=fitted_on), scores
