"""Inference with a trained MobileNet: P(IDC) of PNG patches, test-time augmentation, slide maps.

    predictor, config, step = Predictor.from_workdir("/tmp/idc_v1", tta=True)
    files, unreadable = find_png_files(["/data/IDC/8863"])
    result = predict_files(predictor, files)           # P(IDC) of every readable file
    write_predictions_csv("preds.csv", result, threshold=0.5)

What each part implements:

* Preprocessing is training's own: PNGs are decoded and border patches padded with white by the data
  package's `kaggle_idc.decode_patch`, then resized and scaled by `input_pipeline.preprocess` inside
  the jitted function, so a patch is seen exactly as the validation loop saw it.
* `Predictor` runs the network in eval mode (BatchNorm with its running statistics, no dropout) in
  one jitted function of a fixed batch size, compiled ahead of time; the last batch is padded, so a
  single compilation serves any number of files. Batches are sharded over every device.
* Test-time augmentation averages P(IDC) over the 8 symmetries of the square (4 rotations x
  mirror, `input_pipeline.dihedral_view`). Tissue has no preferred orientation, so the 8 views are
  equally valid inputs, and their mean is a lower-variance estimate than any single view.
* Slide maps: the Kaggle file name `<patient>_idx5_x<X>_y<Y>_class<C>.png` gives the 1-based
  top-left pixel of the patch on the whole-slide image, so the patches of one patient tile the
  slide again: `build_mosaic` puts each patch's pixels at row Y-1, column X-1 of a white canvas,
  and `overlay_patches` tints each patch by a colour (P(IDC) or the TP/FP/FN/TN outcome).
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import math
import os
import pathlib
import re
import time
from collections.abc import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

import input_pipeline
import train
from input_pipeline import kaggle_idc

PATCH_SIZE = kaggle_idc.PATCH_SIZE
NUM_DIHEDRAL_VIEWS = 8
WHITE = 255

# Kaggle names always carry the label; patches cut by other tools may leave "_class<C>" out, and
# still give their patient and slide position. Labelled names go through the data package's own
# pattern (`kaggle_idc.FILE_NAME_PATTERN`); this one is tried only when that fails.
_UNLABELLED_NAME_PATTERN = re.compile(r"^(\d+)_idx5_x(\d+)_y(\d+)\.png$")

CSV_COLUMNS = ("file", "patient", "x", "y", "p_idc", "predicted_label", "true_label")


# ----------------------------------------------------------------------------- files


@dataclasses.dataclass(frozen=True)
class PatchName:
    """What a patch's file name says; None where the name does not say it."""

    patient: int | None = None
    x: int | None = None  # 1-based left column of the patch on the slide
    y: int | None = None  # 1-based top row
    label: int | None = None  # 1 = IDC


def parse_patch_name(file_name: str) -> PatchName:
    """Patient, slide position and label of `<patient>_idx5_x<X>_y<Y>[_class<C>].png`."""
    match = kaggle_idc.FILE_NAME_PATTERN.match(file_name)
    if match is not None:
        patient, x, y, label = (int(group) for group in match.groups())
        return PatchName(patient, x, y, label)
    match = _UNLABELLED_NAME_PATTERN.match(file_name)
    if match is not None:
        patient, x, y = (int(group) for group in match.groups())
        return PatchName(patient, x, y, None)
    return PatchName()


def find_png_files(
    paths: Iterable[str | os.PathLike],
) -> tuple[list[pathlib.Path], list[tuple[pathlib.Path, str]]]:
    """(PNG files, [(path, reason)] for paths that are neither a file nor a folder).

    A file is taken whatever its name (it is probably meant as a PNG; if it is not, reading it
    fails and it is listed then). A folder contributes every `*.png` below it, recursively, in
    sorted order. Each file appears once even when named twice.
    """
    files: dict[pathlib.Path, None] = {}  # an ordered set
    missing = []
    for path in map(pathlib.Path, paths):
        if path.is_file():
            files[path] = None
        elif path.is_dir():
            found = (p for p in path.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
            files.update(dict.fromkeys(sorted(found)))
        else:
            missing.append((path, "no such file or folder"))
    return list(files), missing


@dataclasses.dataclass(frozen=True)
class LoadedPatch:
    """A decoded patch (white-padded to 50x50 RGB) and its true size, or why it is unreadable."""

    image: np.ndarray | None
    height: int = 0
    width: int = 0
    error: str | None = None


def load_patch(path: pathlib.Path) -> LoadedPatch:
    """Reads one PNG as training did: RGB, alpha on white, border patches padded with white."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as error:
        return LoadedPatch(None, error=f"unreadable file: {error.strerror or error}")
    reasons = kaggle_idc.BuildReport()
    decoded = kaggle_idc.decode_patch(data, reasons)
    if decoded is None:
        # decode_patch counts why it gave up ("skipped_corrupt_png", "skipped_wrong_size").
        why = [reason for reason in reasons.counts if reason.startswith("skipped_")]
        return LoadedPatch(None, error=", ".join(why) or "not a readable PNG")
    image, height, width = decoded
    return LoadedPatch(image, height, width)


def load_patches(
    files: Sequence[pathlib.Path], *, num_threads: int = 8
) -> Iterator[tuple[pathlib.Path, LoadedPatch]]:
    """`load_patch` of every file, in order, decoded by a pool of threads (PIL frees the GIL)."""
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        # map() submits every file at once; chunks keep the decoded-but-unconsumed images bounded.
        chunk = 64 * num_threads
        for start in range(0, len(files), chunk):
            batch = files[start : start + chunk]
            yield from zip(batch, pool.map(load_patch, batch))


# ----------------------------------------------------------------------------- the model


def predict_probabilities(
    state: nnx.State,
    images: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    preprocess_config: ml_collections.ConfigDict,
    views: tuple[int, ...],
) -> jax.Array:
    """Mean P(IDC) over the dihedral `views` of uint8 patches [B, 50, 50, 3] -> float32 [B].

    The views go through the network as one batch of len(views) * B images: the model is in eval
    mode (BatchNorm uses its running statistics), so each image's output does not depend on its
    batch-mates, and one large batch uses an accelerator better than eight small ones. Each view
    is taken of the raw patch and then preprocessed, exactly as a user would feed a rotated file.
    """
    model = nnx.merge(graphdef, state)
    all_views = jnp.concatenate([input_pipeline.dihedral_view(images, k) for k in views])
    inputs = input_pipeline.preprocess(all_views, preprocess_config, train=False, rng=None)
    logits = model(inputs).astype(jnp.float32)
    p_idc = jax.nn.softmax(logits)[:, 1].reshape(len(views), images.shape[0])
    return jnp.mean(p_idc, axis=0)


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
        self.sharding = train.Sharding.over_all_devices()
        devices = jax.device_count()
        self.batch_size = max(devices, -(-batch_size // devices) * devices)
        self.tta = tta
        self.views = tuple(range(NUM_DIHEDRAL_VIEWS)) if tta else (0,)
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
        config, model, step = train.restore_for_inference(workdir, which)
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
        outputs = [train.to_host(p) for p in pending]
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
        chunks = [train.to_host(p)[:n] for p, n in pending]
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


def validation_threshold(workdir: str | os.PathLike, step: int) -> float:
    """The threshold tuned on validation (max balanced accuracy) for the checkpoint at `step`.

    Training records it after every epoch in history.csv (`val_tuned_threshold`); a checkpoint
    taken mid-epoch has none.
    """
    path = pathlib.Path(workdir) / "history.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: no validation threshold was recorded")
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if int(row["step"]) == step and row.get("val_tuned_threshold"):
                return float(row["val_tuned_threshold"])
    raise ValueError(
        f"{path} has no validation threshold for step {step} (a mid-epoch checkpoint?); "
        "pass a number as the threshold or pick an end-of-epoch checkpoint"
    )


def resolve_threshold(spec: str, workdir: str | os.PathLike, step: int) -> float:
    """`spec` is a number in [0, 1] or "validation" (see `validation_threshold`)."""
    if spec == "validation":
        return validation_threshold(workdir, step)
    threshold = float(spec)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the threshold must lie in [0, 1], got {threshold}")
    return threshold


def predicted_labels(p_idc: np.ndarray, threshold: float) -> np.ndarray:
    """1 (IDC) where P(IDC) >= threshold, the rule `evaluation.binary_metrics` scores."""
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


# ----------------------------------------------------------------------------- slide maps


@dataclasses.dataclass(frozen=True)
class SlidePlacement:
    """Where each patch of one slide goes: top-left pixel (0-based) and true size."""

    top: np.ndarray  # int [N]: Y - 1
    left: np.ndarray  # int [N]: X - 1
    heights: np.ndarray
    widths: np.ndarray

    @classmethod
    def from_names(
        cls, names: Sequence[PatchName], heights: np.ndarray, widths: np.ndarray
    ) -> SlidePlacement:
        """Placement of patches whose names give their slide position (x and y not None)."""
        return cls(
            top=np.array([n.y - 1 for n in names], np.int64),
            left=np.array([n.x - 1 for n in names], np.int64),
            heights=np.asarray(heights, np.int64),
            widths=np.asarray(widths, np.int64),
        )

    @property
    def canvas_shape(self) -> tuple[int, int]:
        """(height, width) that holds every patch: the furthest patch corner."""
        if not len(self.top):
            return 0, 0
        return int(np.max(self.top + self.heights)), int(np.max(self.left + self.widths))

    def regions(self) -> Iterator[tuple[int, slice, slice]]:
        """(patch index, rows, columns) of each patch's true pixels on the canvas."""
        for i, (top, left, h, w) in enumerate(zip(self.top, self.left, self.heights, self.widths)):
            yield i, slice(int(top), int(top + h)), slice(int(left), int(left + w))


def build_mosaic(images: np.ndarray, placement: SlidePlacement) -> np.ndarray:
    """The slide rebuilt from its patches: uint8 [H, W, 3], white where no patch lies.

    Only a patch's true pixels are copied (not the white padding of a border patch), so the
    canvas ends exactly at the slide's furthest tissue patch.
    """
    mosaic = np.full((*placement.canvas_shape, 3), WHITE, np.uint8)
    for i, rows, cols in placement.regions():
        mosaic[rows, cols] = images[i, : rows.stop - rows.start, : cols.stop - cols.start]
    return mosaic


def overlay_patches(
    mosaic: np.ndarray,
    placement: SlidePlacement,
    colours: np.ndarray,
    *,
    opacity: float = 0.5,
    skip: np.ndarray | None = None,
) -> np.ndarray:
    """The mosaic with each patch tinted: (1 - opacity) * tissue + opacity * colour.

    `colours` is float RGB in [0, 1], one per patch; patches where `skip` is true stay as they are.
    The tissue stays visible under the tint, so a pathologist can check what the model flagged.
    """
    out = mosaic.astype(np.float32)
    tint = np.asarray(colours, np.float32) * WHITE
    for i, rows, cols in placement.regions():
        if skip is not None and skip[i]:
            continue
        out[rows, cols] = (1.0 - opacity) * out[rows, cols] + opacity * tint[i]
    return np.clip(np.round(out), 0, WHITE).astype(np.uint8)


def probability_colours(p_idc: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """RGB in [0, 1] of each P(IDC) under a perceptually uniform matplotlib colormap."""
    import matplotlib

    return matplotlib.colormaps[colormap](np.clip(p_idc, 0.0, 1.0))[:, :3]


# Outcome of each patch, with IDC the positive class.
OUTCOME_COLOURS = {
    "TP": (0.85, 0.10, 0.10),  # red: IDC found
    "FN": (0.10, 0.35, 0.95),  # blue: IDC missed
    "FP": (1.00, 0.75, 0.00),  # amber: false alarm
    "TN": (0.20, 0.70, 0.30),  # green: correctly clear
}


def outcomes(labels: np.ndarray, decisions: np.ndarray) -> np.ndarray:
    """ "TP"/"FP"/"FN"/"TN" of each patch, "" where the label is unknown (-1)."""
    labels, decisions = np.asarray(labels), np.asarray(decisions).astype(bool)
    result = np.full(len(labels), "", dtype="<U2")
    known = labels >= 0
    positive = labels == 1
    result[known & positive & decisions] = "TP"
    result[known & positive & ~decisions] = "FN"
    result[known & ~positive & decisions] = "FP"
    result[known & ~positive & ~decisions] = "TN"
    return result


def outcome_colours(outcome: np.ndarray) -> np.ndarray:
    colours = np.ones((len(outcome), 3), np.float32)
    for name, colour in OUTCOME_COLOURS.items():
        colours[outcome == name] = colour
    return colours


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def save_slide_figure(
    path: str | os.PathLike,
    panels: Sequence[tuple[str, np.ndarray]],
    *,
    title: str,
    colormap: str | None = None,
    outcome_counts: dict[str, int] | None = None,
) -> None:
    """A side-by-side figure of slide images with a P(IDC) colour bar and an outcome legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.5), squeeze=False)
    for ax, (name, image) in zip(axes[0], panels):
        ax.imshow(image)
        ax.set_title(name)
        ax.axis("off")
    if colormap is not None:
        mappable = plt.cm.ScalarMappable(cmap=colormap, norm=plt.Normalize(0.0, 1.0))
        fig.colorbar(mappable, ax=axes[0].tolist(), fraction=0.02, pad=0.01, label="P(IDC)")
    if outcome_counts is not None:
        handles = [
            Patch(color=colour, label=f"{name} ({outcome_counts.get(name, 0)})")
            for name, colour in OUTCOME_COLOURS.items()
        ]
        fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
