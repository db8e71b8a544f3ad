"""The Kaggle grid: where each patch lies on its slide, its neighbours, and the window of tissue
around it that a neighbourhood network sees.

Every Kaggle patch is one cell of its slide's 50-pixel grid (the file name gives the 1-based
top-left pixel: X - 1 and Y - 1 are multiples of 50). A pathologist reads a region at low power
before a cell at high power; IDC is a region, and a 50x50 patch (200 um) shows too little of the
architecture around it. A *window* of `size` x `size` patches centred on a patch (3: the patch
and its 8 neighbours, 600 um) shows it with its surroundings; the label stays the centre's.

    rows = window_rows(patient, x, y, size=3)     # int64 [N, 9]: the row of each cell, -1 if none
    windows = assemble_windows(images, rows[batch])   # uint8 [B, 150, 150, 3]

A cell that holds no patch is white (`patches.WHITE`), as the slide program sees glass, and as a
slide rebuilt from the patches shows it (`data/make_demo_slide.py`): the Kaggle set has no patch
where its authors found no tissue, and the scattered patients of the shared subset miss most of
their neighbours. Border patches cut short by the slide edge are already padded with white.

Patches of different patients never meet in a window: each patient is one slide.
"""

from __future__ import annotations

import numpy as np

from input_pipeline.patches import PATCH_SIZE, WHITE

GRID = PATCH_SIZE  # pixels between neighbouring cells of the Kaggle grid
# Patients whose patches have at least this share of their 4 grid neighbours present are whole
# slides (the shared data's 27 whole slides: 77-95%; its scattered patients: 20% on average).
WHOLE_SLIDE_NEIGHBOURS = 0.5
_FOUR_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def window_size(config) -> int:
    """Patches a side of a run's input (its `data.window`; 1 for runs made before it existed)."""
    return int(config.data.get("window", 1))


def grid_cells(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of each patch on its slide's grid, from the 1-based top-left pixels."""
    return (np.asarray(y, np.int64) - 1) // GRID, (np.asarray(x, np.int64) - 1) // GRID


def _cell_keys(groups: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """One int64 per (group, row, col); rows and cols may be negative (a neighbour off the grid)."""
    offset = 1 << 20  # grids are far smaller than a million cells a side
    return (np.asarray(groups, np.int64) << 42) | ((rows + offset) << 21) | (cols + offset)


def neighbour_rows(
    groups: np.ndarray, rows: np.ndarray, cols: np.ndarray, offsets: list[tuple[int, int]]
) -> np.ndarray:
    """int64 [N, len(offsets)]: for each item and (d_row, d_col), the index of the item of the
    same group on that cell, or -1 when there is none. Vectorised: one sort, one search per
    offset (a full Kaggle set's 277,524 patches x 25 offsets take well under a second)."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    keys = _cell_keys(groups, rows, cols)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    out = np.full((len(keys), len(offsets)), -1, np.int64)
    for k, (d_row, d_col) in enumerate(offsets):
        wanted = _cell_keys(groups, rows + d_row, cols + d_col)
        at = np.minimum(np.searchsorted(sorted_keys, wanted), max(len(keys) - 1, 0))
        if len(keys):
            found = sorted_keys[at] == wanted
            out[found, k] = order[at[found]]
    return out


def window_offsets(size: int) -> list[tuple[int, int]]:
    """The (d_row, d_col) of a `size` x `size` window's cells, row by row, centre in the middle."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"a window is an odd number of patches a side (1, 3, 5, ...), got {size}")
    half = size // 2
    return [(dr, dc) for dr in range(-half, half + 1) for dc in range(-half, half + 1)]


def centre_of(windows: np.ndarray) -> np.ndarray:
    """The centre patches [B, 50, 50, 3] of windows [B, 50 k, 50 k, 3] (or the patches, k = 1)."""
    size = windows.shape[1] // PATCH_SIZE
    start = (size // 2) * PATCH_SIZE
    return windows[:, start : start + PATCH_SIZE, start : start + PATCH_SIZE]


def window_rows(patient: np.ndarray, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """int64 [N, size * size]: the rows of each patch's window, row by row, -1 where no patch."""
    rows, cols = grid_cells(x, y)
    return neighbour_rows(patient, rows, cols, window_offsets(size))


def assemble_windows(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """uint8 [B, size * 50, size * 50, 3]: the patches `images[rows]` laid out as windows.

    `rows` is int [B, size * size] (`window_rows`); a -1 is a white cell."""
    batch, cells = rows.shape
    size = int(round(cells**0.5))
    if size * size != cells:
        raise ValueError(f"a window has a square number of cells, got {cells}")
    patch = images.shape[1]
    gathered = np.take(images, np.maximum(rows, 0).reshape(-1), axis=0)
    gathered[rows.reshape(-1) < 0] = WHITE
    gathered = gathered.reshape(batch, size, size, patch, patch, images.shape[-1])
    return gathered.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, size * patch, size * patch, images.shape[-1]
    )


def neighbour_fraction(
    rows: np.ndarray, cols: np.ndarray, groups: np.ndarray | None = None
) -> np.ndarray:
    """Per item, the fraction of its 4 grid neighbours that are present (a slide's density)."""
    groups = np.zeros(len(rows), np.int64) if groups is None else np.asarray(groups)
    return (neighbour_rows(groups, rows, cols, list(_FOUR_NEIGHBOURS)) >= 0).mean(axis=1)


def patient_density(patient: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[int, float]:
    """Per patient, the mean share of its patches' 4 grid neighbours that are present."""
    rows, cols = grid_cells(x, y)
    density = neighbour_fraction(rows, cols, patient)
    patients, inverse = np.unique(patient, return_inverse=True)
    means = np.bincount(inverse, weights=density) / np.bincount(inverse)
    return {int(p): float(m) for p, m in zip(patients, means)}


def whole_slide_patients(patient: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The patients whose patches are whole slides (`WHOLE_SLIDE_NEIGHBOURS`), sorted."""
    density = patient_density(patient, x, y)
    return np.array(sorted(p for p, d in density.items() if d >= WHOLE_SLIDE_NEIGHBOURS), np.int64)
