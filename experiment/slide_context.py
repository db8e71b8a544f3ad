"""The slide as context: P(IDC) of a patch averaged with its neighbours' on the slide's grid.

IDC is a region, not a patch: a patch inside a tumour has tumour around it. The Kaggle file names
give every patch's place on its slide's 50-pixel grid, so a patch network's P(IDC) can be
smoothed over the grid after the fact, with nothing learned but one width:

    smoothed = smooth_on_grid(table, sigma=1.5)          # sigma in patches (50 px steps)

`smooth_on_grid` is a normalised Gaussian convolution (Knutsson & Westin 1993): the weighted sum
of the neighbours' P(IDC) divided by the sum of the weights of the neighbours that exist, so a
patch at the slide's edge or next to a missing patch averages only over what is there, and an
isolated patch keeps its own P(IDC). `choose_sigma` picks the width on validation patients only;
the test patients then judge it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from experiment.predictions import PatchPredictions
from trainer import metrics

GRID = 50  # pixels between neighbouring Kaggle patches
SIGMAS = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
# Beyond this many standard deviations a Gaussian's weight is below 1e-4 of its peak.
TRUNCATE = 4.0


def grid_cells(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of each patch on its slide's grid, from the 1-based pixel corners."""
    return (np.asarray(y) - 1) // GRID, (np.asarray(x) - 1) // GRID


def smooth_on_grid(table: PatchPredictions, sigma: float) -> np.ndarray:
    """P(IDC) of each patch averaged with its grid neighbours' under a Gaussian of `sigma` patches.

    Each patient's patches form one slide; patients never mix. sigma 0 returns P(IDC) unchanged.
    """
    p = np.asarray(table.p_idc, np.float64)
    if sigma <= 0:
        return p.astype(np.float32)
    out = np.empty_like(p)
    rows, cols = grid_cells(table.x, table.y)
    for patient in np.unique(table.patient):
        mine = np.flatnonzero(table.patient == patient)
        r, c = rows[mine] - rows[mine].min(), cols[mine] - cols[mine].min()
        values = np.zeros((r.max() + 1, c.max() + 1))
        present = np.zeros_like(values)
        # A patch listed twice on one cell (never in the Kaggle set) would count twice.
        np.add.at(values, (r, c), p[mine])
        np.add.at(present, (r, c), 1.0)
        options = dict(sigma=sigma, mode="constant", cval=0.0, truncate=TRUNCATE)
        weighted = ndimage.gaussian_filter(values, **options)
        weights = ndimage.gaussian_filter(present, **options)
        out[mine] = weighted[r, c] / weights[r, c]
    return out.astype(np.float32)


def neighbour_fraction(table: PatchPredictions) -> np.ndarray:
    """Per patch, the fraction of its 4 grid neighbours that are present (a slide's density)."""
    rows, cols = grid_cells(table.x, table.y)
    cells = set(zip(table.patient.tolist(), rows.tolist(), cols.tolist()))
    counts = np.zeros(len(rows))
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        counts += [
            (patient, row + dr, col + dc) in cells
            for patient, row, col in zip(table.patient.tolist(), rows.tolist(), cols.tolist())
        ]
    return counts / 4.0


@dataclasses.dataclass(frozen=True)
class SigmaChoice:
    sigma: float
    threshold: float  # maximises balanced accuracy of the smoothed P(IDC) on validation
    validation_roc_auc: dict[float, float]  # per candidate sigma


def choose_sigma(validation: PatchPredictions, sigmas: Sequence[float] = SIGMAS) -> SigmaChoice:
    """The width with the highest validation ROC AUC, and its validation-tuned threshold.

    Ties go to the narrower kernel (the less the map is blurred, the better regions keep their
    borders).
    """
    scores = {
        float(s): metrics.roc_auc(validation.label, smooth_on_grid(validation, s)) for s in sigmas
    }
    best = max(scores.values())
    sigma = min(s for s, v in scores.items() if v == best)
    threshold = metrics.best_threshold(validation.label, smooth_on_grid(validation, sigma))
    return SigmaChoice(sigma, threshold, scores)


# ----------------------------------------------------------------------------- learned stage

# The scales a learned second stage reads: the patch itself, its neighbours, its region.
CONTEXT_SIGMAS = (1.0, 2.0, 4.0)
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def context_features(table: PatchPredictions) -> np.ndarray:
    """[N, 5] per patch: logit of its P(IDC), of its smoothed P(IDC) at each of CONTEXT_SIGMAS,
    and the fraction of its 4 grid neighbours present (how much context there is)."""
    columns = [_logit(table.p_idc)]
    columns += [_logit(smooth_on_grid(table, s)) for s in CONTEXT_SIGMAS]
    columns.append(neighbour_fraction(table))
    return np.stack(columns, axis=1)


@dataclasses.dataclass(frozen=True)
class ContextModel:
    """Logistic regression over `context_features`: a second stage that reads the slide grid."""

    weights: np.ndarray  # [features]
    bias: float

    def predict(self, table: PatchPredictions) -> np.ndarray:
        z = context_features(table) @ self.weights + self.bias
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def fit_logistic_regression(
    features: np.ndarray, labels: np.ndarray, l2: float = 1.0, iterations: int = 50
) -> tuple[np.ndarray, float]:
    """(weights, bias) minimising the mean log loss + l2 / (2 N) * |weights|^2, by Newton steps.

    Written out (a dozen lines of IRLS) rather than taken from scikit-learn, which the project
    keeps as the tests' independent reference, not a run-time dependency.
    """
    x = np.concatenate([np.asarray(features, np.float64), np.ones((len(features), 1))], axis=1)
    y = np.asarray(labels, np.float64)
    penalty = np.full(x.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    beta = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        gradient = x.T @ (p - y) + penalty * beta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta[:-1], float(beta[-1])


def fit_context_model(table: PatchPredictions, l2: float = 1.0) -> ContextModel:
    """The second stage fitted on `table`: patients the patch network never trained on."""
    weights, bias = fit_logistic_regression(context_features(table), table.label, l2)
    return ContextModel(weights, bias)
