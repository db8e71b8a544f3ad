"""Evaluation loops on the host: score a split exactly once per example, and precise BN.

`predict_split` runs the jitted `steps.eval_step` over a split in padded, masked batches and
puts every P(IDC) back at its row; `evaluate_split` turns them into `metrics.full_report`.
`BatchNormRecalibration` recomputes the BatchNorm running statistics of the current weights on a
few training batches before an evaluation ("precise BN").
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

import input_pipeline
from evaluation import metrics
from input_pipeline.sharding import Sharding, to_host
from trainer import state as state_lib
from trainer import steps
from trainer.state import TrainState


def predict_split(
    jit_eval_step, state: TrainState, split, config: ml_collections.ConfigDict, sharding: Sharding
) -> tuple[np.ndarray, np.ndarray]:
    """P(IDC) and loss of every example of `split`, each exactly once, in the split's order."""
    num_examples = len(split)
    probabilities = np.full(num_examples, np.nan, np.float32)
    losses = np.full(num_examples, np.nan, np.float32)
    seen = np.zeros(num_examples, np.int32)
    batches = input_pipeline.iterate_batches(
        split,
        global_batch_size=config.eval_batch_size,
        seed=0,
        epoch=0,
        shuffle=False,
        drop_remainder=False,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    for local_batch in batches:
        batch = sharding.put_batch({k: local_batch[k] for k in (*steps.BATCH_KEYS, "index")})
        batch_probabilities, batch_losses = jit_eval_step(state, batch)
        mask, index = to_host(batch["mask"]), to_host(batch["index"])
        rows = index[mask]
        probabilities[rows] = to_host(batch_probabilities)[mask]
        losses[rows] = to_host(batch_losses)[mask]
        np.add.at(seen, rows, 1)
    if num_examples and not np.all(seen == 1):
        raise RuntimeError(
            f"evaluation saw {np.sum(seen == 0)} examples never and {np.sum(seen > 1)} more than "
            "once; batching must cover every example exactly once"
        )
    return probabilities, losses


def evaluate_split(
    jit_eval_step,
    state: TrainState,
    split,
    config: ml_collections.ConfigDict,
    sharding: Sharding,
    *,
    threshold: float = 0.5,
) -> tuple[dict, np.ndarray]:
    """(`metrics.full_report` of the split, P(IDC) of each of its examples)."""
    probabilities, losses = predict_split(jit_eval_step, state, split, config, sharding)
    report = metrics.full_report(
        split.label,
        probabilities,
        split.patient,
        threshold=threshold,
        mean_loss=float(np.mean(losses)) if len(losses) else float("nan"),
    )
    return report, probabilities


class BatchNormRecalibration:
    """A function (state, batches) -> state whose BatchNorm running statistics are recomputed.

    BatchNorm's running statistics are an exponential moving average that starts at mean 0,
    variance 1: after n steps a fraction momentum^n of that start is still in them (16% after
    180 steps at V1's 0.99, 84% at V2's 0.999), and they trail the weights as these change.
    Short runs therefore evaluate a network other than the one they train. Recomputing the
    statistics of the current weights on a few training batches ("precise BN", Wu & Johnson,
    "Rethinking 'Batch' in BatchNorm", 2021) removes both effects: each layer's mean and
    variance become the average of its batch statistics over the batches (inputs preprocessed
    as for evaluation). The weights are untouched.
    """

    def __init__(self, config: ml_collections.ConfigDict, sharding: Sharding):
        # With momentum 0 a training-mode forward pass leaves every running statistic equal to
        # the statistic of that batch.
        graph, _, _ = state_lib.split_model(
            nnx.eval_shape(
                lambda: state_lib.create_model(config, seed=config.seed, bn_momentum=0.0)
            )
        )
        self.sharding = sharding
        self._batch_statistics = jax.jit(
            functools.partial(
                steps.batch_statistics, graphdef=graph, preprocess_config=config.preprocess
            ),
            in_shardings=(sharding.replicated, sharding.batch),
            out_shardings=sharding.replicated,
        )

    def __call__(
        self, state: TrainState, local_batches: Iterable[Mapping[str, np.ndarray]]
    ) -> TrainState:
        total, count = None, 0
        for local_batch in local_batches:
            batch = self.sharding.put_batch({k: local_batch[k] for k in steps.BATCH_KEYS})
            stats = self._batch_statistics(state, batch)
            total = stats if total is None else jax.tree.map(jnp.add, total, stats)
            count += 1
        if count == 0:
            return state
        return state.replace(batch_stats=jax.tree.map(lambda t: t / count, total))
