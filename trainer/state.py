"""What a run trains: the network, its optimiser, and the state a train step reads and writes."""

# No `from __future__ import annotations`: clu's metrics.Collection reads real annotations.

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import nnx

import input_pipeline
import mobilenets
from mobilenets import configured

NUM_CLASSES = 2  # negative, IDC


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    accuracy: clu_metrics.Average.from_output("correct")


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes; a checkpoint saves exactly this."""

    step: jax.Array  # completed optimiser updates
    params: nnx.State
    batch_stats: nnx.State
    rng_streams: nnx.State  # the dropout RNG streams of the model
    opt_state: optax.OptState
    epoch_metrics: TrainMetrics  # running sums over the current epoch
    nonfinite_step: jax.Array  # first update whose loss was NaN/Inf, -1 while none


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    """ "auto": bfloat16 on accelerators, float32 on the CPU (`mobilenets.configured`)."""
    return configured.compute_dtype(config)


def create_model(config: ml_collections.ConfigDict, *, seed: int, **overrides) -> nnx.Module:
    """The configured network; `overrides` replace keyword arguments of `mobilenets.create`.

    Parameters are float32, or float64 when the run computes in float64.
    """
    kwargs = dict(
        configured.network_kwargs(config, num_classes=NUM_CLASSES),
        rngs=nnx.Rngs(params=seed, dropout=seed + 1),
    )
    return mobilenets.create(config.model.name, **{**kwargs, **overrides})


def model_profile(config: ml_collections.ConfigDict) -> mobilenets.Profile:
    """Parameters, BatchNorm statistics and multiply-adds per image of the config's network."""
    return mobilenets.profile(
        config.model.name,
        alpha=config.model.alpha,
        image_size=config.preprocess.image_size,
        num_classes=NUM_CLASSES,
    )


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.GraphDef, tuple]:
    """(train graph, eval graph, (params, batch_stats, rng_streams)) of an NNX model."""
    model.eval()
    eval_graph = nnx.graphdef(model)
    model.train()
    train_graph, params, batch_stats, rng_streams = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    return train_graph, eval_graph, (params, batch_stats, rng_streams)


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
    if config.schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    if config.schedule == "warmup_cosine":
        total_steps = max(config.num_epochs * steps_per_epoch, 1)
        warmup_steps = int(config.warmup_epochs * steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=config.learning_rate,
            warmup_steps=min(warmup_steps, total_steps - 1),
            decay_steps=total_steps,
        )
    raise ValueError(
        f"config.schedule must be 'constant' or 'warmup_cosine', not {config.schedule!r}"
    )


def create_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
    """Adam (the paper), or AdamW when weight decay is asked for (kernels only, not BN/bias)."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.weight_decay > 0:
        decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
    return optax.adam(schedule)


def class_weights(config: ml_collections.ConfigDict, train_labels: np.ndarray) -> np.ndarray:
    """Per-class loss weights: ones ("none") or inverse class frequency ("balanced")."""
    if config.class_weights == "none":
        return np.ones(NUM_CLASSES, np.float32)
    if config.class_weights == "balanced":
        return input_pipeline.class_weights(train_labels, NUM_CLASSES)
    raise ValueError(
        f"config.class_weights must be 'none' or 'balanced', not {config.class_weights!r}"
    )


def create_train_state(
    config: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    replicated: jax.sharding.Sharding | None = None,
) -> tuple[TrainState, nnx.GraphDef, nnx.GraphDef]:
    """The initial state, made by a jitted function directly in its (replicated) sharding.

    Every process runs the same initialisation from the same seed, so no process has to send
    parameters to the others; the graph definitions come from an abstract (shape-only) model.
    """
    train_graph, eval_graph, _ = split_model(
        nnx.eval_shape(lambda: create_model(config, seed=config.seed))
    )

    def init() -> TrainState:
        _, _, (params, batch_stats, rng_streams) = split_model(
            create_model(config, seed=config.seed)
        )
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            rng_streams=rng_streams,
            opt_state=tx.init(params),
            epoch_metrics=TrainMetrics.empty(),
            nonfinite_step=jnp.full((), -1, jnp.int32),
        )

    state = jax.jit(init, out_shardings=replicated)()
    return state, train_graph, eval_graph


def reset_epoch_metrics(state: TrainState) -> TrainState:
    return state.replace(epoch_metrics=TrainMetrics.empty())
