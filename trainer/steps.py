"""The jitted computations of a run, each a pure function of (state, batch).

`train_step` is one Adam update; `eval_step` scores a batch with the running BatchNorm
statistics; `batch_statistics` gives the BatchNorm statistics of one batch for precise-BN
recalibration. `trainer/loop.py` jits them with explicit shardings (`input_pipeline/sharding.py`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

import input_pipeline
from evaluation import views as views_lib
from trainer.state import TrainMetrics, TrainState

BATCH_KEYS = ("image", "label", "mask")  # what a train step reads of a batch


def cross_entropy_loss(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    label_smoothing: float = 0.0,
    weights_per_class: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(objective, per-example cross-entropy) from one log-softmax.

    The objective is the mean over unmasked examples of the softmax cross-entropy against the
    (optionally smoothed) one-hot targets, each example weighted by its class weight. The
    per-example cross-entropy is the plain one, -log p(label): the metric reported as "loss".
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=log_probs.dtype)
    per_example = -jnp.sum(one_hot * log_probs, axis=-1)
    objective = per_example
    if label_smoothing:
        targets = optax.smooth_labels(one_hot, label_smoothing)
        objective = -jnp.sum(targets * log_probs, axis=-1)
    weights = mask.astype(log_probs.dtype)
    if weights_per_class is not None:
        weights = weights * jnp.sum(one_hot * weights_per_class, axis=-1)
    loss = jnp.sum(objective * weights) / jnp.maximum(jnp.sum(mask), 1)
    return loss, per_example


def loss_and_gradients(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    preprocess_config: ml_collections.ConfigDict,
    label_smoothing: float,
    weights_per_class: jax.Array,
    augment_seed: int,
):
    """The training loss of one global batch and its gradients with respect to the parameters.

    Returns (loss, grads, (logits, per-example cross-entropy, new batch_stats, new rng_streams)).
    Pure: nothing is updated.
    """
    augment_rng = jax.random.fold_in(jax.random.key(augment_seed), state.step)
    images = input_pipeline.preprocess(
        batch["image"], preprocess_config, train=True, rng=augment_rng
    )

    def loss_fn(params, batch_stats, rng_streams):
        # Fresh variables, made inside this trace: NNX lets the model update its BatchNorm
        # statistics and dropout streams only in the trace that created them.
        batch_stats, rng_streams = jax.tree.map(jnp.asarray, (batch_stats, rng_streams))
        model = nnx.merge(graphdef, params, batch_stats, rng_streams)
        logits = model(images)
        loss, per_example = cross_entropy_loss(
            logits,
            batch["label"],
            batch["mask"],
            label_smoothing=label_smoothing,
            weights_per_class=weights_per_class,
        )
        _, _, new_batch_stats, new_rng_streams = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        return loss, (logits, per_example, new_batch_stats, new_rng_streams)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, state.rng_streams
    )
    return loss, grads, aux


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    tx: optax.GradientTransformation,
    **loss_options,
) -> TrainState:
    """One Adam update on one global batch. Pure: (state, batch) -> state.

    `loss_options` are those of `loss_and_gradients`. A non-finite loss leaves the state as it
    was (so the last checkpoint and the state stay good) and records the step in
    `nonfinite_step`; the host loop stops the run with an error naming it.
    """
    loss, grads, (logits, per_example, batch_stats, rng_streams) = loss_and_gradients(
        state, batch, **loss_options
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    step_metrics = TrainMetrics.single_from_model_output(
        loss=per_example, correct=correct, mask=batch["mask"]
    )
    # The running sums keep their dtypes (a float64 run would otherwise promote them).
    merged_metrics = jax.tree.map(
        lambda new, old: new.astype(old.dtype),
        state.epoch_metrics.merge(step_metrics),
        state.epoch_metrics,
    )
    finite = jnp.isfinite(loss)
    keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, batch_stats, rng_streams, opt_state = keep_if_finite(
        (params, batch_stats, rng_streams, opt_state),
        (state.params, state.batch_stats, state.rng_streams, state.opt_state),
    )
    nonfinite_step = jnp.where(
        finite | (state.nonfinite_step >= 0), state.nonfinite_step, state.step + 1
    )
    return TrainState(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        rng_streams=rng_streams,
        opt_state=opt_state,
        epoch_metrics=keep_if_finite(merged_metrics, state.epoch_metrics),
        nonfinite_step=nonfinite_step,
    )


def eval_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    preprocess_config: ml_collections.ConfigDict,
    views: tuple[int, ...] = (0,),
) -> tuple[jax.Array, jax.Array]:
    """P(IDC) and the cross-entropy of every example of the batch (running BN statistics),
    averaged over the dihedral `views` (test-time augmentation when there are several)."""
    model = nnx.merge(graphdef, state.params, state.batch_stats, state.rng_streams)
    log_probs = views_lib.mean_log_probabilities(model, batch["image"], preprocess_config, views)
    per_example = -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=-1)[:, 0]
    return jnp.exp(log_probs[:, 1]), per_example


def batch_statistics(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    preprocess_config: ml_collections.ConfigDict,
) -> nnx.State:
    """Every BatchNorm layer's mean and variance over this batch, inputs as for evaluation.

    `graphdef` must be the training graph of a model built with BatchNorm momentum 0: a
    training-mode forward pass then leaves each running statistic equal to the batch's.
    """
    images = input_pipeline.preprocess(batch["image"], preprocess_config, train=False, rng=None)
    batch_stats, rng_streams = jax.tree.map(jnp.asarray, (state.batch_stats, state.rng_streams))
    model = nnx.merge(graphdef, state.params, batch_stats, rng_streams)
    model(images)
    return nnx.state(model, nnx.BatchStat)
