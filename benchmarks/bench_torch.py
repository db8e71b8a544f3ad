"""The peer of `bench_jax.py`: the same measurements for PyTorch, on the same device and data.

What a PyTorch user would run instead of this project:
- on a GPU, timm's `mobilenetv1_100` and torchvision's `mobilenet_v2` (num_classes=2), bfloat16
  autocast, channels_last, cuDNN autotuning (`cudnn.benchmark`) and fused Adam, each both eager
  and under `torch.compile` (`--no_compile` skips the latter, whose compile takes minutes);
- on a CPU, where timm and torchvision are usually absent, the hand-written equivalents of
  `benchmarks/torch_models.py` (same layers and channel counts as ours), float32, channels_last
  (faster than NCHW on CPU, see cpu_train_step.py), eager.

Like for like with ours: Adam at 1e-4 and softmax cross-entropy; the batch starts as uint8 50x50
patches on the device, and the step itself scales them to [-1, 1] and resizes them (bilinear) to
the model's size, as our train step does; input feeding uses the project's own
`input_pipeline.iterate_batches` and then pinned-memory copies. Timing is bench_jax's
(`harness.median_step_seconds`): the median over windows of `--window` steps after `--warmup`
steps, each window closed by a device synchronisation. `compile_s` is the first call's time less
a steady step (graph capture and Inductor code generation under torch.compile; cuDNN autotuning
in eager mode); peak memory is `torch.cuda.max_memory_allocated` of each configuration alone
(null on CPU).

torch is optional: without it this script writes a results file that says so and exits 0.

    python benchmarks/bench_torch.py                      # GPU grid of the issue
    python benchmarks/bench_torch.py --sizes 50 96 --batches 64   # CPU figures of RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

BENCH_DIR = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]

# The project's input pipeline imports JAX; it must never take the GPU from PyTorch here.
os.environ["JAX_PLATFORMS"] = "cpu"

import compare  # noqa: E402
import harness  # noqa: E402
import numpy as np  # noqa: E402
from bench_data import sample_split  # noqa: E402

import input_pipeline  # noqa: E402
from input_pipeline.patches import PATCH_SIZE  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # optional: main() then writes a results file that says so
    torch = None

NUM_CLASSES = 2
LEARNING_RATE = 1e-4


def library_model(name: str, alpha: float):
    """timm's MobileNetV1 or torchvision's MobileNetV2, untrained, two classes."""
    if name == "mobilenet_v1":
        import timm

        if alpha != 1.0:
            raise ValueError("timm ships mobilenetv1_100 (alpha 1.0); use --source handwritten")
        return timm.create_model("mobilenetv1_100", pretrained=False, num_classes=NUM_CLASSES)
    import torchvision

    return torchvision.models.mobilenet_v2(weights=None, num_classes=NUM_CLASSES, width_mult=alpha)


def handwritten_model(name: str, alpha: float):
    import torch_models

    return torch_models.TORCH_MODELS[name](NUM_CLASSES, alpha)


def resolve_source(source: str, on_gpu: bool) -> str:
    """ "library" (timm/torchvision) on GPU when importable, else "handwritten"."""
    if source != "auto":
        return source
    if not on_gpu:
        return "handwritten"
    try:
        import timm  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return "handwritten"
    return "library"


class TorchTrainer:
    """Model, fused Adam and the train / eval steps of one configuration, eager or compiled."""

    def __init__(self, model_name: str, image_size: int, args: argparse.Namespace):
        self.device = torch.device(args.device)
        self.on_gpu = self.device.type == "cuda"
        self.image_size = image_size
        self.autocast_dtype = {"bfloat16": torch.bfloat16, "float32": None}[args.dtype]
        make = library_model if args.source == "library" else handwritten_model
        torch.manual_seed(0)
        model = make(model_name, args.alpha).to(self.device, memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=LEARNING_RATE, fused=True if self.on_gpu else None
        )
        self.forward = torch.compile(model) if args.variant == "compile" else model

    def inputs(self, images_uint8):
        """uint8 NHWC patches -> [-1, 1] channels_last NCHW at the model's size (as ours)."""
        x = images_uint8.permute(0, 3, 1, 2).float() * (2.0 / 255.0) - 1.0
        if x.shape[-1] != self.image_size:
            # Bilinear, half-pixel centres: jax.image.resize's upsampling (antialias only acts
            # when shrinking).
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=torch.channels_last)

    def _autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        )

    def train_step(self, images, labels):
        self.model.train()
        with self._autocast():
            logits = self.forward(self.inputs(images))
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def eval_step(self, images, labels):
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            logits = self.forward(self.inputs(images)).float()
        return torch.softmax(logits, -1)[:, 1], F.cross_entropy(logits, labels, reduction="none")

    def synchronize(self):
        if self.on_gpu:
            torch.cuda.synchronize(self.device)


def to_device(batch: dict[str, np.ndarray], device) -> tuple[Any, Any]:
    """Host batch -> device tensors (pinned and asynchronous on a GPU, as DataLoader does)."""
    images, labels = torch.from_numpy(batch["image"]), torch.from_numpy(batch["label"]).long()
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    return images, labels


def feeding_rate(split, batch_size: int, device, num_batches: int) -> dict[str, float]:
    def batches():
        iterator = input_pipeline.iterate_batches(split, batch_size, seed=0, epoch=0)
        yield from (batch for _, batch in zip(range(num_batches), iterator))

    start = time.perf_counter()
    count = sum(1 for _ in batches())
    host_s = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches():
        to_device(batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    device_s = time.perf_counter() - start
    return {
        "feed_host_images_per_s": count * batch_size / host_s,
        "feed_images_per_s": count * batch_size / device_s,
    }


def train_epoch(trainer: TorchTrainer, split, batch_size: int) -> dict[str, float]:
    start = time.perf_counter()
    feed_s, steps = 0.0, 0
    batches = input_pipeline.iterate_batches(split, batch_size, seed=0, epoch=0)
    while True:
        feed_start = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        images, labels = to_device(batch, trainer.device)
        feed_s += time.perf_counter() - feed_start
        trainer.train_step(images, labels)
        steps += 1
    trainer.synchronize()
    return {"wall_s": time.perf_counter() - start, "feed_s": feed_s, "images": steps * batch_size}


def benchmark_configuration(
    model_name: str, image_size: int, batch_size: int, args, epoch_split, feeding
) -> dict[str, Any]:
    trainer = TorchTrainer(model_name, image_size, args)
    if trainer.on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(trainer.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, PATCH_SIZE, PATCH_SIZE, 3), generator=generator)
    images = images.to(torch.uint8).to(trainer.device)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator).to(trainer.device)

    timing = dict(
        synchronize=lambda _: trainer.synchronize(),
        warmup=args.warmup,
        steps=args.steps,
        window=args.window,
    )
    train = harness.median_step_seconds(lambda _: trainer.train_step(images, labels), **timing)
    evaluation = harness.median_step_seconds(lambda _: trainer.eval_step(images, labels), **timing)
    train_s, eval_s = train.median_s, evaluation.median_s
    epoch = train_epoch(trainer, epoch_split, batch_size) if epoch_split else None
    peak = torch.cuda.max_memory_allocated(trainer.device) if trainer.on_gpu else None
    source = "timm/torchvision" if args.source == "library" else "hand-written"
    return {
        "framework": "torch",
        "variant": f"{args.variant} ({source})",
        "model": model_name,
        "image_size": image_size,
        "batch_size": batch_size,
        "dtype": args.dtype,
        "alpha": args.alpha,
        "train_images_per_s": batch_size / train_s,
        "train_step_ms": 1e3 * train_s,
        "train_step_ms_windows": [1e3 * s for s in train.window_s],
        "eval_images_per_s": batch_size / eval_s,
        "compile_s": max(0.0, train.first_s - train_s) + max(0.0, evaluation.first_s - eval_s),
        "peak_memory_bytes": peak,
        **feeding,
        "epoch_images": epoch["images"] if epoch else None,
        "epoch_s": epoch["wall_s"] if epoch else None,
        "epoch_feed_s": epoch["feed_s"] if epoch else None,
    }


def parse_args(argv: Sequence[str] | None, on_gpu: bool) -> argparse.Namespace:
    parser = harness.grid_parser(
        __doc__, on_gpu=on_gpu, cpu_warmup=1, full_epoch_images=input_pipeline.KAGGLE_PATCHES
    )
    parser.add_argument(
        "--dtype", default="bfloat16" if on_gpu else "float32", choices=("bfloat16", "float32")
    )
    parser.add_argument("--source", default="auto", choices=("auto", "library", "handwritten"))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["eager", "compile"] if on_gpu else ["eager"],
        choices=("eager", "compile"),
    )
    parser.add_argument("--no_compile", action="store_true", help="drop the torch.compile variant")
    parser.add_argument("--device", default="cuda" if on_gpu else "cpu")
    parser.add_argument("--out", default=str(harness.RESULTS_DIR / "bench_torch.json"))
    args = harness.parse_grid(parser, argv, on_gpu)
    if args.no_compile:
        args.variants = [v for v in args.variants if v != "compile"]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    host = harness.host_meta()
    if torch is None:
        args = parse_args(argv, on_gpu=False)
        compare.write_skipped(args.out, "torch", "torch is not installed")
        return

    on_gpu = torch.cuda.is_available()
    args = parse_args(argv, on_gpu)
    args.source = resolve_source(args.source, args.device.startswith("cuda"))
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count())
    else:
        torch.backends.cudnn.benchmark = True  # autotuned convolution algorithms

    feed_split_size = max(args.epoch_images, max(args.batches) * args.feed_batches)
    split, note = sample_split(feed_split_size, args.base_patches)
    epoch_split = split.head(args.epoch_images) if args.epoch_images else None
    device = torch.device(args.device)
    feeding_by_batch = {
        batch: feeding_rate(split, batch, device, args.feed_batches) for batch in set(args.batches)
    }
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else harness.cpu_model_name()
    )
    meta = {
        **host,
        "device": device_name,
        "platform": device.type,
        "versions": {"torch": torch.__version__, **harness.versions(("torchvision", "timm"))},
        "threads": torch.get_num_threads(),
        "timing": harness.timing_note(args.warmup, args.window),
        "notes": [note],
    }
    rows = []
    for size, batch_size in zip(args.sizes, args.batches):
        for model_name in args.models:
            for variant in args.variants:
                args.variant = variant
                row = benchmark_configuration(
                    model_name,
                    size,
                    batch_size,
                    args,
                    epoch_split,
                    feeding_by_batch[batch_size],
                )
                compare.add_row(
                    args.out,
                    "torch",
                    meta,
                    rows,
                    row,
                    f"{model_name} {size}px batch {batch_size} {row['variant']}: "
                    f"{row['train_images_per_s']:,.0f} train images/s, "
                    f"{row['eval_images_per_s']:,.0f} eval images/s",
                )
    compare.finish(args.out, "torch", meta, rows)


if __name__ == "__main__":
    main()
