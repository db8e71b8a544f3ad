"""What every training step needs, built in one place: state, optimiser and the jitted steps.

    training = compiled.build(config, sharding, steps_per_epoch=spe, train_labels=labels)
    state = training.train_step(training.state, batch)      # donates its input state

The loop, the benchmarks and the tests all start here, so the step they time or test is the
step that trains.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from evaluation import views
from input_pipeline.sharding import Sharding
from trainer import state as state_lib
from trainer import steps
from trainer.state import TrainState


@dataclasses.dataclass
class Training:
    """The initial (or given) state and the jitted steps of one config on one mesh."""

    state: TrainState
    tx: optax.GradientTransformation
    train_graph: nnx.GraphDef
    eval_graph: nnx.GraphDef
    weights_per_class: np.ndarray
    train_step: jax.stages.Wrapped  # (state, batch) -> state; the state is donated
    eval_step: jax.stages.Wrapped  # (state, batch) -> log P(class) [B, 2], batch-sharded


def build(
    config: ml_collections.ConfigDict,
    sharding: Sharding,
    *,
    steps_per_epoch: int = 1,
    train_labels: np.ndarray | None = None,
    state: TrainState | None = None,
) -> Training:
    """State, optimiser and jitted steps of `config`, with explicit shardings on `sharding`.

    `steps_per_epoch` sets the learning-rate schedule's length; `train_labels` the class weights
    of `config.class_weights` (equal weights without them); `state` replaces the initial state
    (put on this mesh), so that several meshes can start from one state.
    """
    tx = state_lib.create_optimizer(config, steps_per_epoch)
    if state is None:
        state, train_graph, eval_graph = state_lib.create_train_state(
            config, tx, sharding.replicated
        )
    else:
        train_graph, eval_graph, _ = state_lib.split_model(
            nnx.eval_shape(lambda: state_lib.create_model(config, seed=config.seed))
        )
        state = jax.device_put(state, sharding.replicated)
    weights = (
        state_lib.class_weights(config, train_labels)
        if train_labels is not None
        else np.ones(state_lib.NUM_CLASSES, np.float32)
    )
    jit_train_step = jax.jit(
        functools.partial(
            steps.train_step,
            graphdef=train_graph,
            tx=tx,
            preprocess_config=config.preprocess,
            label_smoothing=config.label_smoothing,
            weights_per_class=jnp.asarray(weights),
            augment_seed=config.seed,
        ),
        in_shardings=(sharding.replicated, sharding.batch),
        out_shardings=sharding.replicated,
        donate_argnums=0,
    )
    jit_eval_step = jax.jit(
        functools.partial(
            steps.eval_step,
            graphdef=eval_graph,
            preprocess_config=config.preprocess,
            views=views.ALL_VIEWS if config.eval_tta else (0,),
        ),
        in_shardings=(sharding.replicated, sharding.batch),
        out_shardings=sharding.batch,
    )
    return Training(
        state=state,
        tx=tx,
        train_graph=train_graph,
        eval_graph=eval_graph,
        weights_per_class=weights,
        train_step=jit_train_step,
        eval_step=jit_eval_step,
    )
