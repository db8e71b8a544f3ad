"""Batching: (seed, epoch) determinism, resumption, process shards, exact padded evaluation."""

import numpy as np
import pytest

import input_pipeline
from input_pipeline.dataset import Split


@pytest.fixture(scope="module")
def split():
    n = 203
    rng = np.random.default_rng(0)
    return Split(
        image=rng.integers(0, 256, (n, 50, 50, 3), dtype=np.uint8),
        label=(rng.random(n) < 0.28).astype(np.int32),
        patient=np.zeros(n, np.int32),
        x=np.ones(n, np.int32),
        y=np.ones(n, np.int32),
        height=np.full(n, 50, np.int32),
        width=np.full(n, 50, np.int32),
        file_name=np.array([f"{i}.png" for i in range(n)]),
    )


def _indices(batches):
    return [b["index"] for b in batches]


def test_num_batches():
    assert input_pipeline.num_batches(203, 64, drop_remainder=True) == 3
    assert input_pipeline.num_batches(203, 64, drop_remainder=False) == 4
    assert input_pipeline.num_batches(192, 64, drop_remainder=False) == 3


def test_order_is_a_function_of_seed_and_epoch_and_resumable(split):
    run = lambda **kw: _indices(input_pipeline.iterate_batches(split, 32, **kw))  # noqa: E731
    first = run(seed=0, epoch=3)
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(run(seed=0, epoch=3)))
    assert not np.array_equal(first[0], run(seed=0, epoch=4)[0])
    assert not np.array_equal(first[0], run(seed=1, epoch=3)[0])
    resumed = run(seed=0, epoch=3, start_batch=4)
    assert len(resumed) == len(first) - 4
    for a, b in zip(first[4:], resumed):
        np.testing.assert_array_equal(a, b)
    # Training batches: a permutation without repeats, the remainder dropped.
    flat = np.concatenate(first)
    assert len(flat) == 6 * 32 and len(np.unique(flat)) == len(flat)


def test_batches_hold_the_rows_they_name(split):
    batch = next(input_pipeline.iterate_batches(split, 16, seed=0, epoch=0))
    np.testing.assert_array_equal(batch["image"], split.image[batch["index"]])
    np.testing.assert_array_equal(batch["label"], split.label[batch["index"]])
    assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32


def test_evaluation_sees_every_example_once_with_masked_padding(split):
    batches = list(input_pipeline.iterate_batches(split, 64, shuffle=False, drop_remainder=False))
    assert len(batches) == 4
    index = np.concatenate([b["index"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(index[mask], np.arange(203))
    assert np.all(index[~mask] == -1) and (~mask).sum() == 256 - 203


def test_processes_read_disjoint_shards_of_the_same_global_batch(split):
    whole = list(input_pipeline.iterate_batches(split, 32, seed=5, epoch=1, drop_remainder=False))
    shards = [
        list(
            input_pipeline.iterate_batches(
                split, 32, seed=5, epoch=1, drop_remainder=False, process_index=p, process_count=4
            )
        )
        for p in range(4)
    ]
    for b, global_batch in enumerate(whole):
        parts = [shards[p][b] for p in range(4)]
        assert all(part["image"].shape == (8, 50, 50, 3) for part in parts)
        for key in ("index", "mask", "label", "image"):
            np.testing.assert_array_equal(
                np.concatenate([part[key] for part in parts]), global_batch[key]
            )


def test_balanced_sampling_and_class_weights(split):
    batches = list(input_pipeline.iterate_batches(split, 200, seed=0, epoch=0, balanced=True))
    labels = np.concatenate(
        [
            np.concatenate(
                [
                    b["label"]
                    for b in input_pipeline.iterate_batches(
                        split, 200, seed=0, epoch=e, balanced=True
                    )
                ]
            )
            for e in range(20)
        ]
    )
    assert abs(labels.mean() - 0.5) < 0.04  # against about 0.28 without balancing
    assert len(batches) == 1
    weights = input_pipeline.class_weights(split.label)
    counts = np.bincount(split.label)
    np.testing.assert_allclose(weights, len(split.label) / (2 * counts), rtol=1e-6)
    np.testing.assert_allclose((weights[split.label]).mean(), 1.0, rtol=1e-6)
