"""P(IDC) of PNG patch files, and the CSV of predictions.

files, unreadable = patches.find_png_files(["data/idc_sample/9383"])
result = predict_files(predictor, files)           # P(IDC) of every readable file
write_predictions_csv("preds.csv", result, threshold=0.5)
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from idc_inference import tiles, training_runs
from idc_inference.predictor import Predictor
from input_pipeline.patches import (
    PatchName,
    find_png_files,
    parse_patch_name,
)

CSV_COLUMNS = ("file", "patient", "x", "y", "p_idc", "predicted_label", "true_label")


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
    progress: bool = False,
) -> FilePredictions:
    """Reads and predicts `files` batch by batch; unreadable files are collected, never raised.

    The files go through the same streaming pipeline as a slide's tiles (`idc_inference.tiles`):
    decoding in threads overlaps the network, batches are dispatched as soon as they are full.
    With `predictor=None` nothing is predicted (p_idc is NaN): the slide maps of the ground truth
    need only the images. A neighbourhood network's windows are made of the neighbouring files
    among `files` (`tiles.PngFiles`): give it a patient's whole folder, not single files.
    """
    files = list(files)
    result = tiles.stream(
        tiles.PngFiles(files, window=getattr(predictor, "window", 1)),
        predictor,
        num_threads=num_threads,
        keep_images=keep_images,
        progress=progress,
    )
    kept = [files[i] for i in result.indices]
    return FilePredictions(
        files=kept,
        names=[parse_patch_name(path.name) for path in kept],
        p_idc=result.p_idc,
        heights=result.heights,
        widths=result.widths,
        errors=[(files[i], reason) for i, reason in result.errors],
        seconds=result.seconds,
        images=result.images,
    )


# ----------------------------------------------------------------------------- decisions and CSV


def resolve_threshold(spec: str, workdir: str | os.PathLike, step: int) -> float:
    """`spec` is a number in [0, 1] or "validation" (the run's recorded validation threshold)."""
    if spec == "validation":
        return training_runs.run_directory(workdir).validation_threshold(step)
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


def predict_to_csv(
    workdir: str,
    paths: list[str],
    output: str,
    *,
    checkpoint: str = "latest",
    tta: bool = False,
    threshold: str = "0.5",
    batch_size: int = 256,
    num_threads: int = 8,
) -> dict:
    """Predicts every PNG under `paths`, writes `output` and `output`.errors.txt; returns counts."""
    files, errors = find_png_files(paths)
    predictor, _, step = Predictor.from_workdir(workdir, checkpoint, batch_size=batch_size, tta=tta)
    cut = resolve_threshold(threshold, workdir, step)
    predictions = predict_files(predictor, files, num_threads=num_threads)
    errors += predictions.errors
    write_predictions_csv(output, predictions, cut)
    write_errors(f"{output}.errors.txt", errors)
    return {
        "predicted": len(predictions.files),
        "unreadable": len(errors),
        "errors": errors,
        "checkpoint_step": step,
        "threshold": cut,
        "tta": tta,
        "batch_size": predictor.batch_size,
        "compile_seconds": predictor.compile_seconds,
        "seconds": predictions.seconds,
        "images_per_second": predictions.images_per_second,
    }
