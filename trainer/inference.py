"""Inference with a trained network: P(IDC) of PNG patches, test-time augmentation, CSV.

    predictor, config, step = Predictor.from_workdir("/tmp/idc_v1", tta=True)
    files, unreadable = patches.find_png_files(["data/idc_sample/9383"])
    result = predict_files(predictor, files)           # P(IDC) of every readable file
    write_predictions_csv("preds.csv", result, threshold=0.5)

* Preprocessing is training's own: PNGs are decoded and border patches padded with white by
  `input_pipeline.patches.decode_patch` (as the TFDS builder does), then resized and scaled by
  `input_pipeline.preprocess` inside the jitted function, as the validation loop saw them.
* `Predictor` runs the network in eval mode (BatchNorm with its running statistics, no dropout) in
  one jitted function of a fixed batch size, compiled ahead of time; the last batch is padded, so a
  single compilation serves any number of files. Batches are sharded over every device.
* Test-time augmentation averages P(IDC) over the 8 symmetries of the square, as the trainer's
  evaluation does with `config.eval_tta` (`steps.mean_log_probabilities`).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from input_pipeline.patches import (
    PATCH_SIZE,
    WHITE,
    LoadedPatch,
    PatchName,
    load_patches,
    parse_patch_name,
)
from trainer import steps
from trainer.rundir import RunDirectory
from trainer.sharding import Sharding, to_host

CSV_COLUMNS = ("file", "patient", "x", "y", "p_idc", "predicted_label", "true_label")


def predict_probabilities(
    state: nnx.State,
    images: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    preprocess_config: ml_collections.ConfigDict,
    views: tuple[int, ...],
) -> jax.Array:
    """Mean P(IDC) over the dihedral `views` of uint8 patches [B, 50, 50, 3] -> [B], as the
    evaluation of training computes it (`steps.mean_log_probabilities`)."""
    model = nnx.merge(graphdef, state)
    log_probs = steps.mean_log_probabilities(model, images, preprocess_config, views)
    return jnp.exp(log_probs[:, 1])


class Predictor:
    """P(IDC) of uint8 patches by a trained model, through one ahead-of-time compiled function.

    `batch_size` is rounded up to a multiple of the device count; every call is cut into batches of
    exactly that size (the last one padded with white patches whose outputs are dropped), so the
    compiled function is the only one ever run.
    """

    def __init__(
        self,
        model: nnx.Module,
        preprocess_config: ml_collections.ConfigDict,
        *,
        batch_size: int = 256,
        tta: bool = False,
    ):
        self.sharding = Sharding.over_all_devices()
        devices = jax.device_count()
        self.batch_size = max(devices, -(-batch_size // devices) * devices)
        self.tta = tta
        self.views = steps.ALL_VIEWS if tta else (0,)
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, self.sharding.replicated)
        jitted = jax.jit(
            functools.partial(
                predict_probabilities,
                graphdef=graphdef,
                preprocess_config=preprocess_config,
                views=self.views,
            ),
            in_shardings=(self.sharding.replicated, self.sharding.batch),
            out_shardings=self.sharding.batch,
        )
        batch_shape = jax.ShapeDtypeStruct(
            (self.batch_size, PATCH_SIZE, PATCH_SIZE, 3), jnp.uint8, sharding=self.sharding.batch
        )
        start = time.perf_counter()
        self._compiled = jitted.lower(self._state, batch_shape).compile()
        self.compile_seconds = time.perf_counter() - start

    @classmethod
    def from_workdir(
        cls, workdir: str | os.PathLike, which: str = "latest", **kwargs
    ) -> tuple[Predictor, ml_collections.ConfigDict, int]:
        """(predictor, run config, checkpoint step) for the `which` checkpoint of a training run."""
        config, model, step = RunDirectory(workdir).restore_model(which)
        return cls(model, config.preprocess, **kwargs), config, step

    def dispatch(self, images: np.ndarray) -> jax.Array:
        """Starts one batch (at most `batch_size` patches) and returns its P(IDC) without waiting.

        JAX runs the computation asynchronously, so the caller can decode the next batch meanwhile.
        The result has `batch_size` rows; those past len(images) belong to the padding.
        """
        if len(images) > self.batch_size:
            raise ValueError(f"{len(images)} images exceed the batch size {self.batch_size}")
        padded = np.full((self.batch_size, PATCH_SIZE, PATCH_SIZE, 3), WHITE, np.uint8)
        padded[: len(images)] = images
        return self._compiled(self._state, self.sharding.put_batch({"image": padded})["image"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """P(IDC), float32 [N], of uint8 patches [N, 50, 50, 3]."""
        pending = [
            self.dispatch(images[start : start + self.batch_size])
            for start in range(0, len(images), self.batch_size)
        ]
        outputs = [to_host(p) for p in pending]
        return np.concatenate(outputs)[: len(images)] if outputs else np.zeros(0, np.float32)


@dataclasses.dataclass
class FilePredictions:
    """P(IDC) of every readable file, what the names say, and the files that could not be read."""

    files: list[pathlib.Path]
    names: list[PatchName]
    p_idc: np.ndarray  # float32 [N]
    heights: np.ndarray  # int32 [N], true patch sizes before padding
    widths: np.ndarray
    errors: list[tuple[pathlib.Path, str]]
    seconds: float  # reading and prediction, compilation excluded
    images: np.ndarray | None = None  # uint8 [N, 50, 50, 3] when asked for (slide maps)

    @property
    def images_per_second(self) -> float:
        return len(self.files) / self.seconds if self.seconds > 0 else math.nan

    @property
    def labels(self) -> np.ndarray:
        """The true label of each file, -1 where the name does not carry one."""
        return np.array([-1 if n.label is None else n.label for n in self.names], np.int32)


def predict_files(
    predictor: Predictor | None,
    files: Sequence[pathlib.Path],
    *,
    keep_images: bool = False,
    num_threads: int = 8,
) -> FilePredictions:
    """Reads and predicts `files` batch by batch; unreadable files are collected, never raised.

    Decoding (threads) overlaps with the device: a batch is dispatched as soon as it is full and
    fetched only at the end. With `predictor=None` nothing is predicted (p_idc is NaN): the slide
    maps of the ground truth need only the images.
    """
    batch_size = predictor.batch_size if predictor is not None else 256
    start = time.perf_counter()
    kept: list[tuple[pathlib.Path, LoadedPatch]] = []
    errors: list[tuple[pathlib.Path, str]] = []
    pending: list[tuple[jax.Array, int]] = []
    batch: list[np.ndarray] = []
    images: list[np.ndarray] = []

    def flush():
        if predictor is not None and batch:
            pending.append((predictor.dispatch(np.stack(batch)), len(batch)))
        batch.clear()

    for path, patch in load_patches(files, num_threads=num_threads):
        if patch.error is not None:
            errors.append((path, patch.error))
            continue
        kept.append((path, dataclasses.replace(patch, image=None)))
        batch.append(patch.image)
        if keep_images:
            images.append(patch.image)
        if len(batch) == batch_size:
            flush()
    flush()
    if predictor is not None:
        chunks = [to_host(p)[:n] for p, n in pending]
        p_idc = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    else:
        p_idc = np.full(len(kept), np.nan, np.float32)
    seconds = time.perf_counter() - start
    return FilePredictions(
        files=[path for path, _ in kept],
        names=[parse_patch_name(path.name) for path, _ in kept],
        p_idc=p_idc.astype(np.float32),
        heights=np.array([p.height for _, p in kept], np.int32),
        widths=np.array([p.width for _, p in kept], np.int32),
        errors=errors,
        seconds=seconds,
        images=np.stack(images) if keep_images and images else None,
    )


# ----------------------------------------------------------------------------- decisions and CSV


def resolve_threshold(spec: str, workdir: str | os.PathLike, step: int) -> float:
    """`spec` is a number in [0, 1] or "validation" (`RunDirectory.validation_threshold`)."""
    if spec == "validation":
        return RunDirectory(workdir).validation_threshold(step)
    threshold = float(spec)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the threshold must lie in [0, 1], got {threshold}")
    return threshold


def predicted_labels(p_idc: np.ndarray, threshold: float) -> np.ndarray:
    """1 (IDC) where P(IDC) >= threshold, the rule `metrics.binary_metrics` scores."""
    return (np.asarray(p_idc) >= threshold).astype(np.int32)


def write_predictions_csv(
    path: str | os.PathLike, predictions: FilePredictions, threshold: float
) -> None:
    """One row per readable file (columns `CSV_COLUMNS`); unknown values are left empty."""
    blank = lambda value: "" if value is None else value
    decisions = predicted_labels(predictions.p_idc, threshold)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for file, name, p, decision in zip(
            predictions.files, predictions.names, predictions.p_idc, decisions
        ):
            writer.writerow(
                [
                    str(file),
                    blank(name.patient),
                    blank(name.x),
                    blank(name.y),
                    f"{p:.6f}",
                    int(decision),
                    blank(name.label),
                ]
            )


def write_errors(path: str | os.PathLike, errors: Sequence[tuple[pathlib.Path, str]]) -> None:
    """`<file>\\t<reason>` per unreadable file (an empty file when there is none)."""
    with open(path, "w") as f:
        f.writelines(f"{file}\t{reason}\n" for file, reason in errors)
