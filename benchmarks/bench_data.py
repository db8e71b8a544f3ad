"""The in-memory patch set both benchmark scripts feed: the real sample, tiled (numpy + PIL).

Step times do not depend on pixel values, so to reach the Kaggle set's size
(`input_pipeline.KAGGLE_PATCHES`, 277,524 patches) the benchmarks decode the real patches shipped
in data/idc_sample (or the first `base_patches` of them) and tile them; `sample_split` returns a
note saying so for the results.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from input_pipeline.patches import find_png_files, load_patches, parse_patch_name
from input_pipeline.sources import EMBEDDED_SAMPLE


@dataclasses.dataclass(frozen=True)
class InMemorySplit:
    """What `input_pipeline.iterate_batches` reads of a split, as `input_pipeline.Split` has it."""

    image: np.ndarray  # uint8 [N, 50, 50, 3]
    label: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.label)

    def images(self, rows: np.ndarray) -> np.ndarray:
        return np.take(self.image, rows, axis=0)

    def head(self, num: int) -> InMemorySplit:
        """The first `num` rows (views, no copy)."""
        return InMemorySplit(self.image[:num], self.label[:num])


def sample_patches(limit: int | None = None) -> tuple[dict[str, np.ndarray], float]:
    """({"image", "label"} of the first `limit` sample patches (all by default), seconds)."""
    files, _ = find_png_files([EMBEDDED_SAMPLE])
    files = files[:limit]
    start = time.perf_counter()
    images, labels = [], []
    for path, patch in load_patches(files):
        images.append(patch.image)
        labels.append(parse_patch_name(path.name).label)
    seconds = time.perf_counter() - start
    return {"image": np.stack(images), "label": np.asarray(labels, np.int32)}, seconds


def sample_split(num_images: int, base_patches: int | None = None) -> tuple[InMemorySplit, str]:
    """`num_images` patches: the sample's first `base_patches` (all by default), tiled.

    Returns the split and a note that says how it was made.
    """
    base, seconds = sample_patches(base_patches)
    count = len(base["label"])
    rows = np.arange(num_images) % count
    split = InMemorySplit(np.take(base["image"], rows, axis=0), base["label"][rows])
    note = f"{num_images:,} patches held in memory"
    if num_images > count:
        note += (
            f": {count:,} real patches of data/idc_sample (decoded in {seconds:.1f} s) tiled "
            f"x{num_images / count:.1f}; step times do not depend on pixel values"
        )
    return split, note
