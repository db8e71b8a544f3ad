"""A trained IDC model in three lines: `load`, then `predict`.

    import idc_inference
    model = idc_inference.load()                 # the shipped model (idc_inference/shipped/)
    p_idc = model.predict(patches)               # uint8 RGB [N, H, W, 3] -> float32 P(IDC) [N]

`load(workdir)` takes a training run's --workdir (an orbax checkpoint) or an inference-weights
file (`idc_inference.weights`); without one it loads the shipped model, which needs no orbax,
no network and no pickle. TTA and threshold default to the run's own evaluation settings: the
8-view TTA when the run evaluated with `eval_tta`, and the threshold tuned on its validation
patients (the one its summary.json reports), so `predict` reproduces the run's test figures.

Inputs (`prepare_patches`): RGB patches [N, H, W, 3], square.
- uint8, 0-255: as read from PNG files. Other integer arrays must hold values in 0-255.
- floating point: intensities in [0, 1] (uint8 / 255), rounded to uint8 as training's PNGs were.
  A float array with values above 1 is refused (it is most likely 0-255: divide by 255).
- H = W = 50 is the Kaggle patch and the network's training field of view. Other sizes are taken
  to show the same field of view at another resolution and are resized to 50x50 with training's
  resize (`input_pipeline.preprocessing.resize`: antialiased bilinear); patches at the Kaggle
  scale but larger must be cropped or tiled instead. Border patches cut short by the slide edge
  are padded with white to 50x50 by the file reader, as the data pipeline does.
- A neighbourhood network (`model.window` k > 1, its run's `data.window`) sees each patch with
  its surroundings: its inputs are windows of k x k patches centred on the patch judged, 50 k
  pixels a side at the Kaggle scale (150 for k = 3: 600 um), white where there is no tissue or
  slide (`input_pipeline.windows`); other sizes are taken to show the same 200 k um field.
The network then resizes to its input size (config.preprocess.image_size) inside the compiled
function, as in training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import pathlib
import time

import ml_collections
import numpy as np

from idc_inference import run_records, training_runs
from idc_inference import weights as weights_lib
from idc_inference.calibration import Calibration
from idc_inference.context_stage import ContextStage
from idc_inference.errors import ModelArgumentError, ModelSourceError
from input_pipeline import windows

SHIPPED_DIR = pathlib.Path(__file__).resolve().parent / "shipped"
SHIPPED_NAME = "mobilenet_v1_idc"
SHIPPED_WEIGHTS = SHIPPED_DIR / f"{SHIPPED_NAME}.safetensors"
PATCH_SIZE = 50  # input_pipeline.patches.PATCH_SIZE


@dataclasses.dataclass
class IDCModel:
    """P(IDC) of RGB patches by a trained network, with the run's evaluation settings."""

    predictor: object  # idc_inference.predictor.Predictor
    config: ml_collections.ConfigDict
    step: int
    tta: bool
    threshold: float
    threshold_source: str
    source: str  # "shipped" | "workdir" | "weights"
    path: pathlib.Path  # the workdir or the .safetensors file
    checkpoint: str
    trained_on: str | None = None
    record: dict | None = None  # the weights file's record (shipped or weights)
    load_seconds: float = 0.0

    @property
    def window(self) -> int:
        """Patches a side of the network's input: 1, a patch; 3, a patch and its 8 neighbours."""
        return self.predictor.window

    @property
    def input_size(self) -> int:
        """Pixels a side of the input `predict` resizes to (50 per patch of the window)."""
        return self.predictor.input_size

    @property
    def name(self) -> str:
        return self.path.stem if self.source != "workdir" else self.path.name

    @property
    def context_stage(self) -> ContextStage | None:
        """The slide-context second stage the weights carry (export_model.py fits it on the
        run's validation patients), or None (training runs, weights exported without one).

        Raises `ContextStageError` for a record this code cannot read."""
        record = (self.record or {}).get("context_stage")
        return None if record is None else ContextStage.from_record(record)

    @property
    def calibration(self) -> Calibration:
        """The map from the network's P(IDC) to a calibrated one, fitted on held-out patients
        by export_model.py (`idc_inference.calibration`); identity for training runs and
        weights exported without one. `threshold` is on the calibrated scale."""
        return Calibration.from_record((self.record or {}).get("calibration"))

    def predict(self, patches) -> np.ndarray:
        """P(IDC), float32 [N], of the network's inputs [N, H, W, 3] (see the module
        docstring): patches, or for a neighbourhood network their windows; calibrated when the
        model carries a calibration. A neighbourhood network refuses bare 50x50 patches:
        `predict_patches` builds their windows from where they lie."""
        array = np.asarray(patches)
        if self.window > 1 and array.ndim == 4 and array.shape[1:3] == (PATCH_SIZE, PATCH_SIZE):
            raise ValueError(
                f"this model sees each patch with its neighbours: its inputs are windows of "
                f"{self.window} x {self.window} patches ({self.input_size}x{self.input_size} "
                "pixels at the Kaggle scale), not 50x50 patches; pass the patches with their "
                "grid positions to model.predict_patches(patches, x, y), or PNG files to "
                "model.predict_files"
            )
        images = prepare_patches(
            array, resize_method=self.config.preprocess.resize_method, size=self.input_size
        )
        return self.calibration.apply(self.predictor(images))

    def predict_patches(self, patches, x, y, patient=None) -> np.ndarray:
        """P(IDC) of 50x50 patches at the Kaggle grid positions `x`, `y` (1-based top-left
        pixels, as in the Kaggle file names; `patient` when they come from several slides):
        a neighbourhood network sees each with its neighbours among them (white where none),
        a patch network each alone."""
        images = prepare_patches(patches, resize_method=self.config.preprocess.resize_method)
        if self.window == 1:
            return self.predict(images)
        x, y = np.asarray(x), np.asarray(y)
        if not (len(x) == len(y) == len(images)):
            raise ValueError(
                f"one x and one y per patch: {len(images)} patches, {len(x)} x, {len(y)} y"
            )
        patient = np.zeros(len(images), np.int64) if patient is None else np.asarray(patient)
        rows = windows.window_rows(patient, x, y, self.window)
        return self.predict(windows.assemble_windows(images, rows))

    def predict_files(self, files, **options):
        """`patch_files.predict_files` of PNG files by this model, P(IDC) calibrated as
        `predict`'s; `options` are predict_files' (keep_images, num_threads, progress)."""
        from idc_inference import patch_files  # noqa: PLC0415

        predictions = patch_files.predict_files(self.predictor, files, **options)
        return dataclasses.replace(predictions, p_idc=self.calibration.apply(predictions.p_idc))

    def classify(self, patches) -> np.ndarray:
        """1 (IDC) where P(IDC) >= the model's threshold, else 0; int32 [N]."""
        return (self.predict(patches) >= self.threshold).astype(np.int32)

    def describe(self) -> dict:
        """What produced a prediction: written beside every output (JSON-serialisable)."""
        return {
            "source": self.source,
            "name": self.name,
            "path": str(self.path),
            "trained_on": self.trained_on,
            "model": self.config.model.name,
            "alpha": self.config.model.alpha,
            "image_size": self.config.preprocess.image_size,
            "window": self.window,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "tta": self.tta,
            "calibration": self.calibration.kind,
            "code_version": run_records.code_version(),
        }

    def announce(self) -> str:
        """One line for a program's output: which model is used."""
        if self.source == "shipped":
            return f"using the shipped model {self.name} (trained on {self.trained_on})"
        views = "8-view TTA" if self.tta else "1 view"
        return (
            f"using {self.source} {self.path} (checkpoint step {self.step}, {views}, threshold "
            f"{self.threshold:.4g})"
        )


def load(
    workdir: str | os.PathLike | None = None,
    *,
    checkpoint: str = "latest",
    tta: bool | None = None,
    threshold: float | str | None = None,
    batch_size: int = 256,
) -> IDCModel:
    """The model of a training run, of a weights file, or (workdir None) the shipped one.

    checkpoint: "latest", "best" (by validation balanced accuracy) or a step number (training
      runs only; a weights file holds one checkpoint).
    tta: average P(IDC) over the 8 dihedral views; None = as the run evaluated (`eval_tta`).
    threshold: P(IDC) at or above which `classify` calls IDC: a number in [0, 1], "validation"
      or None (both: the threshold tuned on the run's validation patients at that checkpoint).
    batch_size: patches per compiled call (rounded up to a multiple of the devices).
    """
    start = time.perf_counter()
    from idc_inference.predictor import Predictor  # noqa: PLC0415

    checkpoint = str(checkpoint)
    given_threshold = None
    if threshold is not None and threshold != "validation":
        given_threshold = _threshold(threshold)  # before anything is loaded
    if workdir is None:
        model = _from_weights(SHIPPED_WEIGHTS, "shipped", checkpoint)
    else:
        path = pathlib.Path(workdir)
        if path.suffix in (".safetensors", ".json") and path.is_file():
            model = _from_weights(path, "weights", checkpoint)
        else:
            model = _from_workdir(path, checkpoint)
    network, fields = model
    default_tta = fields.pop("default_tta")
    tta = default_tta if tta is None else bool(tta)
    if given_threshold is not None:
        fields["threshold"] = given_threshold
        fields["threshold_source"] = "given"
    config = fields["config"]
    predictor = Predictor(
        network,
        config.preprocess,
        batch_size=batch_size,
        tta=tta,
        window=windows.window_size(config),
    )
    result = IDCModel(predictor=predictor, tta=tta, **fields)
    result.load_seconds = time.perf_counter() - start
    return result


def _threshold(value) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise ModelArgumentError(
            f'the threshold must be a number in [0, 1] or "validation", not {value!r}'
        ) from None
    if not 0.0 <= threshold <= 1.0:
        raise ModelArgumentError(f"the threshold must lie in [0, 1], got {threshold}")
    return threshold


def _from_weights(path: pathlib.Path, source: str, checkpoint: str):
    if source == "shipped" and not (path.is_file() and weights_lib.sidecar_path(path).is_file()):
        raise ModelSourceError(
            f"the shipped model is missing ({path}): reinstall the package, or pass a workdir"
        )
    weights = weights_lib.read_weights(path)
    if checkpoint not in ("latest", str(weights.step)):
        raise ModelArgumentError(
            f"{weights.path} holds one checkpoint (step {weights.step}); checkpoint "
            f"{checkpoint!r} applies to training runs only"
        )
    return weights.network(), dict(
        config=weights.config,
        step=weights.step,
        threshold=weights.threshold,
        threshold_source=weights.record["threshold"]["source"],
        source=source,
        path=weights.path,
        checkpoint=weights.record.get("checkpoint", "latest"),
        trained_on=weights.record.get("trained_on"),
        record=weights.record,
        default_tta=weights.tta,
    )


def _from_workdir(path: pathlib.Path, checkpoint: str):
    rundir = training_runs.run_directory(path)
    if not path.is_dir():
        raise ModelSourceError(f"{path} does not exist: give the --workdir of a training run")
    if not rundir.config_file.is_file():
        raise ModelSourceError(
            f"{path} is not a training run (no config.json in it): give the --workdir of a "
            "training run, or leave --workdir out for the shipped model"
        )
    steps = (
        sorted(
            int(p.name) for p in rundir.checkpoint_dir.glob("*") if p.name.isdigit() and p.is_dir()
        )
        if rundir.checkpoint_dir.is_dir()
        else []
    )
    if not steps:
        raise ModelSourceError(f"{path} has no checkpoint yet: train it first")
    if checkpoint not in ("latest", "best") and checkpoint not in map(str, steps):
        raise ModelArgumentError(
            f'checkpoint {checkpoint!r} is not in {rundir.checkpoint_dir}: "latest", "best" or '
            f"one of the steps {steps}"
        )
    try:
        with quiet_orbax():
            config, network, step = rundir.restore_model(checkpoint)
    except FileNotFoundError as error:  # "no best checkpoint in ..."
        raise ModelSourceError(str(error)) from None
    threshold, threshold_source = run_records.run_threshold(rundir, step)
    summary = rundir.summary()
    return network, dict(
        config=config,
        step=step,
        threshold=threshold,
        threshold_source=threshold_source,
        source="workdir",
        path=rundir.path,
        checkpoint=checkpoint,
        trained_on=run_records.trained_on(summary) if summary else None,
        record=None,
        default_tta=bool(config.get("eval_tta", False)),
    )


@contextlib.contextmanager
def quiet_orbax():
    """Drops orbax's log records while a checkpoint is restored read-only: it warns that a
    read-only manager saves nothing ("setting save_interval_steps=0", "Given directory is read
    only"), which says nothing to someone predicting."""

    def from_orbax(record: logging.LogRecord) -> bool:
        return "orbax" not in record.pathname

    loggers = [logging.getLogger(), logging.getLogger("absl")]
    for logger in loggers:
        logger.addFilter(from_orbax)
        for handler in logger.handlers:
            handler.addFilter(from_orbax)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(from_orbax)
            for handler in logger.handlers:
                handler.removeFilter(from_orbax)


# ----------------------------------------------------------------------------- inputs


def prepare_patches(
    patches, *, resize_method: str = "bilinear", size: int = PATCH_SIZE
) -> np.ndarray:
    """RGB patches [N, H, W, 3] (uint8 0-255, or floats in [0, 1]) -> uint8 [N, size, size, 3]
    (`size` 50 for a patch network, 50 k for a window of k x k patches).

    Raises ValueError with what is wrong and what to do: wrong rank, channel count, non-square
    patches, values out of range.
    """
    array = np.asarray(patches)
    if array.ndim == 3 and array.shape[-1] == 3:
        raise ValueError(
            f"patches must be an array [N, H, W, 3]; got one image of shape {array.shape}: "
            "pass image[None] for a single patch"
        )
    if array.ndim != 4:
        raise ValueError(
            f"patches must be an array [N, H, W, 3] of N RGB patches; got shape {array.shape}"
        )
    n, height, width, channels = array.shape
    if channels != 3:
        raise ValueError(
            f"patches must have 3 channels (RGB) in the last axis; got {channels} (shape "
            f"{array.shape}): convert grayscale or RGBA to RGB (RGBA composited on white, as the "
            "data pipeline does), or move the channel axis last"
        )
    if height != width or height == 0:
        raise ValueError(
            f"patches must be square; got {height}x{width}: pad a patch cut short by the slide "
            "border with white (255) to 50x50, as the data pipeline does, or crop"
        )
    if array.dtype == np.uint8:
        images = array
    elif array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"patches must be uint8 (0-255) or floats in [0, 1], not {array.dtype}")
    elif np.issubdtype(array.dtype, np.integer):
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(
                f"integer patches must hold values in 0-255; got {low}..{high} ({array.dtype})"
            )
        images = array.astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and not np.all(np.isfinite(array)):
            raise ValueError("float patches contain NaN or infinity")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"float patches must hold intensities in [0, 1] (uint8 / 255); got values in "
                f"[{low:.4g}, {high:.4g}]: pass uint8 arrays, or divide 0-255 floats by 255"
            )
        images = np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"patches must be uint8 (0-255) or floats in [0, 1], not {array.dtype}")
    if height != size and n:
        images = resize_patches(images, size, resize_method)
    return np.ascontiguousarray(images)


@functools.cache
def _resize_function(size: int, method: str):
    import jax  # noqa: PLC0415

    from input_pipeline.preprocessing import resize  # noqa: PLC0415

    return jax.jit(lambda x: resize(x.astype("float32"), size, method))


def resize_patches(
    images: np.ndarray, size: int, method: str = "bilinear", chunk: int = 1024
) -> np.ndarray:
    """uint8 [N, H, H, 3] -> uint8 [N, size, size, 3] with training's resize, rounded."""
    resize_chunk = _resize_function(size, method)
    out = np.empty((len(images), size, size, 3), np.uint8)
    for start in range(0, len(images), chunk):
        resized = np.asarray(resize_chunk(images[start : start + chunk]))
        out[start : start + chunk] = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return out
