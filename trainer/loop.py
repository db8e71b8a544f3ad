"""The training run: `train_and_evaluate(config, workdir)`, resumable at any step.

Per epoch: the jitted train steps over the shuffled training split, then an evaluation on
validation (optionally after precise-BN recalibration) whose metrics go to history.csv, the
curves and a checkpoint. At the end: test metrics at 0.5 and at the threshold tuned on
validation, written to summary.json. A run killed at any moment resumes from its newest
checkpoint and ends with the same files as an uninterrupted one, but for summary.json's
`wall_time_s` (summed over the invocations) and `invocations`.

Before anything is loaded or compiled: the config is checked (`config_checks.check`), the workdir
is locked for this run (`workdir_lock`: a second command on it is refused), and a resume whose
config changes what the run computes is refused with the keys that differ
(`config_checks.check_resume`). The console gets the start of the run in a few lines (data set
and why, split, network and its costs, devices; the parameter table goes to parameters.txt),
progress with images/s, one line per epoch and a closing line with the test metrics.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import parameter_overview
from jax.experimental import multihost_utils

import input_pipeline
from evaluation import metrics
from input_pipeline.sharding import Sharding, replicated_to_host
from trainer import (
    compiled,
    config_checks,
    evaluate,
    run_log,
    steps,
    workdir_lock,
    writers,
)
from trainer import state as state_lib
from trainer import summary as summary_lib
from trainer.checkpoints import BEST_METRIC, Checkpointer
from trainer.cli import UserError
from trainer.rundir import RunDirectory, curves_title
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains for config.num_epochs, evaluating every epoch; resumes from `workdir` if possible.

    Returns the summary that is also written to `workdir/summary.json`. Raises `UserError` for
    a config no run can use, a workdir another run holds, or a resume with another config.
    """
    started = time.time()
    config_checks.check(config)
    rundir = RunDirectory(workdir)
    with workdir_lock.held_by_this_run(rundir.path):
        resume_changes = []
        recorded = rundir.recorded_config()
        if recorded is not None and rundir.has_checkpoint():
            resume_changes = config_checks.check_resume(str(rundir.path), recorded, config)
        return _train_and_evaluate(config, rundir, started, resume_changes)


def _train_and_evaluate(
    config: ml_collections.ConfigDict, rundir: RunDirectory, started: float, resume_changes
) -> dict:
    is_main_process = jax.process_index() == 0
    if is_main_process:
        rundir.create()

    dataset = load_dataset_once(config.data)
    run_log.log_data_banner(dataset)
    sharding = Sharding.over_all_devices()
    sharding.check_batch_size(config.global_batch_size, "config.global_batch_size")
    sharding.check_batch_size(config.eval_batch_size, "config.eval_batch_size")
    steps_per_epoch = input_pipeline.num_batches(
        len(dataset.train), config.global_batch_size, drop_remainder=True
    )
    if steps_per_epoch == 0:
        raise UserError(
            f"the training split has {len(dataset.train)} examples, fewer than one batch of "
            f"{config.global_batch_size}; lower config.global_batch_size"
        )
    if is_main_process:
        run_log.log_run_start(config, rundir, steps_per_epoch)

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
    state, meta = _start_or_resume(context, state, resume_changes)
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
    if is_main_process:
        files = [
            path.name + ("/" if path.is_dir() else "")
            for path in (
                rundir.summary_file,
                rundir.history_file,
                rundir.curves_file,
                rundir.metrics_file,
                rundir.parameters_file,
                rundir.checkpoint_dir,
            )
            if path.exists()
        ]
        logging.info("%s", writers.closing_line(summary, rundir.path, files))
    return summary


def _start_or_resume(
    context: RunContext, state: TrainState, resume_changes: list[str]
) -> tuple[TrainState, dict]:
    """The newest checkpoint's state and record, or the initial ones (config.json written)."""
    config, sharding = context.config, context.sharding
    meta = {
        "history": [],
        "data": run_log.dataset_description(context.dataset),
        "images_per_second": [],
    }
    latest = context.checkpointer.latest_step()
    if latest is not None:
        abstract_state = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.replicated), state
        )
        recorded_counts = _recorded_split_counts(context.checkpointer, latest)
        if recorded_counts is not None and recorded_counts != meta["data"]["info"]["counts"]:
            raise UserError(
                f"{context.rundir.path} holds a run on other data: its splits held "
                f"{_counts_text(recorded_counts)}, these data give "
                f"{_counts_text(meta['data']['info']['counts'])}. Use a new --workdir, or "
                "the data the run started with."
            )
        state, meta = context.checkpointer.restore(latest, abstract_state)
        if context.is_main_process:
            context.writer.jsonl.truncate_after(latest)
            if resume_changes:
                context.rundir.write_config(config)
        spe = context.steps_per_epoch
        logging.info(
            "resumed from the checkpoint of step %d (epoch %d/%d, step %d of %d) in %s%s",
            latest,
            latest // spe + 1,
            config.num_epochs,
            latest % spe,
            spe,
            context.checkpointer.directory,
            f"; changed: {'; '.join(resume_changes)}" if resume_changes else "",
        )
        return state, meta
    if context.is_main_process:
        context.rundir.write_config(config)
        context.rundir.write_parameters(
            parameter_overview.get_parameter_overview(state.params.to_pure_dict())
        )
        context.writer.write_scalars(0, {"devices": jax.device_count()})
    return state, meta


def _recorded_split_counts(checkpointer: Checkpointer, step: int) -> dict | None:
    """The split counts the run recorded in its checkpoint's metadata (no state restored)."""
    path = checkpointer.directory / str(step) / "meta" / "metadata"
    try:
        return json.loads(path.read_text())["data"]["info"]["counts"]
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _counts_text(counts: dict) -> str:
    return ", ".join(
        f"{name} {part['patches']:,} patches of {part['patients']} patients"
        for name, part in counts.items()
    )


def _train_epochs(
    context: RunContext, state: TrainState, meta: dict, num_train_steps: int
) -> tuple[TrainState, dict]:
    config, spe = context.config, context.steps_per_epoch
    step = int(replicated_to_host(state.step))
    progress = writers.TrainingProgress(
        num_steps=num_train_steps,
        steps_per_epoch=spe,
        num_epochs=config.num_epochs,
        batch_size=config.global_batch_size,
        every_steps=config.log_every_steps,
        bar=config.progress_bar and context.is_main_process and sys.stderr.isatty(),
    )
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
        progress.start_epoch(epoch, start_batch)
        for local_batch in context.epoch_batches(epoch, start_batch):
            batch = context.sharding.put_batch({k: local_batch[k] for k in steps.BATCH_KEYS})
            state = context.jit_train_step(state, batch)
            step += 1
            if timer_start is None:
                # The first step of a (re)started epoch may include compilation: not timed.
                jax.block_until_ready(state.step)
                timer_start = time.perf_counter()
            else:
                timed_steps += 1
            if step % config.log_every_steps == 0:
                check_finite(state)  # waits for the step: the progress line's rate is true
                scalars = {f"train_{k}": v for k, v in epoch_metrics_on_host(state).items()}
                context.writer.write_scalars(step, scalars)
            if context.is_main_process:
                progress.step(step)
            if step % config.checkpoint_every_steps == 0 and step % spe:
                check_finite(state)
                context.save_checkpoint(step, state, meta)
        jax.block_until_ready(state.step)
        progress.end_epoch()
        check_finite(state)
        images_per_second = None
        if timed_steps:
            elapsed = time.perf_counter() - timer_start
            images_per_second = timed_steps * config.global_batch_size / elapsed
            meta["images_per_second"].append(images_per_second)
        state, meta = _end_of_epoch(context, state, meta, images_per_second)
    return state, meta


def _end_of_epoch(context: RunContext, state: TrainState, meta: dict, images_per_second=None):
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
    if context.is_main_process:  # the last epoch's are the final network's
        context.rundir.write_predictions(
            "validation", context.dataset.validation, val_probabilities
        )
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
        title = curves_title(config, meta["data"]["dataset"], context.rundir.path.name)
        context.rundir.write_history(meta["history"], title)
    context.save_checkpoint(
        step, state, meta, metrics={BEST_METRIC: record["val_balanced_accuracy"]}
    )
    if context.is_main_process:
        logging.info("%s", writers.epoch_line(record, config.num_epochs, images_per_second))
    return state, meta


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
    if context.is_main_process:
        context.rundir.write_predictions("test", test, test_probabilities)
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
