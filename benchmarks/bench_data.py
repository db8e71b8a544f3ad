"""The in-memory synthetic patch set that both benchmark scripts feed (numpy only).

`input_pipeline.synthetic` paints about 500 patches/s on one core, so painting the Kaggle set's
277,524 would take ten minutes. Step times do not depend on pixel values, so the benchmarks paint
a few thousand and tile them; `synthetic_split` returns a note saying so for the results.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from input_pipeline import synthetic


@dataclasses.dataclass(frozen=True)
class InMemorySplit:
    """The two columns `input_pipeline.iterate_batches` reads, as `input_pipeline.Split` has."""

    image: np.ndarray  # uint8 [N, 50, 50, 3]
    label: np.ndarray  # int32 [N]

    def __len__(self) -> int:
        return len(self.label)

    def head(self, num: int) -> InMemorySplit:
        """The first `num` rows (views, no copy)."""
        return InMemorySplit(self.image[:num], self.label[:num])


def painted_patches(num: int, seed: int = 0, cache: str | None = None) -> tuple[dict, float]:
    """(`num` synthetic patches {"image", "label"}, seconds it took to paint them).

    With `cache` (an .npz path), patches painted by an earlier process with the same `num` and
    `seed` are read from it instead, and newly painted ones are written to it; run_all.sh uses it
    so that its several benchmark processes paint once.
    """
    if cache and os.path.exists(cache):
        with np.load(cache) as saved:
            if len(saved["label"]) == num and int(saved["seed"]) == seed:
                return {"image": saved["image"], "label": saved["label"]}, float(saved["seconds"])
    # At least 20 patches per patient (the generator's rule); at most the real 279 patients.
    num_patients = max(1, min(synthetic.REAL_NUM_PATIENTS, num // 100))
    start = time.perf_counter()
    base = synthetic.generate(num_patients, num, seed=seed)
    seconds = time.perf_counter() - start
    patches = {"image": base["image"], "label": base["label"]}
    if cache:
        np.savez(cache, seed=seed, seconds=seconds, **patches)
    return patches, seconds


def synthetic_split(
    num_images: int, base_patches: int, seed: int = 0, cache: str | None = None
) -> tuple[InMemorySplit, str]:
    """`num_images` patches of the synthetic twin: `base_patches` painted, then tiled.

    Returns the split and a note that says how it was made.
    """
    # The generator draws at least 20 patches per patient: paint no fewer, keep `num_images`.
    base_patches = max(20, min(base_patches, num_images))
    base, seconds = painted_patches(base_patches, seed, cache)
    rows = np.arange(num_images) % base_patches
    split = InMemorySplit(np.take(base["image"], rows, axis=0), base["label"][rows])
    note = f"{num_images:,} synthetic patches held in memory"
    if num_images > base_patches:
        full_minutes = num_images / (base_patches / seconds) / 60
        note += (
            f": {base_patches:,} painted by input_pipeline.synthetic in {seconds:.1f} s and tiled "
            f"x{num_images / base_patches:.1f} (painting all would take ~{full_minutes:.0f} min "
            "on one core; step times do not depend on pixel values)"
        )
    return split, note
