"""A procedural, offline twin of the Kaggle IDC patch set (pure numpy, vectorised).

The real set (Janowczyk & Madabhushi 2016; Cruz-Roa et al. 2014) tiles 279 H&E-stained whole-slide
images into 50x50 patches labelled IDC-positive or negative. This module draws a set with the same
*structure* (patients, 1-based coordinates on the 50-pixel grid, about 28% positives varying per
patient and clustered on the slide, a few patches truncated at the slide border) and an H&E-like
*look*, so that every part of the project runs without the download.

How a patch is painted (`render_patches`), in optical density (OD) space, as stains absorb light:
- stain vectors: the Ruifrok & Johnston (2001) haematoxylin (purple, binds nuclei) and eosin (pink,
  binds stroma and cytoplasm) colours, perturbed per patient like slide-to-slide stain variation;
- stroma: eosin whose density follows smooth random fields (fibres and cell-poor areas);
- fat and background: smooth blobs with almost no stain (white);
- nuclei: haematoxylin ellipses on two layers. Small, round, dark nuclei (lymphocytes, normal
  epithelium) and large, irregular, vesicular nuclei with a dark rim (the tumour cells of IDC).
  A per-patch "grade" sets how many of each are present: IDC patches are dense with large nuclei,
  negative patches are often dense with small ones.

Both classes share the nuclear coverage and stain distribution, so the mean colour alone predicts
the label only weakly; the class is written in the size and shape of the nuclei (texture), which a
CNN sees and a mean-colour classifier does not (tested in tests/test_input_synthetic.py).

Everything is deterministic in the seed. Patches are rendered in fixed chunks of `RENDER_CHUNK`
examples, each with its own seed, so a patch's pixels do not depend on how many are drawn at once.
"""

from __future__ import annotations

import dataclasses
import io
import math
import pathlib
from collections.abc import Iterator

import numpy as np

from input_pipeline import published_splits
from input_pipeline.patches import PATCH_SIZE

RENDER_CHUNK = 512
# The real set: 277,524 patches, 78,786 positive (28.4%), 279 patients.
REAL_NUM_PATCHES = 277_524
REAL_NUM_PATIENTS = 279
REAL_POSITIVE_FRACTION = 78_786 / 277_524

# Working canvas: a multiple of both nucleus-cell sizes (8 and 16), cropped to 50x50 at a random
# offset so that the nucleus grid is not aligned with the patch.
_CANVAS = 64
# Optical-density (R, G, B) vectors of haematoxylin and eosin. Haematoxylin is Ruifrok & Johnston's
# (2001); their eosin (0.07, 0.99, 0.11) renders magenta, while the Kaggle patches' stroma is a
# salmon pink near RGB (225, 140, 170), i.e. OD direction (0.13, 0.83, 0.54), used here.
_HAEMATOXYLIN_OD = np.array([0.650, 0.704, 0.286], np.float32)
_EOSIN_OD = np.array([0.13, 0.83, 0.54], np.float32)


@dataclasses.dataclass(frozen=True)
class SyntheticSize:
    """How many patients and patches a named size of the synthetic set has."""

    num_patients: int
    num_patches: int


SIZES: dict[str, SyntheticSize] = {
    # For tests: a few hundred patches, compiled models see a handful of batches.
    "tiny": SyntheticSize(num_patients=8, num_patches=480),
    # The quickstart default: 5 epochs of MobileNet at 96 px in a few minutes on 2 CPU cores.
    "small": SyntheticSize(num_patients=30, num_patches=3_000),
    # The real set's size, for GPU benchmarks.
    "full": SyntheticSize(num_patients=REAL_NUM_PATIENTS, num_patches=REAL_NUM_PATCHES),
}


def synthetic_patient_ids(num_patients: int) -> np.ndarray:
    """Patient ids of the synthetic set: the published split ids first, then 20001, 20002, ...

    Reusing the published protocol's ids (interleaved in proportion to the 84/29/49 lists) lets
    `split="published"` run on the synthetic set too, even on its tiny size. The ids beyond the
    162 published ones stand for the 117 Kaggle patients those papers did not use.
    """
    lists = (published_splits.TRAIN, published_splits.VALIDATION, published_splits.TEST)
    # Interleave: sort by the relative position of each id within its own list.
    keyed = [
        ((rank + 0.5) / len(ids), which, pid)
        for which, ids in enumerate(lists)
        for rank, pid in enumerate(ids)
    ]
    ordered = [pid for _, _, pid in sorted(keyed)]
    extra = [20_001 + i for i in range(max(0, num_patients - len(ordered)))]
    return np.array((ordered + extra)[:num_patients], np.int32)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every synthetic patch sits, before any pixel is drawn (all arrays have length N)."""

    label: np.ndarray  # int32, 1 = IDC
    patient: np.ndarray  # int32
    x: np.ndarray  # int32, 1-based left column on the 50-pixel grid
    y: np.ndarray  # int32, 1-based top row
    height: np.ndarray  # int32, true height (< 50 at the bottom border of the slide)
    width: np.ndarray  # int32, true width (< 50 at the right border)

    def __len__(self) -> int:
        return len(self.label)

    @property
    def file_name(self) -> np.ndarray:
        """Kaggle file names: `<patient>_idx5_x<X>_y<Y>_class<C>.png`."""
        return np.array(
            [
                f"{p}_idx5_x{x}_y{y}_class{c}.png"
                for p, x, y, c in zip(self.patient, self.x, self.y, self.label)
            ]
        )


def _smooth_field(rng: np.random.Generator, batch: int, knots: int, size: int) -> np.ndarray:
    """Smooth random fields [batch, size, size] in about [-1.7, 1.7]: bilinear upsampling of noise.

    Written as two small matrix products (U @ G @ U^T), which vectorises over the batch.
    """
    positions = np.linspace(0.0, knots - 1.0, size, dtype=np.float32)
    lower = np.minimum(np.floor(positions).astype(int), knots - 2)
    frac = positions - lower
    upsample = np.zeros((size, knots), np.float32)
    upsample[np.arange(size), lower] = 1.0 - frac
    upsample[np.arange(size), lower + 1] = frac
    grid = rng.standard_normal((batch, knots, knots), dtype=np.float32)
    return np.einsum("ij,bjk,lk->bil", upsample, grid, upsample, optimize=True)


def make_layout(
    num_patients: int,
    num_patches: int,
    seed: int = 0,
    positive_fraction: float = REAL_POSITIVE_FRACTION,
) -> Layout:
    """Draws patients, their slide grids, tissue positions and labels (no pixels).

    - Patches per patient vary (Dirichlet shares, at least 20 each) and sum exactly to num_patches.
    - A patient's positive fraction is drawn around `positive_fraction` (about one patient in eight
      is almost free of IDC); positives form clusters on the slide (a thresholded smooth field), as
      tumour regions do.
    - Tissue is a blob on the patient's grid; the slide is cut 1-45 pixels into its last column and
      row, and 1 + Poisson(0.3% of the patches) tissue patches per patient lie there, truncated.
    """
    if num_patches < 20 * num_patients:
        raise ValueError(f"need at least 20 patches per patient, got {num_patches}/{num_patients}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    shares = rng.dirichlet(np.full(num_patients, 4.0))
    counts = 20 + np.floor(shares * (num_patches - 20 * num_patients)).astype(int)
    counts[: num_patches - counts.sum()] += 1  # distribute the rounding remainder
    patient_ids = synthetic_patient_ids(num_patients)

    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("label", "patient", "x", "y", "h", "w")}
    for patient_id, count in zip(patient_ids, counts):
        # Mean of the mixture ~ positive_fraction: 1/8 of patients ~1%, the rest Beta-distributed.
        if rng.random() < 0.125:
            fraction = rng.uniform(0.0, 0.02)
        else:
            mean = (positive_fraction - 0.125 * 0.01) / 0.875
            fraction = rng.beta(2.0 * mean / (1 - mean), 2.0)
        num_positive = int(round(fraction * count))
        num_border = min(count // 4, 1 + rng.poisson(0.003 * count))
        num_interior = count - num_border
        # An interior grid with about 60% tissue, plus the truncated last column and row.
        cols = max(3, math.ceil(math.sqrt(num_interior / 0.6 * rng.uniform(0.7, 1.4))))
        rows = max(3, math.ceil(num_interior / 0.6 / cols))
        tissue_field = _smooth_field(rng, 1, 5, max(rows, cols))[0, :rows, :cols]
        interior = np.argsort(-tissue_field.ravel(), kind="stable")[:num_interior]
        edge_cells = [(r, cols) for r in range(rows + 1)] + [(rows, c) for c in range(cols)]
        chosen_edges = rng.choice(len(edge_cells), size=num_border, replace=False)
        row = np.concatenate([interior // cols, [edge_cells[i][0] for i in chosen_edges]])
        col = np.concatenate([interior % cols, [edge_cells[i][1] for i in chosen_edges]])
        cut_width, cut_height = rng.integers(5, 50, size=2)  # true size of the last column/row
        # Labels: the highest values of a second smooth field over the grid become IDC.
        tumour_field = _smooth_field(rng, 1, 4, max(rows, cols) + 1)[0]
        score = tumour_field[row, col] + 0.05 * rng.standard_normal(count)
        label = np.zeros(count, np.int32)
        label[np.argsort(-score, kind="stable")[:num_positive]] = 1
        columns["label"].append(label)
        columns["patient"].append(np.full(count, patient_id, np.int32))
        columns["x"].append(1 + 50 * col)
        columns["y"].append(1 + 50 * row)
        columns["w"].append(np.where(col == cols, cut_width, PATCH_SIZE))
        columns["h"].append(np.where(row == rows, cut_height, PATCH_SIZE))
    cat = {k: np.concatenate(v).astype(np.int32) for k, v in columns.items()}
    return Layout(cat["label"], cat["patient"], cat["x"], cat["y"], cat["h"], cat["w"])


def _nucleus_layer(
    rng: np.random.Generator,
    occupancy: np.ndarray,
    cell: int,
    radius_range: tuple[float, float],
    elongation: float,
    irregularity: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Paints at most one nucleus per `cell`x`cell` square of the canvas, for a batch at once.

    Each nucleus stays within half a cell of its centre, and its centre lies in its own cell, so a
    pixel can only be covered by the nuclei of its own cell and of the three neighbours towards
    its quadrant: four evaluations per pixel instead of one per nucleus.

    Returns (coverage in [0, 1], normalised radius in [0, 1] inside the nucleus) as [B, C, C].
    """
    batch = occupancy.shape[0]
    grid = _CANVAS // cell
    shape = (batch, grid + 2, grid + 2)  # a ring of empty cells around the canvas
    present = np.zeros(shape, bool)
    present[:, 1:-1, 1:-1] = rng.random((batch, grid, grid)) < occupancy[:, None, None]
    present_weight = present.astype(np.float32)
    half = cell / 2.0
    radius = rng.uniform(*radius_range, size=shape).astype(np.float32)
    aspect = 1.0 + elongation * rng.random(shape, dtype=np.float32)
    bumps = irregularity * rng.random(shape, dtype=np.float32)
    # Keep the outline (radius * aspect * (1 + bumps)) inside half a cell.
    radius = np.minimum(radius, (half - 0.5) / (aspect * (1.0 + bumps)))
    angle = rng.uniform(0, 2 * np.pi, size=shape).astype(np.float32)
    origin = (np.arange(grid + 2, dtype=np.float32) - 1.0) * cell
    centre_y = origin[None, :, None] + rng.uniform(0.5, cell - 0.5, size=shape).astype(np.float32)
    centre_x = origin[None, None, :] + rng.uniform(0.5, cell - 0.5, size=shape).astype(np.float32)

    pixel = np.arange(_CANVAS, dtype=np.float32) + 0.5
    own = (np.arange(_CANVAS) // cell) + 1
    towards = np.where((np.arange(_CANVAS) % cell) < half, -1, 1)
    coverage = np.zeros((batch, _CANVAS, _CANVAS), np.float32)
    inner = np.ones((batch, _CANVAS, _CANVAS), np.float32)
    for dy in (0, 1):
        for dx in (0, 1):
            cy = (own + dy * towards)[:, None]
            cx = (own + dx * towards)[None, :]

            def take(param, cy=cy, cx=cx):
                return param[:, cy, cx]

            off_y = pixel[None, :, None] - take(centre_y)
            off_x = pixel[None, None, :] - take(centre_x)
            cos, sin = np.cos(take(angle)), np.sin(take(angle))
            along = off_x * cos + off_y * sin
            across = (-off_x * sin + off_y * cos) * take(aspect)
            distance = np.sqrt(along**2 + across**2) + 1e-6
            # A three-lobed outline r(theta) = radius * (1 + bumps * cos(3 theta)), via
            # cos(3 theta) = 4 cos^3 - 3 cos (no arctan2); the lobes follow the nucleus' angle.
            cos_theta = along / distance
            lobes = cos_theta * (4.0 * cos_theta * cos_theta - 3.0)
            outline = take(radius) * (1.0 + take(bumps) * lobes)
            rho = distance / outline
            cover = np.clip((1.0 - rho) * outline, 0.0, 1.0) * take(present_weight)  # soft edge
            closer = cover > coverage
            inner = np.where(closer, np.minimum(rho, 1.0), inner)
            coverage = np.maximum(coverage, cover)
    return coverage, inner


def _fibre_field(rng: np.random.Generator, batch: int, waves: int = 6) -> np.ndarray:
    """Streaks along one random direction per patch (collagen fibres): a sum of plane waves.

    The waves' wave vectors point within +-20 degrees of the patch's fibre normal, with periods of
    3-9 pixels, so their crests run as thin parallel fibres. Returns float32 [B, C, C] in [-1, 1].
    """
    pixel = np.arange(_CANVAS, dtype=np.float32)
    normal = rng.uniform(0, np.pi, (batch, 1)) + rng.uniform(-0.35, 0.35, (batch, waves))
    frequency = 2 * np.pi / rng.uniform(3.0, 9.0, (batch, waves))
    phase = rng.uniform(0, 2 * np.pi, (batch, waves)).astype(np.float32)
    field = np.zeros((batch, _CANVAS, _CANVAS), np.float32)
    for k in range(waves):
        fy = (frequency[:, k] * np.sin(normal[:, k])).astype(np.float32)[:, None, None]
        fx = (frequency[:, k] * np.cos(normal[:, k])).astype(np.float32)[:, None, None]
        field += np.cos(
            fy * pixel[None, :, None] + fx * pixel[None, None, :] + phase[:, k, None, None]
        )
    return field / waves


def render_patches(label: np.ndarray, stain: np.ndarray, seed: int) -> np.ndarray:
    """Paints H&E-like 50x50 RGB patches (uint8 [N, 50, 50, 3]) for the given labels.

    Args:
      label: int [N], 1 = IDC.
      stain: float32 [N, 2, 3], each patch's haematoxylin and eosin OD vectors (per patient).
      seed: seeds this call's random draws.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    batch = len(label)
    positive = label.astype(bool)

    def per_patch(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, (batch, 1, 1)).astype(np.float32)

    # The grade overlaps between classes: some negatives look atypical, some IDC patches sparse.
    grade = np.where(positive, rng.beta(5.0, 1.5, batch), rng.beta(1.2, 5.0, batch))
    cellular = rng.uniform(0.35, 1.0, batch)  # how cellular the patch is, independent of class
    small_nuclei, _ = _nucleus_layer(rng, cellular * (1.0 - 0.8 * grade), 8, (1.6, 3.0), 0.35, 0.08)
    large_nuclei, large_inner = _nucleus_layer(
        rng, cellular * (0.05 + 0.95 * grade), 16, (4.5, 7.5), 0.6, 0.25
    )

    fibres = _fibre_field(rng, batch)
    stroma_density = _smooth_field(rng, batch, 5, _CANVAS)
    # Fat and background: sharp-edged white blobs, absent from most patches.
    fat_level = per_patch(-6.0, 0.5)
    fat = 1.0 / (1.0 + np.exp(-6.0 * (_smooth_field(rng, batch, 5, _CANVAS) + fat_level)))

    eosin = 0.6 * np.clip(1.0 + 0.35 * fibres + 0.25 * stroma_density, 0.15, None)
    eosin *= per_patch(0.7, 1.3)
    haematoxylin = 0.08 * np.clip(1.0 + 0.3 * fibres, 0.0, None) * per_patch(0.6, 1.4)
    # Small nuclei: dense, uniform chromatin. Large nuclei: paler (vesicular), dark rim, grainy.
    grain = rng.uniform(0.7, 1.3, (batch, _CANVAS, _CANVAS)).astype(np.float32)
    small_stain = 1.2 * per_patch(0.8, 1.2)
    large_stain = (0.6 + 0.6 * large_inner**3) * grain * per_patch(0.8, 1.2)
    haematoxylin += small_nuclei * small_stain + large_nuclei * large_stain
    eosin *= 1.0 - 0.6 * np.maximum(small_nuclei, large_nuclei)
    tissue = 1.0 - fat
    haematoxylin *= tissue
    eosin *= tissue

    # Crop before the colour composition: only the 50x50 window is needed from here on.
    offset_y, offset_x = rng.integers(0, _CANVAS - PATCH_SIZE + 1, size=(2, batch))
    rows = (offset_y[:, None] + np.arange(PATCH_SIZE))[:, :, None]
    cols = (offset_x[:, None] + np.arange(PATCH_SIZE))[:, None, :]
    index = np.arange(batch)[:, None, None]
    haematoxylin = haematoxylin[index, rows, cols]
    eosin = eosin[index, rows, cols]
    optical_density = (
        haematoxylin[..., None] * stain[:, None, None, 0, :]
        + eosin[..., None] * stain[:, None, None, 1, :]
        + 0.03 * rng.standard_normal((batch, PATCH_SIZE, PATCH_SIZE, 3), dtype=np.float32)
    )
    illumination = rng.uniform(235.0, 250.0, (batch, 1, 1, 1)).astype(np.float32)
    rgb = illumination * np.exp(-np.maximum(optical_density, 0.0))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _patient_stains(patient_ids: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    """Per-patient H and E optical-density vectors: slide-to-slide stain variation."""
    stains = {}
    for patient_id in np.unique(patient_ids):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, int(patient_id)]))
        vectors = np.stack([_HAEMATOXYLIN_OD, _EOSIN_OD]) + rng.normal(0, 0.06, (2, 3))
        vectors *= rng.uniform(0.75, 1.3, (2, 1))  # overall stain strength of the slide
        stains[int(patient_id)] = np.clip(vectors, 0.02, None).astype(np.float32)
    return stains


def iter_chunks(
    num_patients: int,
    num_patches: int,
    seed: int = 0,
    positive_fraction: float = REAL_POSITIVE_FRACTION,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields the synthetic set in chunks of `RENDER_CHUNK` examples (dicts of column arrays).

    Columns: image (uint8 [n, 50, 50, 3], white beyond the true size), label, patient, x, y,
    height, width (int32 [n]) and file_name (str [n]), as the Kaggle builder produces them.
    """
    layout = make_layout(num_patients, num_patches, seed, positive_fraction)
    stains = _patient_stains(layout.patient, seed)
    file_names = layout.file_name
    for chunk_index, start in enumerate(range(0, len(layout), RENDER_CHUNK)):
        rows = slice(start, start + RENDER_CHUNK)
        stain = np.stack([stains[int(p)] for p in layout.patient[rows]])
        image = render_patches(layout.label[rows], stain, seed=seed * 1_000_003 + chunk_index)
        # Truncated border patches: white beyond the true size, as the Kaggle builder pads them.
        height, width = layout.height[rows], layout.width[rows]
        outside = (np.arange(PATCH_SIZE)[None, :, None] >= height[:, None, None]) | (
            np.arange(PATCH_SIZE)[None, None, :] >= width[:, None, None]
        )
        image[outside] = 255
        yield dict(
            image=image,
            label=layout.label[rows],
            patient=layout.patient[rows],
            x=layout.x[rows],
            y=layout.y[rows],
            height=height,
            width=width,
            file_name=file_names[rows],
        )


def generate(
    num_patients: int,
    num_patches: int,
    seed: int = 0,
    positive_fraction: float = REAL_POSITIVE_FRACTION,
) -> dict[str, np.ndarray]:
    """Generates the whole synthetic set in memory (see `iter_chunks` for the columns)."""
    chunks = list(iter_chunks(num_patients, num_patches, seed, positive_fraction))
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def generate_size(size: str, seed: int = 0) -> dict[str, np.ndarray]:
    """`generate` for a named size: "tiny", "small" or "full"."""
    spec = SIZES[size]
    return generate(spec.num_patients, spec.num_patches, seed)


def write_kaggle_layout(examples: dict[str, np.ndarray], out_dir: str | pathlib.Path) -> int:
    """Writes examples as the Kaggle folder layout `<patient>/<class>/<file_name>` of PNGs.

    Border patches are written at their true (truncated) size, as in the real archive, so that
    the Kaggle builder's padding is exercised. Returns the number of files written.
    """
    from PIL import Image  # noqa: PLC0415 (only needed here)

    out_dir = pathlib.Path(out_dir)
    for image, label, patient, height, width, name in zip(
        examples["image"],
        examples["label"],
        examples["patient"],
        examples["height"],
        examples["width"],
        examples["file_name"],
    ):
        folder = out_dir / str(patient) / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(image[:height, :width]).save(buffer, format="PNG")
        (folder / str(name)).write_bytes(buffer.getvalue())
    return len(examples["label"])
