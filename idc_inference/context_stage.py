"""The slide as context: a second stage that revises each tile's P(IDC) by its neighbours'.

    stage = ContextStage.from_record(weights.record["context_stage"])
    p_context = stage.predict(p_idc, rows, cols)        # tiles on one slide's grid

IDC is a region, not a patch: a tile inside a tumour has tumour around it. The patch network sees
one 50x50 field of view; this stage sees the grid of its outputs. It is a logistic regression
over five numbers per tile (`context_features`): the logit of the tile's own P(IDC), the logits
of P(IDC) smoothed over its grid neighbours at three widths (`CONTEXT_SIGMAS`: the neighbours,
the surroundings, the region), and the fraction of its four neighbours present. It is fitted on
validation patients (patients the patch network never trained on; its training patients' P(IDC)
are in-sample and too confident to teach it). On test patients like those it was fitted on its
probabilities stayed calibrated where plain smoothing pulls them towards the region's mean; on
whole slides held out of training they did not, and it ranked no better than smoothing
(results/real_245). `experiment/study.py` judges it against the patch-only network and plain
smoothing on held-out whole slides.

Plain smoothing (P(IDC) averaged over the neighbours at one width) is the special case
`ContextStage.smoothing`; on whole slides held out of training it did as well as the learned
stage (results/real_245), and it is what the shipped model carries.

`smooth_on_grid` is a normalised Gaussian convolution (Knutsson & Westin 1993): the weighted sum
of the neighbours' P(IDC) divided by the sum of the weights of the neighbours that exist, so a
tile at the slide's edge or next to a missing one averages only over what is there, and an
isolated tile keeps its own P(IDC): every tile gets a prediction.

Grids: `rows` and `cols` are integer grid cells (one cell = one tile = one Kaggle patch's field of
view); `groups` (e.g. patients) keeps slides apart when one call holds several.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from idc_inference.calibration import Calibration
from idc_inference.errors import ContextStageError
from input_pipeline.windows import neighbour_fraction

# Beyond this many standard deviations a Gaussian's weight is below 1e-4 of its peak.
TRUNCATE = 4.0
# The widths (in tiles) the stage reads: the neighbours, the surroundings, the region.
CONTEXT_SIGMAS = (1.0, 2.0, 4.0)
_EPS = 1e-6


def _groups(groups: np.ndarray | None, n: int) -> np.ndarray:
    return np.zeros(n, np.int64) if groups is None else np.asarray(groups)


def smooth_on_grid(
    p_idc: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    sigma: float,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """P(IDC) of each tile averaged with its grid neighbours' under a Gaussian of `sigma` tiles.

    Tiles of different groups never mix. sigma 0 returns P(IDC) unchanged.
    """
    p = np.asarray(p_idc, np.float64)
    if sigma <= 0 or len(p) == 0:
        return p.astype(np.float32)
    rows, cols, groups = np.asarray(rows), np.asarray(cols), _groups(groups, len(p))
    out = np.empty_like(p)
    for group in np.unique(groups):
        mine = np.flatnonzero(groups == group)
        r, c = rows[mine] - rows[mine].min(), cols[mine] - cols[mine].min()
        values = np.zeros((r.max() + 1, c.max() + 1))
        present = np.zeros_like(values)
        # A tile listed twice on one cell (never in the Kaggle set or a tile grid) counts twice.
        np.add.at(values, (r, c), p[mine])
        np.add.at(present, (r, c), 1.0)
        options = dict(sigma=sigma, mode="constant", cval=0.0, truncate=TRUNCATE)
        weighted = ndimage.gaussian_filter(values, **options)
        weights = ndimage.gaussian_filter(present, **options)
        out[mine] = weighted[r, c] / weights[r, c]
    return out.astype(np.float32)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def context_features(
    p_idc: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    groups: np.ndarray | None = None,
    sigmas: Sequence[float] = CONTEXT_SIGMAS,
) -> np.ndarray:
    """[N, 2 + len(sigmas)] per tile: logit of its P(IDC), of its smoothed P(IDC) at each of
    `sigmas`, and the fraction of its 4 grid neighbours present (how much context there is)."""
    columns = [_logit(p_idc)]
    columns += [_logit(smooth_on_grid(p_idc, rows, cols, s, groups)) for s in sigmas]
    columns.append(neighbour_fraction(rows, cols, groups))
    return np.stack(columns, axis=1)


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


@dataclasses.dataclass(frozen=True)
class ContextStage:
    """The fitted second stage: `predict` maps a slide's tile P(IDC) to context P(IDC)."""

    weights: np.ndarray  # [2 + len(sigmas)]
    bias: float
    sigmas: tuple[float, ...] = CONTEXT_SIGMAS
    threshold: float = 0.5  # maximises balanced accuracy on the patients it was fitted on
    fitted_on: str = ""  # which patients, for the record
    kind: str = "logistic regression"  # or "smoothing" (`ContextStage.smoothing`)
    # Applied to the stage's output; `threshold` is then on the calibrated scale.
    calibration: Calibration = Calibration()

    @classmethod
    def smoothing(cls, sigma: float, threshold: float, fitted_on: str = "") -> ContextStage:
        """Plain smoothing as a stage: the logistic of the logit of P(IDC) smoothed at `sigma`
        is that smoothed P(IDC) (up to the logit's clipping at 1e-6)."""
        return cls(
            np.array([0.0, 1.0, 0.0]), 0.0, (float(sigma),), threshold, fitted_on, "smoothing"
        )

    def predict(
        self,
        p_idc: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        groups: np.ndarray | None = None,
    ) -> np.ndarray:
        z = context_features(p_idc, rows, cols, groups, self.sigmas) @ self.weights + self.bias
        return self.calibration.apply(1.0 / (1.0 + np.exp(-z)))

    def to_record(self) -> dict:
        """Plain JSON values for a weights record (`idc_inference.weights`)."""
        return {
            "kind": self.kind,
            "features": ["logit P(IDC)"]
            + [f"logit P(IDC) smoothed, sigma {s:g} tiles" for s in self.sigmas]
            + ["fraction of the 4 grid neighbours present"],
            "sigmas": list(self.sigmas),
            "weights": [float(w) for w in self.weights],
            "bias": float(self.bias),
            "threshold": float(self.threshold),
            "fitted_on": self.fitted_on,
            "calibration": self.calibration.to_record(),
        }

    @classmethod
    def from_record(cls, record: Mapping) -> ContextStage:
        try:
            sigmas = tuple(float(s) for s in record["sigmas"])
            weights = np.asarray(record["weights"], np.float64)
            stage = cls(
                weights,
                float(record["bias"]),
                sigmas,
                float(record["threshold"]),
                str(record.get("fitted_on", "")),
                str(record.get("kind", "logistic regression")),
                # Stages recorded before calibration existed output their P(IDC) as it is.
                Calibration.from_record(record.get("calibration")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ContextStageError(f"unreadable context stage ({error!r})") from None
        if weights.shape != (len(sigmas) + 2,) or not np.all(np.isfinite(weights)):
            raise ContextStageError(
                f"a context stage over {len(sigmas)} widths needs {len(sigmas) + 2} finite "
                f"weights, the record has {weights.tolist()}"
            )
        return stage


def fit_context_stage(
    p_idc: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    groups: np.ndarray | None = None,
    *,
    l2: float = 1.0,
    fitted_on: str = "",
) -> ContextStage:
    """The second stage fitted on these tiles (patients the patch network never trained on),
    with the threshold that maximises their balanced accuracy."""
    from evaluation import metrics  # noqa: PLC0415 (fitting only: the export venv has no trainer)

    features = context_features(p_idc, rows, cols, groups)
    weights, bias = fit_logistic_regression(features, labels, l2)
    stage = ContextStage(weights, bias, CONTEXT_SIGMAS, 0.5, fitted_on)
    threshold = metrics.best_threshold(labels, stage.predict(p_idc, rows, cols, groups))
    return dataclasses.replace(stage, threshold=float(threshold))
