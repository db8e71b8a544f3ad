"""CPU train-step benchmark: JAX (each implementation) against PyTorch, same machine and run.

One train step = forward + backward + Adam update (+ BatchNorm running statistics), jitted with the
state donated, float32, batch 64 by default, for MobileNetV1/V2 at 50 and 96 px (`--models` takes
any name of `mobilenets.ARCHITECTURES`: also the V3s and ResNet-50). PyTorch (optional,
`pip install -r benchmarks/requirements-peers.txt`) runs hand-written equivalents of the same nets
(`benchmarks/torch_models.py`) with `torch.optim.Adam`, in NCHW and channels-last layouts.

    python benchmarks/cpu_train_step.py  # full table, ~5 minutes on 2 idle cores
    python benchmarks/cpu_train_step.py --models mobilenet_v1 --sizes 50 --repeats 3
    python benchmarks/cpu_train_step.py --models mobilenet_v3_small resnet50 --sizes 96

Prints a table and writes JSON (default benchmarks/results/cpu_train_step.json). Ratios are
JAX time / best PyTorch time of the same model and size in this run (< 1: JAX faster).
"cpu" is the CPU path (mobilenets/cpu: native kernels where they build; MOBILENETS_CPU_KERNELS=0
times its pure-XLA form), "reference" the definitions alone. This script does not apply
mobilenets/cpu/host_memory.py; bench_jax.py measures the trainer's own step (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys

BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import harness  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import mobilenets  # noqa: E402

NUM_CLASSES = 2
LEARNING_RATE = 1e-4


def make_jax_train_step(graphdef, optimizer):
    """A jitted, donated train step on split NNX state (the way the trainer runs it)."""

    def train_step(params, model_state, opt_state, images, labels):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, model_state, copy=True)
            logits = model(images)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, nnx.state(model, nnx.Not(nnx.Param))

        (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), model_state, opt_state, loss

    return jax.jit(train_step, donate_argnums=(0, 1, 2))


def time_jax(name, size, batch, impl, repeats):
    model = mobilenets.create(
        name, num_classes=NUM_CLASSES, implementation=impl, rngs=nnx.Rngs(0, dropout=1)
    )
    model.train()
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch), jnp.int32)
    step = make_jax_train_step(graphdef, optimizer)
    compiled, compile_s = harness.timed(
        lambda: step.lower(params, model_state, opt_state, images, labels).compile()
    )
    # The first run pays allocation: not counted.
    timing = harness.median_step_seconds(
        lambda outputs: compiled(*outputs[:3], images, labels),
        (params, model_state, opt_state),
        synchronize=jax.block_until_ready,
        warmup=1,
        steps=repeats,
    )
    return timing.median_s * 1e3, compile_s


def time_torch(name, size, batch, channels_last, repeats):
    import torch
    import torch.nn.functional as F
    from benchmarks_torch_models import TORCH_MODELS

    torch.manual_seed(0)
    model = TORCH_MODELS[name](NUM_CLASSES)
    model.train()
    images = torch.rand(batch, 3, size, size) * 2 - 1
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def train_step(_):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    # Eager on the CPU: each call has finished when it returns. The first is not counted.
    timing = harness.median_step_seconds(
        train_step, synchronize=lambda _: None, warmup=1, steps=repeats
    )
    return timing.median_s * 1e3


def result_row(model, size, framework, variant, ms, compile_s=None) -> dict:
    return dict(
        model=model, size=size, framework=framework, variant=variant, ms=ms, compile_s=compile_s
    )


def main(argv=None):
    parser = harness.argument_parser(__doc__)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["mobilenet_v1", "mobilenet_v2"],
        choices=sorted(mobilenets.ARCHITECTURES),
        metavar="MODEL",
        help=f"any of {', '.join(sorted(mobilenets.ARCHITECTURES))}",
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=[50, 96])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--impls", nargs="+", default=["cpu", "reference"])
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default=str(harness.RESULTS_DIR / "cpu_train_step.json"))
    args = parser.parse_args(argv)

    # Other processes on the machine distort both frameworks (PyTorch's spinning worker threads
    # far more than XLA's): the load average is recorded with the results.
    load_before = os.getloadavg()[0]
    torch_version = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(os.cpu_count())
            torch_version = torch.__version__
            sys.modules.setdefault("benchmarks_torch_models", __import__("torch_models"))
        except ImportError:
            print("torch not importable: JAX rows only")

    rows = []
    for name in args.models:
        for size in args.sizes:
            torch_ms = {}
            if torch_version:
                for layout, channels_last in (("nchw", False), ("channels_last", True)):
                    ms = time_torch(name, size, args.batch, channels_last, args.repeats)
                    torch_ms[layout] = ms
                    rows.append(result_row(name, size, "torch", layout, ms))
                    print(f"{name} {size}px torch {layout}: {ms:.0f} ms", flush=True)
            best_torch = min(torch_ms.values()) if torch_ms else None
            for impl in args.impls:
                ms, compile_s = time_jax(name, size, args.batch, impl, args.repeats)
                rows.append(result_row(name, size, "jax", impl, ms, compile_s))
                print(
                    f"{name} {size}px jax {impl}: {ms:.0f} ms (compile {compile_s:.1f} s)",
                    flush=True,
                )
            for row in rows:
                if row["model"] == name and row["size"] == size and best_torch:
                    row["ratio_to_best_torch"] = row["ms"] / best_torch

    width = max(14, *(len(name) + 1 for name in args.models))
    header = f"{'model':<{width}}{'px':>4}  {'framework':<10}{'variant':<15}{'ms/step':>9}"
    header += f"{'compile s':>11}{'vs torch':>10}"
    load = (load_before, os.getloadavg()[0])
    print(
        f"\nbatch {args.batch}, float32, {os.cpu_count()} CPU cores, median of {args.repeats}, "
        f"1-min load average {load[0]:.1f} before / {load[1]:.1f} after"
    )
    print(header)
    for row in rows:
        compile_s = f"{row['compile_s']:.1f}" if row["compile_s"] is not None else "-"
        ratio = f"{row['ratio_to_best_torch']:.2f}" if "ratio_to_best_torch" in row else "-"
        print(
            f"{row['model']:<{width}}{row['size']:>4}  {row['framework']:<10}{row['variant']:<15}"
            f"{row['ms']:>9.0f}{compile_s:>11}{ratio:>10}"
        )

    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(
        batch=args.batch,
        repeats=args.repeats,
        cpu_count=os.cpu_count(),
        machine=platform.processor() or platform.machine(),
        jax=jax.__version__,
        torch=torch_version,
        load_average=load,
        dtype="float32",
    )
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
