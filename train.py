"""Training library: the paper's recipe as small functions, driven by `train_and_evaluate`.

The jitted steps are pure functions of (`TrainState`, batch). The NNX model is split once into a
static graph definition (one for training, one for evaluation: BatchNorm and dropout modes are
static) and its variables, which live in `TrainState` next to the optax state. The batch is
sharded over a 1-D `data` mesh of every device of every process and the state is replicated,
so the same code runs on one CPU, eight GPUs, or many hosts: XLA inserts the cross-device
reductions (BatchNorm statistics, gradients, metric sums) that the global-batch maths implies.
"""

# No `from __future__ import annotations`: clu's metrics.Collection reads real annotations.

import dataclasses
import functools
import itertools
import json
import math
import pathlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics
from clu import parameter_overview
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import checkpoints
import evaluation
import input_pipeline
import mobilenets
import reporting

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


# ----------------------------------------------------------------------------- construction


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
    if config.compute_dtype == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(config.compute_dtype)


def create_model(config: ml_collections.ConfigDict, *, seed: int, **overrides) -> nnx.Module:
    """The configured network; `overrides` replace keyword arguments of `mobilenets.create`."""
    model_config = config.model
    kwargs = dict(
        num_classes=NUM_CLASSES,
        alpha=model_config.alpha,
        dropout_rate=model_config.dropout_rate,
        bn_momentum=model_config.bn_momentum,
        bn_epsilon=model_config.bn_epsilon,
        implementation=model_config.implementation,
        dtype=compute_dtype(config),
        rngs=nnx.Rngs(params=seed, dropout=seed + 1),
    )
    return mobilenets.create(model_config.name, **{**kwargs, **overrides})


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
    sharding: "Sharding | None" = None,
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

    out_shardings = sharding.replicated if sharding is not None else None
    state = jax.jit(init, out_shardings=out_shardings)()
    return state, train_graph, eval_graph


def reset_epoch_metrics(state: TrainState) -> TrainState:
    return state.replace(epoch_metrics=TrainMetrics.empty())


# ----------------------------------------------------------------------------- steps


def cross_entropy_loss(
    logits: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    label_smoothing: float = 0.0,
    weights_per_class: jax.Array | None = None,
) -> jax.Array:
    """Mean softmax cross-entropy over the unmasked examples, optionally smoothed and weighted."""
    one_hot = jax.nn.one_hot(labels, logits.shape[-1])
    targets = optax.smooth_labels(one_hot, label_smoothing) if label_smoothing else one_hot
    per_example = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    weights = mask.astype(jnp.float32)
    if weights_per_class is not None:
        weights = weights * jnp.sum(one_hot * weights_per_class, axis=-1)
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(mask), 1)


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

    Returns (loss, grads, (logits, new batch_stats, new rng_streams)). Pure: nothing is updated.
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
        loss = cross_entropy_loss(
            logits,
            batch["label"],
            batch["mask"],
            label_smoothing=label_smoothing,
            weights_per_class=weights_per_class,
        )
        _, _, new_batch_stats, new_rng_streams = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        return loss, (logits, new_batch_stats, new_rng_streams)

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

    `loss_options` are those of `loss_and_gradients`.
    """
    loss, grads, (logits, batch_stats, rng_streams) = loss_and_gradients(
        state, batch, **loss_options
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    per_example_loss = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["label"]
    )
    step_metrics = TrainMetrics.single_from_model_output(
        loss=per_example_loss, correct=correct, mask=batch["mask"]
    )
    # A non-finite loss leaves the state as it was (so the last checkpoint and the state stay
    # good) and records the step; the host loop stops the run with an error naming it.
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
        epoch_metrics=jax.lax.cond(
            finite,
            lambda: state.epoch_metrics.merge(step_metrics),
            lambda: state.epoch_metrics,
        ),
        nonfinite_step=nonfinite_step,
    )


def eval_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    graphdef: nnx.GraphDef,
    preprocess_config: ml_collections.ConfigDict,
) -> tuple[jax.Array, jax.Array]:
    """P(IDC) and the cross-entropy of every example of the batch (running BN statistics)."""
    images = input_pipeline.preprocess(batch["image"], preprocess_config, train=False, rng=None)
    model = nnx.merge(graphdef, state.params, state.batch_stats, state.rng_streams)
    logits = model(images).astype(jnp.float32)
    per_example_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return jax.nn.softmax(logits)[:, 1], per_example_loss


# ----------------------------------------------------------------------------- sharding


@dataclasses.dataclass(frozen=True)
class Sharding:
    """A 1-D `data` mesh over every device of every process."""

    mesh: Mesh

    @classmethod
    def over_all_devices(cls) -> "Sharding":
        # Auto axes: shardings are given at the jit boundary and XLA propagates them inside.
        mesh = jax.make_mesh(
            (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
        )
        return cls(mesh)

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def put_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global arrays assembled from each process's own rows of the batch."""
        return {
            key: jax.make_array_from_process_local_data(self.batch, value)
            for key, value in local_batch.items()
        }

    def check_batch_size(self, global_batch_size: int, name: str) -> None:
        if global_batch_size % jax.device_count():
            raise ValueError(
                f"{name}={global_batch_size} must be divisible by the number of devices "
                f"({jax.device_count()}) so that every device gets the same share."
            )


def to_host(array: jax.Array) -> np.ndarray:
    """The whole (global) array of a batch-sharded result on every host."""
    if array.is_fully_addressable:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def replicated_to_host(tree):
    """NumPy copies of replicated arrays: every process holds them whole, no communication."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def epoch_metrics_on_host(state: TrainState) -> dict[str, float]:
    metrics = replicated_to_host(state.epoch_metrics)
    return {k: float(v) for k, v in metrics.compute().items()}


def load_dataset_once(data_config: ml_collections.ConfigDict):
    """Loads the data set; with several processes, process 0 builds and caches it first."""
    if jax.process_count() == 1:
        return input_pipeline.load_dataset(data_config)
    dataset = input_pipeline.load_dataset(data_config) if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("dataset prepared by process 0")
    if dataset is None:
        dataset = input_pipeline.load_dataset(data_config)
    return dataset


def compile_steps(
    config: ml_collections.ConfigDict,
    *,
    train_graph: nnx.GraphDef,
    eval_graph: nnx.GraphDef,
    tx: optax.GradientTransformation,
    weights_per_class: np.ndarray,
    sharding: Sharding,
):
    """The jitted train step (state donated) and eval step, with explicit shardings."""
    jit_train_step = jax.jit(
        functools.partial(
            train_step,
            graphdef=train_graph,
            tx=tx,
            preprocess_config=config.preprocess,
            label_smoothing=config.label_smoothing,
            weights_per_class=jnp.asarray(weights_per_class),
            augment_seed=config.seed,
        ),
        in_shardings=(sharding.replicated, sharding.batch),
        out_shardings=sharding.replicated,
        donate_argnums=0,
    )
    jit_eval_step = jax.jit(
        functools.partial(eval_step, graphdef=eval_graph, preprocess_config=config.preprocess),
        in_shardings=(sharding.replicated, sharding.batch),
        out_shardings=sharding.batch,
    )
    return jit_train_step, jit_eval_step


def make_batch_stats_recalibration(config: ml_collections.ConfigDict, sharding: "Sharding"):
    """A function (state, batches) -> state whose BatchNorm running statistics are recomputed.

    BatchNorm's running statistics are an exponential moving average that starts at mean 0,
    variance 1: after n steps a fraction momentum^n of that start is still in them (16% after
    180 steps at V1's 0.99, 84% at V2's 0.999), and they trail the weights as these change. Short
    runs therefore evaluate a network other than the one they train. Recomputing the statistics
    of the current weights on a few training batches ("precise BN", Wu & Johnson, "Rethinking
    'Batch' in BatchNorm", 2021) removes both effects: each layer's mean and variance become the
    average of its batch statistics over the batches (inputs preprocessed as for evaluation).
    The weights are untouched. Off by default (config.bn_recalibration_batches = 0): the paper
    used Keras' moving averages.
    """
    # With momentum 0 a training-mode forward pass leaves every running statistic equal to the
    # statistic of that batch.
    graph, _, _ = split_model(
        nnx.eval_shape(lambda: create_model(config, seed=config.seed, bn_momentum=0.0))
    )

    def batch_statistics(state: TrainState, batch: Mapping[str, jax.Array]) -> nnx.State:
        images = input_pipeline.preprocess(batch["image"], config.preprocess, train=False, rng=None)
        batch_stats, rng_streams = jax.tree.map(jnp.asarray, (state.batch_stats, state.rng_streams))
        model = nnx.merge(graph, state.params, batch_stats, rng_streams)
        model(images)
        return nnx.state(model, nnx.BatchStat)

    jit_batch_statistics = jax.jit(
        batch_statistics,
        in_shardings=(sharding.replicated, sharding.batch),
        out_shardings=sharding.replicated,
    )

    def recalibrate(state: TrainState, local_batches) -> TrainState:
        total, count = None, 0
        for local_batch in local_batches:
            batch = sharding.put_batch({k: local_batch[k] for k in TRAIN_BATCH_KEYS})
            stats = jit_batch_statistics(state, batch)
            total = stats if total is None else jax.tree.map(jnp.add, total, stats)
            count += 1
        if count == 0:
            return state
        return state.replace(batch_stats=jax.tree.map(lambda t: t / count, total))

    return recalibrate


# ----------------------------------------------------------------------------- evaluation


TRAIN_BATCH_KEYS = ("image", "label", "mask")


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
        batch = sharding.put_batch({k: local_batch[k] for k in (*TRAIN_BATCH_KEYS, "index")})
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
    probabilities, losses = predict_split(jit_eval_step, state, split, config, sharding)
    report = evaluation.full_report(
        split.label,
        probabilities,
        split.patient,
        threshold=threshold,
        mean_loss=float(np.mean(losses)) if len(losses) else float("nan"),
    )
    return report, probabilities


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class RunContext:
    """What `train_and_evaluate` sets up once: data, steps, checkpoints, outputs."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    dataset: Any
    steps_per_epoch: int
    sharding: Sharding
    is_main_process: bool
    recalibrate_batch_stats: Any = None  # see make_batch_stats_recalibration; None when off


def check_finite(state: TrainState) -> None:
    nonfinite_step = int(replicated_to_host(state.nonfinite_step))
    if nonfinite_step >= 0:
        raise FloatingPointError(
            f"the training loss became NaN or Inf at step {nonfinite_step}; the run stopped and "
            "its last checkpoint (taken before that step) is intact. Lower config.learning_rate "
            "or check the input data."
        )


def dataset_description(dataset) -> dict:
    info = dataset.info.to_dict()
    return {
        "dataset": info.get("name"),
        "synthetic": bool(dataset.info.synthetic),
        "split": info.get("split_protocol", info.get("split")),
        "info": info,
    }


def log_data_banner(dataset) -> None:
    if dataset.info.synthetic:
        logging.warning(
            "\n" + "=" * 78 + "\n"
            "  SYNTHETIC DATA: the Kaggle IDC set was not found, so this run trains on the\n"
            "  procedural synthetic twin (synthetic_idc). Its numbers say nothing about real\n"
            "  histopathology. README, 'Using the real Kaggle data', says how to get the set.\n"
            + "="
            * 78
        )
    for note in getattr(dataset.info, "notes", []) or []:
        logging.warning("data: %s", note)


def epoch_batches(
    context: RunContext, epoch: int, start_batch: int
) -> Iterator[dict[str, np.ndarray]]:
    config = context.config
    return input_pipeline.iterate_batches(
        context.dataset.train,
        global_batch_size=config.global_batch_size,
        seed=config.seed,
        epoch=epoch,
        shuffle=True,
        drop_remainder=True,
        start_batch=start_batch,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        balanced=config.data.balanced_sampling,
    )


def _progress_bar(iterable, total: int, enabled: bool, description: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, mininterval=5.0, leave=False)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains for config.num_epochs, evaluating every epoch; resumes from `workdir` if possible.

    Returns the summary that is also written to `workdir/summary.json`.
    """
    wall_start = time.time()
    workdir = pathlib.Path(workdir).absolute()
    is_main_process = jax.process_index() == 0
    if is_main_process:
        workdir.mkdir(parents=True, exist_ok=True)

    dataset = load_dataset_once(config.data)
    log_data_banner(dataset)
    data_description = dataset_description(dataset)
    sharding = Sharding.over_all_devices()
    sharding.check_batch_size(config.global_batch_size, "config.global_batch_size")
    sharding.check_batch_size(config.eval_batch_size, "config.eval_batch_size")
    steps_per_epoch = input_pipeline.num_batches(
        len(dataset.train), config.global_batch_size, drop_remainder=True
    )
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training split has {len(dataset.train)} examples, fewer than one batch of "
            f"{config.global_batch_size}; lower config.global_batch_size"
        )
    num_train_steps = config.num_epochs * steps_per_epoch

    tx = create_optimizer(config, steps_per_epoch)
    state, train_graph, eval_graph = create_train_state(config, tx, sharding)
    weights_per_class = class_weights(config, dataset.train.label)
    jit_train_step, jit_eval_step = compile_steps(
        config,
        train_graph=train_graph,
        eval_graph=eval_graph,
        tx=tx,
        weights_per_class=weights_per_class,
        sharding=sharding,
    )

    checkpointer = checkpoints.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    writer = reporting.MetricWriter(workdir, is_main_process=is_main_process)
    meta = {"history": [], "data": data_description, "images_per_second": []}
    latest = checkpointer.latest_step()
    if latest is not None:
        abstract_state = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated), state
        )
        state, meta = checkpointer.restore(latest, abstract_state)
        if is_main_process:
            writer.jsonl.truncate_after(latest)
        logging.info("Resumed from %s at step %d.", checkpointer.directory, latest)
    else:
        profile = mobilenets.profile(
            config.model.name,
            alpha=config.model.alpha,
            image_size=config.preprocess.image_size,
            num_classes=NUM_CLASSES,
        )
        if is_main_process:
            reporting.write_json(workdir / "config.json", config.to_dict())
            parameter_overview.log_parameter_overview(state.params.to_pure_dict())
            logging.info(
                "%s alpha=%s at %d px: %s trainable parameters, %s multiply-adds per image.",
                config.model.name,
                config.model.alpha,
                config.preprocess.image_size,
                f"{profile.params:,}",
                f"{profile.macs:,}",
            )
            writer.write_scalars(
                0,
                {
                    "synthetic_data": float(data_description["synthetic"]),
                    "devices": jax.device_count(),
                },
            )

    context = RunContext(config, workdir, dataset, steps_per_epoch, sharding, is_main_process)
    if config.bn_recalibration_batches > 0:
        context.recalibrate_batch_stats = make_batch_stats_recalibration(config, sharding)
    state, meta = _train_epochs(
        context, state, meta, jit_train_step, jit_eval_step, checkpointer, writer, num_train_steps
    )
    summary = _final_evaluation(context, state, meta, jit_eval_step, checkpointer, writer)
    summary["wall_time_s"] = time.time() - wall_start  # of this invocation (resumes restart it)
    if is_main_process:
        reporting.write_json(workdir / "summary.json", summary)
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    return summary


def _train_epochs(
    context: RunContext,
    state: TrainState,
    meta: dict,
    jit_train_step,
    jit_eval_step,
    checkpointer: checkpoints.Checkpointer,
    writer: reporting.MetricWriter,
    num_train_steps: int,
) -> tuple[TrainState, dict]:
    config, spe = context.config, context.steps_per_epoch
    step = int(replicated_to_host(state.step))
    progress = reporting.ProgressReporter(num_train_steps, writer, config.log_every_steps)
    jit_reset_epoch_metrics = jax.jit(
        reset_epoch_metrics, out_shardings=context.sharding.replicated, donate_argnums=0
    )
    while step < num_train_steps:
        epoch, start_batch = divmod(step, spe)
        if start_batch == 0:
            state = jit_reset_epoch_metrics(state)
        timed_steps, timer_start = 0, None
        batches = _progress_bar(
            epoch_batches(context, epoch, start_batch),
            total=spe - start_batch,
            enabled=config.progress_bar and context.is_main_process,
            description=f"epoch {epoch + 1}/{config.num_epochs}",
        )
        for local_batch in batches:
            batch = context.sharding.put_batch({k: local_batch[k] for k in TRAIN_BATCH_KEYS})
            state = jit_train_step(state, batch)
            step += 1
            if timer_start is None:
                # The first step of a (re)started epoch may include compilation: not timed.
                jax.block_until_ready(state.step)
                timer_start = time.perf_counter()
            else:
                timed_steps += 1
            progress(step)
            if step % config.log_every_steps == 0:
                check_finite(state)
                scalars = {f"train_{k}": v for k, v in epoch_metrics_on_host(state).items()}
                writer.write_scalars(step, scalars)
            if step % config.checkpoint_every_steps == 0 and step % spe:
                check_finite(state)
                checkpointer.save(step, state, meta)
        jax.block_until_ready(state.step)
        check_finite(state)
        if timed_steps:
            elapsed = time.perf_counter() - timer_start
            meta["images_per_second"].append(timed_steps * config.global_batch_size / elapsed)
        state, meta = _end_of_epoch(context, state, meta, jit_eval_step, checkpointer, writer)
    return state, meta


def _end_of_epoch(context, state, meta, jit_eval_step, checkpointer, writer):
    config = context.config
    step = int(replicated_to_host(state.step))
    epoch = step // context.steps_per_epoch
    train_metrics = epoch_metrics_on_host(state)
    if context.recalibrate_batch_stats is not None:
        recalibration_batches = itertools.islice(
            epoch_batches(context, epoch, start_batch=0), config.bn_recalibration_batches
        )
        state = context.recalibrate_batch_stats(state, recalibration_batches)
    val_report, val_probabilities = evaluate_split(
        jit_eval_step, state, context.dataset.validation, config, context.sharding
    )
    tuned_threshold = evaluation.best_threshold(context.dataset.validation.label, val_probabilities)
    record = {
        "epoch": epoch,
        "step": step,
        "train_loss": train_metrics["loss"],
        "train_accuracy": train_metrics["accuracy"],
        **{f"val_{k}": v for k, v in val_report.items()},
        "val_tuned_threshold": tuned_threshold,
        "dataset": meta["data"]["dataset"],
        "synthetic": meta["data"]["synthetic"],
    }
    meta["history"].append(record)
    writer.write_scalars(step, {k: v for k, v in record.items() if isinstance(v, int | float)})
    writer.flush()
    if context.is_main_process:
        reporting.write_history_csv(context.workdir / "history.csv", meta["history"])
        reporting.plot_curves(
            context.workdir / "curves.png", meta["history"], _plot_title(config, meta)
        )
    checkpointer.save(
        step, state, meta, metrics={checkpoints.BEST_METRIC: record["val_balanced_accuracy"]}
    )
    logging.info(
        "epoch %d: train acc %.4f, val acc %.4f (majority %.4f), val balanced acc %.4f, "
        "val ROC AUC %.4f",
        epoch,
        record["train_accuracy"],
        record["val_accuracy"],
        record["val_majority_baseline"],
        record["val_balanced_accuracy"],
        record["val_roc_auc"],
    )
    return state, meta


def _plot_title(config, meta) -> str:
    data = meta["data"]
    stamp = " [SYNTHETIC DATA]" if data["synthetic"] else ""
    model = f"{config.model.name} alpha={config.model.alpha}"
    return f"{model}, {data['dataset']}, split={data['split']}{stamp}"


def _final_evaluation(context, state, meta, jit_eval_step, checkpointer, writer) -> dict:
    """Test metrics of the final model at 0.5 and at the threshold chosen on validation."""
    config = context.config
    step = int(replicated_to_host(state.step))
    threshold = meta["history"][-1]["val_tuned_threshold"] if meta["history"] else 0.5
    test_report, test_probabilities = evaluate_split(
        jit_eval_step, state, context.dataset.test, config, context.sharding
    )
    tuned = evaluation.full_report(
        context.dataset.test.label,
        test_probabilities,
        context.dataset.test.patient,
        threshold=threshold,
    )
    writer.write_scalars(
        step, {f"test_{k}": v for k, v in test_report.items() if isinstance(v, int | float)}
    )
    profile = mobilenets.profile(
        config.model.name,
        alpha=config.model.alpha,
        image_size=config.preprocess.image_size,
        num_classes=NUM_CLASSES,
    )
    images_per_second = meta.get("images_per_second", [])
    return {
        "model": config.model.name,
        "alpha": config.model.alpha,
        "image_size": config.preprocess.image_size,
        **{k: v for k, v in meta["data"].items() if k != "info"},
        "data_info": meta["data"].get("info", {}),
        "num_epochs": config.num_epochs,
        "steps": step,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
        "compute_dtype": str(jnp.dtype(compute_dtype(config))),
        "trainable_parameters": profile.params,
        "batch_norm_statistics": profile.batch_stats,
        "multiply_adds_per_image": profile.macs,
        "train_images_per_second": float(np.median(images_per_second))
        if images_per_second
        else math.nan,
        "best_step": checkpointer.best_step(),
        "final_train": {
            "loss": meta["history"][-1]["train_loss"] if meta["history"] else math.nan,
            "accuracy": meta["history"][-1]["train_accuracy"] if meta["history"] else math.nan,
        },
        "final_validation": {
            k[len("val_") :]: v
            for k, v in (meta["history"][-1] if meta["history"] else {}).items()
            if k.startswith("val_")
        },
        "test": test_report,
        "test_at_validation_threshold": tuned,
    }


# ----------------------------------------------------------------------------- inference


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to `workdir/config.json`, locked."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {workdir} the --workdir of a training run?")
    return default_config_like(json.loads(path.read_text()))


def default_config_like(values: Mapping) -> ml_collections.ConfigDict:
    from configs import default

    config = default.get_config()
    config.update_from_flattened_dict(_flatten(values))
    return default.finalize(config)


def _flatten(values: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def restore_for_inference(
    workdir: str | pathlib.Path, which: str = "latest"
) -> tuple[ml_collections.ConfigDict, nnx.Module, int]:
    """(config, model in eval mode, step) from a training run's workdir.

    `which` is "latest", "best" (by validation balanced accuracy) or a step number.
    """
    config = load_config(workdir)
    checkpointer = checkpoints.Checkpointer(
        pathlib.Path(workdir) / "checkpoints", keep=config.keep_checkpoints, read_only=True
    )
    if which == "latest":
        step = checkpointer.latest_step()
    elif which == "best":
        step = checkpointer.best_step()
    else:
        step = int(which)
    if step is None:
        raise FileNotFoundError(f"no {which} checkpoint in {checkpointer.directory}")
    tx = create_optimizer(config, steps_per_epoch=1)
    abstract_state = jax.eval_shape(lambda: create_train_state(config, tx)[0])
    state, _ = checkpointer.restore(step, abstract_state)
    _, eval_graph, _ = split_model(create_model(config, seed=0))
    model = nnx.merge(eval_graph, state.params, state.batch_stats, state.rng_streams)
    checkpointer.close()
    return config, model, step
