"""Deterministic, resumable, sharded batching of an in-memory split.

The order of an epoch is a pure function of (seed, epoch): a run resumed at any batch sees exactly
the batches it would have seen. Every process computes the same global order and gathers only its
own rows of each global batch (process p takes rows [p * B/P, (p + 1) * B/P)), so several hosts
need no coordination. Evaluation is exact: with drop_remainder=False the last batch is padded to
full size, and `mask` marks the padding rows (index -1) for the metrics to ignore.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np


class _Indexable(Protocol):
    label: np.ndarray

    def __len__(self) -> int: ...

    def images(self, rows: np.ndarray) -> np.ndarray: ...


def num_batches(num_examples: int, global_batch_size: int, drop_remainder: bool) -> int:
    """Batches in one pass over `num_examples`: floor with drop_remainder, else ceil."""
    if drop_remainder:
        return num_examples // global_batch_size
    return -(-num_examples // global_batch_size)


def class_weights(label: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """Inverse-frequency class weights, normalised so that the mean weight over examples is 1.

    For the 72/28 imbalance of IDC: about (0.70, 1.76). Pass to a weighted cross-entropy.
    """
    counts = np.bincount(label, minlength=num_classes).astype(np.float64)
    weights = len(label) / (num_classes * np.maximum(counts, 1))
    return weights.astype(np.float32)


def epoch_order(
    label: np.ndarray,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    balanced: bool = False,
) -> np.ndarray:
    """Row indices of one epoch, a pure function of (seed, epoch).

    shuffle=False: 0..N-1. balanced=True: N draws with replacement where each class has equal
    probability (minority oversampled, majority undersampled), an alternative to class weights.
    """
    num = len(label)
    if not shuffle and not balanced:
        return np.arange(num)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 3]))
    if balanced:
        counts = np.bincount(label, minlength=2)
        present = counts > 0
        probability = np.where(present[label], 1.0 / (present.sum() * counts[label]), 0.0)
        return rng.choice(num, size=num, replace=True, p=probability / probability.sum())
    return rng.permutation(num)


def iterate_batches(
    split: _Indexable,
    global_batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    start_batch: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    balanced: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Yields this process's part of each global batch of one epoch, from `start_batch` on.

    Each batch: image uint8 [B/P, S, S, 3] (`split.images`: 50x50 patches, or their windows),
    label int32, mask bool (False on padding rows),
    index int32 (row in the split, -1 on padding), where B is the global batch size and P the
    process count.
    """
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} not divisible by {process_count}")
    per_process = global_batch_size // process_count
    order = epoch_order(split.label, seed, epoch, shuffle, balanced).astype(np.int32)
    total = num_batches(len(order), global_batch_size, drop_remainder)
    local = slice(process_index * per_process, (process_index + 1) * per_process)
    for batch in range(start_batch, total):
        rows = order[batch * global_batch_size : (batch + 1) * global_batch_size]
        if len(rows) < global_batch_size:  # the last, partial evaluation batch
            rows = np.concatenate([rows, np.full(global_batch_size - len(rows), -1, np.int32)])
        rows = rows[local]
        mask = rows >= 0
        safe = np.where(mask, rows, 0)  # padding rows repeat row 0, masked out
        yield {
            "image": split.images(safe),
            "label": np.where(mask, np.take(split.label, safe), 0).astype(np.int32),
            "mask": mask,
            "index": rows,
        }
