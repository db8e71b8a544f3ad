"""Lesion-level sensitivity: which labelled IDC regions of a slide the map finds, by size.

    lesions = labelled_lesions(table, calls)              # one row per labelled IDC region
    rows = sensitivity_by_size(lesions, slides)          # per SIZE_BINS, bootstrap over slides
    false = false_positive_regions(table, calls)          # per slide: called regions without IDC

A patch-level figure weighs a region by its patches: a 200-patch tumour counts 200 times, a
single-patch focus once. A pathologist asks the other question too: of the foci on a slide, how
many does the map point at? A labelled IDC region is a connected group of labelled IDC patches
on the slide's 50-pixel grid, 4-connected by default (patches sharing an edge; the map's own
regions, `idc_inference.regions`, are 4-connected too) or 8-connected (corners as well). A
region is detected when at least `min_fraction` of its patches are called (at least one patch
whatever the fraction). A false-positive region is a connected group of called patches that
holds no labelled IDC patch. Patches missing from the grid (not in the data set) are gaps.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from evaluation import uncertainty
from experiment.predictions import PatchPredictions
from experiment.slide_context import grid_cells

SIZE_BINS = ((1, 1), (2, 4), (5, 19), (20, math.inf))  # lesion sizes in patches, inclusive
_STEPS = {4: ((1, 0), (0, 1)), 8: ((1, 0), (0, 1), (1, 1), (1, -1))}


def grid_components(
    rows: np.ndarray, cols: np.ndarray, groups: np.ndarray, connectivity: int = 4
) -> np.ndarray:
    """A component id per cell (0, 1, ... in order of first appearance): cells of one group
    joined when they are grid neighbours (4: sharing an edge; 8: an edge or a corner)."""
    if connectivity not in _STEPS:
        raise ValueError(f"connectivity must be 4 or 8, not {connectivity}")
    keys = list(
        zip(np.asarray(groups).tolist(), np.asarray(rows).tolist(), np.asarray(cols).tolist())
    )
    where = {key: i for i, key in enumerate(keys)}
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (g, r, c) in enumerate(keys):
        for dr, dc in _STEPS[connectivity]:
            j = where.get((g, r + dr, c + dc))
            if j is not None:
                parent[root(i)] = root(j)
    roots = np.array([root(i) for i in range(len(keys))], np.int64)
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber in order of first appearance
    return order[inverse]


@dataclasses.dataclass(frozen=True)
class Lesions:
    """Labelled IDC regions: their slide, size in patches, and patches called IDC."""

    patient: np.ndarray
    size: np.ndarray
    called: np.ndarray

    def detected(self, min_fraction: float = 0.0) -> np.ndarray:
        needed = np.maximum(1, np.ceil(min_fraction * self.size - 1e-9))
        return self.called >= needed


def _components_of(table: PatchPredictions, chosen: np.ndarray, connectivity: int):
    rows, cols = grid_cells(table.x, table.y)
    return grid_components(rows[chosen], cols[chosen], table.patient[chosen], connectivity)


def labelled_lesions(table: PatchPredictions, calls: np.ndarray, connectivity: int = 4) -> Lesions:
    """The labelled IDC regions of every slide (patient) of `table`, with how many of each
    region's patches `calls` (bool per patch) calls IDC."""
    idc = np.flatnonzero(np.asarray(table.label) == 1)
    component = _components_of(table, idc, connectivity)
    count = int(component.max()) + 1 if len(component) else 0
    first = np.full(count, -1)
    first[component[::-1]] = idc[::-1]
    return Lesions(
        patient=np.asarray(table.patient)[first] if count else np.zeros(0, np.int64),
        size=np.bincount(component, minlength=count),
        called=np.bincount(component, np.asarray(calls)[idc], minlength=count).astype(np.int64),
    )


def false_positive_regions(
    table: PatchPredictions, calls: np.ndarray, connectivity: int = 4
) -> dict[int, int]:
    """Per slide (patient, all of `table`'s), the connected regions of called patches that
    hold no labelled IDC patch."""
    called = np.flatnonzero(np.asarray(calls, bool))
    component = _components_of(table, called, connectivity)
    count = int(component.max()) + 1 if len(component) else 0
    holds_idc = np.bincount(component, np.asarray(table.label)[called], minlength=count) > 0
    patient_of = np.zeros(count, np.int64)
    patient_of[component] = np.asarray(table.patient)[called]
    false = patient_of[~holds_idc]
    return {int(p): int(np.sum(false == p)) for p in np.unique(table.patient)}


def sensitivity_by_size(
    lesions: Lesions,
    slides: np.ndarray,
    *,
    min_fraction: float = 0.0,
    num_resamples: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """Per size bin: lesions, detected, sensitivity and its percentile interval from the
    bootstrap over `slides` (lesions of one slide are drawn together)."""
    slides = np.unique(slides)
    detected = lesions.detected(min_fraction)
    which = np.searchsorted(slides, lesions.patient)
    counts = uncertainty.resample_counts(len(slides), num_resamples, seed).astype(np.float64)
    out = []
    for low, high in SIZE_BINS:
        mine = (lesions.size >= low) & (lesions.size <= high)
        found = np.bincount(which[mine], detected[mine], minlength=len(slides))
        total = np.bincount(which[mine], minlength=len(slides)).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            replicates = (counts @ found) / (counts @ total)
        replicates = replicates[~np.isnan(replicates)]
        interval = np.percentile(replicates, [2.5, 97.5]) if len(replicates) else (np.nan,) * 2
        out.append(
            {
                "sizes": (low, high),
                "lesions": int(mine.sum()),
                "detected": int(detected[mine].sum()),
                "sensitivity": float(found.sum() / total.sum()) if total.sum() else np.nan,
                "low": float(interval[0]),
                "high": float(interval[1]),
                "slides": int(np.sum(total > 0)),
            }
        )
    return out
