"""Speed of the project's own train and eval steps (trainer/), on whatever device JAX finds.

What is timed is what trains: the state and the
steps from `trainer.compiled.build` (jitted, state donated, batch sharded over every
device), fed uint8 50x50 patches that the step resizes to the model's size on the device, as in
training. Per model, image
size and batch:

- train images/s: forward, backward and Adam update; the median over windows of `--window` steps
  after `--warmup` steps, each window closed by `block_until_ready` (a window lets the host
  dispatch step i+1 while the device runs step i, as the training loop does);
- eval images/s: the eval step (running BatchNorm statistics, softmax), timed the same way;
- compile s: `lower` and `compile` of each step, timed apart from running it (with a persistent
  compilation cache set, JAX_COMPILATION_CACHE_DIR, a repeat run reads it: see `meta`);
- memory: the device's `peak_bytes_in_use` (null on CPU; it never goes down within a process, so
  run one configuration per process, as run_all.sh does, for per-configuration peaks) and XLA's
  own account of the train step (arguments + outputs - donated aliases + temporaries);
- feeding images/s: `input_pipeline.iterate_batches` over an in-memory uint8 split, alone (host
  gathers) and with the copy to the device;
- epoch s: a whole epoch of `--epoch_images` patches, feeding included, as `trainer/loop.py` loops.

With `--paper_experiment` it instead times the paper's whole experiment: 5 epochs each of
MobileNetV1 and V2 over 277,524 patches held in memory (the Kaggle set's size), at the config's
96 px. The goal: under 60 s of training on one H100/H200, feeding never the bottleneck. The set is
`bench_data.sample_split`'s: the real patches of data/idc_sample tiled to 277,524 (step times do
not depend on pixel values).

    python benchmarks/bench_jax.py                      # GPU: 224/96/50 px, batch 256/1024/1024
    python benchmarks/bench_jax.py --sizes 50 96 --batches 64   # CPU figures of RESULTS.md
    python benchmarks/bench_jax.py --paper_experiment

Prints a table and writes JSON (`--out`, default benchmarks/results/bench_jax.json) in the format
of `benchmarks/compare.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]

import compare  # noqa: E402
import harness  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from bench_data import InMemorySplit, sample_split  # noqa: E402

import input_pipeline  # noqa: E402
import mobilenets  # noqa: E402
from configs import default  # noqa: E402
from input_pipeline.patches import PATCH_SIZE  # noqa: E402
from input_pipeline.sharding import Sharding  # noqa: E402
from mobilenets.cpu import host_memory, kernels  # noqa: E402
from trainer import compiled, loop  # noqa: E402
from trainer import state as state_lib  # noqa: E402
from trainer import steps as trainer_steps  # noqa: E402

# The grid (models, sizes, batches) is harness.py's; GPU: bfloat16, CPU: float32 (--dtype auto).
PAPER_EPOCHS = 5
PAPER_GOAL_S = 60.0


# ----------------------------------------------------------------------------- set-up


def make_config(
    model: str, image_size: int, batch_size: int, args: argparse.Namespace
) -> ml_collections.ConfigDict:
    """The default (paper) config with the benchmark's model, size, batch, width and dtype."""
    config = default.get_config()
    config.model.name = model
    config.model.alpha = args.alpha
    config.model.implementation = args.implementation
    config.preprocess.image_size = image_size
    config.global_batch_size = batch_size
    config.eval_batch_size = batch_size
    config.compute_dtype = args.dtype
    return default.finalize(config)


@dataclasses.dataclass
class Steps:
    """The trainer's state and its compiled (AOT) train and eval steps for one configuration."""

    state: state_lib.TrainState
    train_step: Callable
    eval_step: Callable | None  # None when not asked for (the paper experiment only trains)
    lower_s: float
    compile_train_s: float
    compile_eval_s: float
    memory: dict[str, Any]

    @property
    def compile_s(self) -> float:
        return self.lower_s + self.compile_train_s + self.compile_eval_s


def compile_trainer_steps(
    config: ml_collections.ConfigDict, sharding: Sharding, batch: dict, with_eval: bool = True
) -> Steps:
    """The trainer's state and compiled steps, lowered and compiled ahead of use."""
    training = compiled.build(config, sharding)
    state, jit_train_step, jit_eval_step = training.state, training.train_step, training.eval_step
    (lowered_train, lowered_eval), lower_s = harness.timed(
        lambda: (
            jit_train_step.lower(state, batch),
            jit_eval_step.lower(state, batch) if with_eval else None,
        )
    )
    compiled_train, compile_train_s = harness.timed(lowered_train.compile)
    compiled_eval, compile_eval_s = harness.timed(
        lambda: lowered_eval.compile() if with_eval else None
    )
    return Steps(
        state,
        compiled_train,
        compiled_eval,
        lower_s,
        compile_train_s,
        compile_eval_s,
        xla_accounts(compiled_train),
    )


def xla_accounts(compiled) -> dict[str, Any]:
    """XLA's memory plan and cost estimate of a compiled step (None where a backend has none)."""
    accounts: dict[str, Any] = {"xla_step_memory_bytes": None, "xla_bytes_accessed": None}
    try:
        memory = compiled.memory_analysis()
        accounts["xla_step_memory_bytes"] = int(
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes
        )
    except Exception:  # noqa: BLE001 (an optional diagnostic; some backends do not implement it)
        pass
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        accounts["xla_bytes_accessed"] = float(cost["bytes accessed"])
        accounts["xla_flops"] = float(cost["flops"])
    except Exception:  # noqa: BLE001
        pass
    return accounts


def device_peak_bytes() -> int | None:
    """The most memory ever in use on device 0 of this process (None on CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def random_batch(
    batch_size: int, sharding: Sharding, rng: np.random.Generator
) -> dict[str, jax.Array]:
    """A training batch already on the device: uint8 50x50 patches, labels, a full mask."""
    patch = PATCH_SIZE
    return sharding.put_batch(
        {
            "image": rng.integers(0, 256, (batch_size, patch, patch, 3), dtype=np.uint8),
            "label": rng.integers(0, state_lib.NUM_CLASSES, batch_size).astype(np.int32),
            "mask": np.ones(batch_size, bool),
        }
    )


# ----------------------------------------------------------------------------- timing


def feeding_rate(
    split: InMemorySplit, batch_size: int, sharding: Sharding, num_batches: int
) -> dict[str, float]:
    """Images/s of `iterate_batches` alone (host gathers) and with the copy to the device."""

    def batches() -> Iterator[dict[str, np.ndarray]]:
        iterator = input_pipeline.iterate_batches(split, batch_size, seed=0, epoch=0)
        for _, batch in zip(range(num_batches), iterator):
            yield {key: batch[key] for key in trainer_steps.BATCH_KEYS}

    start = time.perf_counter()
    count = sum(1 for _ in batches())
    host_s = time.perf_counter() - start
    start = time.perf_counter()
    on_device = [sharding.put_batch(batch)["image"] for batch in batches()]
    jax.block_until_ready(on_device)
    device_s = time.perf_counter() - start
    return {
        "feed_host_images_per_s": count * batch_size / host_s,
        "feed_images_per_s": count * batch_size / device_s,
    }


def train_epoch(
    train_step: Callable,
    state: state_lib.TrainState,
    split: InMemorySplit,
    batch_size: int,
    sharding: Sharding,
    epoch: int,
) -> tuple[state_lib.TrainState, dict[str, float]]:
    """One epoch as `trainer.loop` runs it: shuffled batches, fed, stepped, waited for.

    Also times the host's share: making batches and handing them to the device. When that share
    is close to the wall time, feeding is the bottleneck.
    """
    start = time.perf_counter()
    feed_s, steps = 0.0, 0
    batches = input_pipeline.iterate_batches(split, batch_size, seed=0, epoch=epoch)
    while True:
        feed_start = time.perf_counter()
        local_batch = next(batches, None)
        if local_batch is None:
            break
        batch = sharding.put_batch({key: local_batch[key] for key in trainer_steps.BATCH_KEYS})
        feed_s += time.perf_counter() - feed_start
        state = train_step(state, batch)
        steps += 1
    jax.block_until_ready(state)
    wall_s = time.perf_counter() - start
    return state, {"wall_s": wall_s, "feed_s": feed_s, "images": steps * batch_size}


# ----------------------------------------------------------------------------- the benchmark grid


def benchmark_configuration(
    model: str,
    image_size: int,
    batch_size: int,
    args: argparse.Namespace,
    sharding: Sharding,
    epoch_split: InMemorySplit | None,
    feeding: dict[str, float],
    first_in_process: bool,
) -> dict[str, Any]:
    config = make_config(model, image_size, batch_size, args)
    rng = np.random.default_rng(0)
    batch = random_batch(batch_size, sharding, rng)
    steps = compile_trainer_steps(config, sharding, batch)

    timing = dict(
        synchronize=jax.block_until_ready, warmup=args.warmup, steps=args.steps, window=args.window
    )
    train = harness.median_step_seconds(
        lambda state: steps.train_step(state, batch), steps.state, **timing
    )
    state, train_s = train.carry, train.median_s
    eval_s = harness.median_step_seconds(
        lambda outputs: steps.eval_step(state, batch), **timing
    ).median_s
    epoch = None
    if epoch_split is not None:
        state, epoch = train_epoch(steps.train_step, state, epoch_split, batch_size, sharding, 0)
    profile = mobilenets.profile(
        model, alpha=args.alpha, image_size=image_size, num_classes=state_lib.NUM_CLASSES
    )
    row = {
        "framework": "jax",
        # What "auto" resolves to here: "cpu" on XLA:CPU, "reference" (cuDNN) elsewhere.
        "variant": f"nnx, {mobilenets.resolve_implementation(config.model.implementation)} path"
        + (", native CPU kernels" if kernels.active() else ""),
        "model": model,
        "image_size": image_size,
        "batch_size": batch_size,
        "dtype": str(np.dtype(state_lib.compute_dtype(config))),
        "alpha": args.alpha,
        "train_images_per_s": batch_size / train_s,
        "train_step_ms": 1e3 * train_s,
        "train_step_ms_windows": [1e3 * s for s in train.window_s],
        "train_minor_page_faults_per_step": train.minor_page_faults_per_call,
        "eval_images_per_s": batch_size / eval_s,
        "compile_s": steps.compile_s,
        "lower_s": steps.lower_s,
        "compile_train_s": steps.compile_train_s,
        "compile_eval_s": steps.compile_eval_s,
        "peak_memory_bytes": device_peak_bytes(),
        "peak_memory_is_process_wide": not first_in_process,
        **steps.memory,
        **feeding,
        "epoch_images": epoch["images"] if epoch else None,
        "epoch_s": epoch["wall_s"] if epoch else None,
        "epoch_feed_s": epoch["feed_s"] if epoch else None,
        "multiply_adds_per_image": profile.macs,
    }
    if row["xla_bytes_accessed"]:
        # XLA's traffic estimate over the measured time: how near the memory bandwidth we are.
        row["xla_gbytes_per_s"] = row["xla_bytes_accessed"] / train_s / 1e9
    return row


# ----------------------------------------------------------------------------- paper experiment


def paper_experiment(
    args: argparse.Namespace, sharding: Sharding, split: InMemorySplit
) -> tuple[list[dict], dict]:
    """Times 5 epochs of each network over the whole in-memory set, as the trainer trains them."""
    rows = []
    feeding = feeding_rate(split, args.paper_batch_size, sharding, args.feed_batches)
    for model in args.models:
        config = make_config(model, args.paper_image_size, args.paper_batch_size, args)
        wall_start = time.perf_counter()
        batch = random_batch(args.paper_batch_size, sharding, np.random.default_rng(0))
        steps = compile_trainer_steps(config, sharding, batch, with_eval=False)
        state = steps.state
        reset = jax.jit(
            state_lib.reset_epoch_metrics, out_shardings=sharding.replicated, donate_argnums=0
        )
        epochs = []
        for epoch in range(PAPER_EPOCHS):
            state = reset(state)
            state, timing = train_epoch(
                steps.train_step, state, split, args.paper_batch_size, sharding, epoch
            )
            metrics = loop.epoch_metrics_on_host(state)
            epochs.append({**timing, **metrics})
            print(
                f"{model} epoch {epoch + 1}: {timing['wall_s']:.1f} s, "
                f"loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f}",
                flush=True,
            )
        loop.check_finite(state)
        train_s = sum(e["wall_s"] for e in epochs)
        images = sum(e["images"] for e in epochs)
        rows.append(
            {
                "framework": "jax",
                "model": model,
                "image_size": args.paper_image_size,
                "batch_size": args.paper_batch_size,
                "dtype": str(np.dtype(state_lib.compute_dtype(config))),
                "epochs": PAPER_EPOCHS,
                "images_per_epoch": len(split),
                "train_s": train_s,
                "compile_s": steps.compile_s,
                "wall_s": time.perf_counter() - wall_start,
                "train_images_per_s": images / train_s,
                "feed_fraction": sum(e["feed_s"] for e in epochs) / train_s,
                **feeding,
                "epoch_history": epochs,
            }
        )
    train_s = sum(row["train_s"] for row in rows)
    whole_set = len(split) == input_pipeline.KAGGLE_PATCHES
    full_size = whole_set and set(args.models) == set(harness.MODELS)
    summary = {
        "train_s": train_s,
        "wall_s": sum(row["wall_s"] for row in rows),
        "goal_s": PAPER_GOAL_S,
        # The goal is about the real experiment; a smaller run (a test, a CPU) is not judged.
        "goal_met": (train_s < PAPER_GOAL_S) if full_size else None,
    }
    return rows, summary


# ----------------------------------------------------------------------------- driver


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    on_gpu = jax.default_backend() != "cpu"
    parser = harness.grid_parser(
        __doc__, on_gpu=on_gpu, cpu_warmup=5, full_epoch_images=input_pipeline.KAGGLE_PATCHES
    )
    parser.add_argument(
        "--dtype", default="auto", help="compute dtype; 'auto': bfloat16 on GPU, float32 on CPU"
    )
    parser.add_argument(
        "--implementation", default="auto", choices=mobilenets.IMPLEMENTATION_CHOICES
    )
    parser.add_argument("--paper_experiment", action="store_true")
    parser.add_argument("--paper_images", type=int, default=input_pipeline.KAGGLE_PATCHES)
    parser.add_argument(
        "--paper_image_size", type=int, default=default.get_config().preprocess.image_size
    )
    parser.add_argument(
        "--paper_batch_size",
        type=int,
        default=1024 if on_gpu else 64,
        help="the paper gives none; the config's 64 leaves a GPU idle between steps",
    )
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    args = harness.parse_grid(parser, argv, on_gpu)
    if args.out is None:
        name = "paper_experiment" if args.paper_experiment else "bench_jax"
        args.out = str(harness.RESULTS_DIR / f"{name}.json")
    return args


def run_meta(args: argparse.Namespace, host: dict, notes: list[str]) -> dict[str, Any]:
    device = jax.local_devices()[0]
    return {
        **host,
        "device": device.device_kind if device.platform != "cpu" else harness.cpu_model_name(),
        "platform": device.platform,
        "device_count": jax.device_count(),
        "versions": harness.versions(
            ("jax", "jaxlib", "flax", "optax", "numpy", "clu", "ml_collections")
        ),
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "timing": harness.timing_note(args.warmup, args.window),
        "notes": notes,
    }


def main(argv: Sequence[str] | None = None) -> None:
    host_memory.keep_scratch_memory_mapped()  # before JAX starts its backend (parse_args)
    args = parse_args(argv)
    sharding = Sharding.over_all_devices()
    notes: list[str] = []
    host = harness.host_meta()  # at the start: the load average before the run

    if args.paper_experiment:
        split, note = sample_split(args.paper_images, args.base_patches)
        notes.append(note)
        rows, summary = paper_experiment(args, sharding, split)
        meta = run_meta(args, host, notes)
        payload = compare.write_results(args.out, "paper_experiment", meta, rows, summary=summary)
        print("\n".join(compare.paper_lines([payload])))
        return

    feed_split_size = max(args.epoch_images, max(args.batches) * args.feed_batches)
    split, note = sample_split(feed_split_size, args.base_patches)
    notes.append(note)
    epoch_split = split.head(args.epoch_images)
    feeding_by_batch = {
        batch: feeding_rate(split, batch, sharding, args.feed_batches)
        for batch in set(args.batches)
    }
    rows = []
    meta = run_meta(args, host, notes)
    for size, batch_size in zip(args.sizes, args.batches):
        for model in args.models:
            row = benchmark_configuration(
                model,
                size,
                batch_size,
                args,
                sharding,
                epoch_split if args.epoch_images else None,
                feeding_by_batch[batch_size],
                first_in_process=not rows,
            )
            compare.add_row(
                args.out,
                "jax",
                meta,
                rows,
                row,
                f"{model} {size}px batch {batch_size}: {row['train_images_per_s']:,.0f} train "
                f"images/s, {row['eval_images_per_s']:,.0f} eval images/s, compile "
                f"{row['compile_s']:.1f} s",
            )
    compare.finish(args.out, "jax", meta, rows)


if __name__ == "__main__":
    main()
