"""The training run: `train_and_evaluate(config, workdir)`, resumable at any step.

Per epoch: the jitted train steps over the shuffled training split, then an evaluation on
validation (optionally after precise-BN recalibration) whose metrics go to history.csv, the
curves and a checkpoint. At the end: test metrics at 0.5 and at the threshold tuned on
validation, written to summary.json. A run killed at any moment resumes from its newest
checkpoint and ends with the same files as an uninterrupted one, but for summary.json's
`wall_time_s` (summed over the invocations) and `invocations`.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview
from jax.experimental import multihost_utils

import input_pipeline
from trainer import compiled, evaluate, metrics, steps, writers
from trainer import state as state_lib
from trainer import summary as summary_lib
from trainer.checkpoints import BEST_METRIC, Checkpointer
from trainer.rundir import RunDirectory
from trainer.sharding import Sharding, replicated_to_host
from trainer.state import TrainState


def load_dataset_once(data_config: ml_collections.ConfigDict):
    """Loads the data set; with several processes, process 0 builds and caches it first."""
    if jax.process_count() == 1:
        return input_pipeline.load_dataset(data_config)
    dataset = input_pipeline.load_dataset(data_config) if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("dataset prepared by process 0")
    if dataset is None:
        dataset = input_pipeline.load_dataset(data_config)
    return dataset


def epoch_metrics_on_host(state: TrainState) -> dict[str, float]:
    values = replicated_to_host(state.epoch_metrics)
    return {k: float(v) for k, v in values.compute().items()}


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
        "dataset": info["name"],
        "data_source": info["source"],
        "data_selection": info["selection"],
        "split": info["split_protocol"],
        "info": info,
    }


def log_data_banner(dataset) -> None:
    if dataset.info.name == "idc_sample":
        counts = dataset.info.counts
        patients = sum(part["patients"] for part in counts.values())
        logging.warning(
            "\n" + "=" * 78 + "\n"
            f"  DATA: the real sample shipped in data/idc_sample ({patients} patients), not the\n"
            "  Kaggle set (277,524 patches of 279 patients): its figures are a quickstart's.\n"
            "  README, 'Using the real Kaggle data', says how to train on the full set.\n"
            + "=" * 78
        )
    for note in dataset.info.notes:
        logging.warning("data: %s", note)


@dataclasses.dataclass
class RunContext:
    """What `train_and_evaluate` sets up once: data, steps, outputs."""

    config: ml_collections.ConfigDict
    rundir: RunDirectory
    dataset: input_pipeline.Dataset
    steps_per_epoch: int
    sharding: Sharding
    is_main_process: bool
    checkpointer: Checkpointer
    writer: writers.MetricWriter
    jit_train_step: object
    jit_eval_step: object
    recalibrate_batch_stats: evaluate.BatchNormRecalibration | None
    started: float = dataclasses.field(default_factory=time.time)  # this invocation's start
    earlier_wall_time_s: float = 0.0  # of the invocations before, up to their last checkpoint

    def wall_time_s(self) -> float:
        """Time spent on the run so far, summed over its invocations (resumes).

        An invocation counts up to its last checkpoint: work a kill threw away is redone, and
        counted, by the next invocation.
        """
        return self.earlier_wall_time_s + time.time() - self.started

    def save_checkpoint(self, step: int, state: TrainState, meta: dict, **kwargs) -> None:
        meta["wall_time_s"] = self.wall_time_s()
        self.checkpointer.save(step, state, meta, **kwargs)

    def epoch_batches(self, epoch: int, start_batch: int) -> Iterator[dict[str, np.ndarray]]:
        return input_pipeline.iterate_batches(
            self.dataset.train,
            global_batch_size=self.config.global_batch_size,
            seed=self.config.seed,
            epoch=epoch,
            shuffle=True,
            drop_remainder=True,
            start_batch=start_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            balanced=self.config.data.balanced_sampling,
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
    started = time.time()
    rundir = RunDirectory(workdir)
    is_main_process = jax.process_index() == 0
    if is_main_process:
        rundir.create()

    dataset = load_dataset_once(config.data)
    log_data_banner(dataset)
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

    training = compiled.build(
        config, sharding, steps_per_epoch=steps_per_epoch, train_labels=dataset.train.label
    )
    state = training.state
    context = RunContext(
        config=config,
        rundir=rundir,
        dataset=dataset,
        steps_per_epoch=steps_per_epoch,
        sharding=sharding,
        is_main_process=is_main_process,
        checkpointer=rundir.checkpointer(config.keep_checkpoints),
        writer=writers.MetricWriter(
            rundir.path, rundir.metrics_file, is_main_process=is_main_process
        ),
        jit_train_step=training.train_step,
        jit_eval_step=training.eval_step,
        recalibrate_batch_stats=(
            evaluate.BatchNormRecalibration(config, sharding)
            if config.bn_recalibration_batches > 0
            else None
        ),
        started=started,
    )
    state, meta = _start_or_resume(context, state)
    context.earlier_wall_time_s = meta.get("wall_time_s", 0.0)
    meta["invocations"] = meta.get("invocations", 0) + 1
    state, meta = _train_epochs(context, state, meta, config.num_epochs * steps_per_epoch)
    summary = _final_evaluation(context, state, meta)
    summary["wall_time_s"] = context.wall_time_s()
    summary["invocations"] = meta["invocations"]
    if is_main_process:
        rundir.write_summary(summary)
    context.checkpointer.wait()
    context.checkpointer.close()
    context.writer.close()
    return summary


def _start_or_resume(context: RunContext, state: TrainState) -> tuple[TrainState, dict]:
    """The newest checkpoint's state and record, or the initial ones (config.json written)."""
    config, sharding = context.config, context.sharding
    meta = {"history": [], "data": dataset_description(context.dataset), "images_per_second": []}
    latest = context.checkpointer.latest_step()
    if latest is not None:
        abstract_state = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated), state
        )
        state, meta = context.checkpointer.restore(latest, abstract_state)
        if context.is_main_process:
            context.writer.jsonl.truncate_after(latest)
        logging.info("Resumed from %s at step %d.", context.checkpointer.directory, latest)
        return state, meta
    if context.is_main_process:
        profile = state_lib.model_profile(config)
        context.rundir.write_config(config)
        parameter_overview.log_parameter_overview(state.params.to_pure_dict())
        logging.info(
            "%s alpha=%s at %d px: %s trainable parameters, %s multiply-adds per image.",
            config.model.name,
            config.model.alpha,
            config.preprocess.image_size,
            f"{profile.params:,}",
            f"{profile.macs:,}",
        )
        context.writer.write_scalars(
            0, {"devices": jax.device_count()}
        )
    return state, meta


def _train_epochs(
    context: RunContext, state: TrainState, meta: dict, num_train_steps: int
) -> tuple[TrainState, dict]:
    config, spe = context.config, context.steps_per_epoch
    step = int(replicated_to_host(state.step))
    progress = writers.ProgressReporter(num_train_steps, context.writer, config.log_every_steps)
    jit_reset_epoch_metrics = jax.jit(
        state_lib.reset_epoch_metrics,
        out_shardings=context.sharding.replicated,
        donate_argnums=0,
    )
    while step < num_train_steps:
        epoch, start_batch = divmod(step, spe)
        if start_batch == 0:
            state = jit_reset_epoch_metrics(state)
        timed_steps, timer_start = 0, None
        batches = _progress_bar(
            context.epoch_batches(epoch, start_batch),
            total=spe - start_batch,
            enabled=config.progress_bar and context.is_main_process,
            description=f"epoch {epoch + 1}/{config.num_epochs}",
        )
        for local_batch in batches:
            batch = context.sharding.put_batch({k: local_batch[k] for k in steps.BATCH_KEYS})
            state = context.jit_train_step(state, batch)
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
                context.writer.write_scalars(step, scalars)
            if step % config.checkpoint_every_steps == 0 and step % spe:
                check_finite(state)
                context.save_checkpoint(step, state, meta)
        jax.block_until_ready(state.step)
        check_finite(state)
        if timed_steps:
            elapsed = time.perf_counter() - timer_start
            meta["images_per_second"].append(timed_steps * config.global_batch_size / elapsed)
        state, meta = _end_of_epoch(context, state, meta)
    return state, meta


def _end_of_epoch(context: RunContext, state: TrainState, meta: dict):
    config = context.config
    step = int(replicated_to_host(state.step))
    epoch = step // context.steps_per_epoch
    train_metrics = epoch_metrics_on_host(state)
    if context.recalibrate_batch_stats is not None:
        recalibration_batches = itertools.islice(
            context.epoch_batches(epoch, start_batch=0), config.bn_recalibration_batches
        )
        state = context.recalibrate_batch_stats(state, recalibration_batches)
    val_report, val_probabilities = evaluate.evaluate_split(
        context.jit_eval_step, state, context.dataset.validation, config, context.sharding
    )
    tuned_threshold = metrics.best_threshold(context.dataset.validation.label, val_probabilities)
    record = {
        "epoch": epoch,
        "step": step,
        "train_loss": train_metrics["loss"],
        "train_accuracy": train_metrics["accuracy"],
        **{f"val_{k}": v for k, v in val_report.items()},
        "val_tuned_threshold": tuned_threshold,
        "dataset": meta["data"]["dataset"],
    }
    meta["history"].append(record)
    context.writer.write_scalars(
        step, {k: v for k, v in record.items() if isinstance(v, int | float)}
    )
    context.writer.flush()
    if context.is_main_process:
        context.rundir.write_history(meta["history"], _plot_title(config, meta))
    context.save_checkpoint(
        step, state, meta, metrics={BEST_METRIC: record["val_balanced_accuracy"]}
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
    model = f"{config.model.name} alpha={config.model.alpha}"
    return f"{model}, {data['dataset']}, split={data['split']}"


def _final_evaluation(context: RunContext, state: TrainState, meta: dict) -> dict:
    """Evaluates the final model on test and returns summary.json's content (`trainer.summary`)."""
    config = context.config
    step = int(replicated_to_host(state.step))
    test_report, test_probabilities = evaluate.evaluate_split(
        context.jit_eval_step, state, context.dataset.test, config, context.sharding
    )
    context.writer.write_scalars(
        step, {f"test_{k}": v for k, v in test_report.items() if isinstance(v, int | float)}
    )
    test = context.dataset.test
    return summary_lib.build_summary(
        config,
        data=meta["data"],
        history=meta["history"],
        steps=step,
        best_step=context.checkpointer.best_step(),
        images_per_second=meta.get("images_per_second", []),
        test_report=test_report,
        test_labels=test.label,
        test_patients=test.patient,
        test_probabilities=test_probabilities,
    )
