"""Ground truth for a slide's map: reading it, and the map's agreement with it.

    labels = read_labels("truth.csv", slide)            # LabelsError if unusable
    report, truth = compare_with_labels(labels, grid, p_idc, threshold, found, mm2_per_px2)

A labels file gives tile-sized squares and their labels (1 = IDC), either as level-0 pixels or
as Kaggle patch names (`read_labels`). The agreement is measured two ways: per tile, over the
labelled tiles that were analysed (ROC AUC, confusion counts at the threshold), and per area,
as the Dice of the IDC regions against the union of the labelled IDC squares
(`compare_with_labels`), so that IDC the tissue detector skipped counts as missed.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib

import numpy as np

from evaluation import metrics
from idc_inference import regions, slide_files
from idc_inference.slide_tiles import TileGrid
from input_pipeline.patches import parse_patch_name


class LabelsError(Exception):
    """A ground-truth file that cannot be used; the message names it and says why."""


@dataclasses.dataclass
class Labels:
    """Ground truth: level-0 top-left corners of tiles and their labels (1 = IDC)."""

    left: np.ndarray
    top: np.ndarray
    label: np.ndarray
    path: str


def read_labels(path: str | os.PathLike, slide: slide_files.Slide) -> Labels:
    """Reads a ground-truth CSV with a header.

    Either columns `x`, `y`, `label`: the level-0 top-left pixel (0-based) of a tile-sized
    square and its label (0/1); or a column `file` of Kaggle patch names
    (`<patient>_idx5_x<X>_y<Y>_class<C>.png`, as predict.py writes), whose 1-based coordinates
    on the 4 um/px grid are converted to this slide's level 0.
    """
    path = pathlib.Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = list(reader)
    except OSError as error:
        raise LabelsError(f"{path}: cannot be read ({error.strerror or error})") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise LabelsError(f"{path}: not a CSV file ({error})") from None
    left, top, label = [], [], []
    if {"x", "y", "label"} <= set(header):
        for line, row in enumerate(rows, start=2):
            try:
                x, y, value = float(row["x"]), float(row["y"]), int(row["label"])
            except (TypeError, ValueError):
                raise LabelsError(f"{path}, line {line}: x, y and label must be numbers") from None
            if value not in (0, 1):
                raise LabelsError(f"{path}, line {line}: label must be 0 or 1, got {value}")
            left.append(x)
            top.append(y)
            label.append(value)
    elif "file" in header:
        factor_x = slide_files.KAGGLE_PATCH_MPP / slide.scale.mpp_x
        factor_y = slide_files.KAGGLE_PATCH_MPP / slide.scale.mpp_y
        for line, row in enumerate(rows, start=2):
            name = parse_patch_name(pathlib.Path(row["file"] or "").name)
            if name.x is None or name.label is None:
                raise LabelsError(
                    f"{path}, line {line}: {row['file']!r} is not a Kaggle patch name with a class"
                )
            left.append((name.x - 1) * factor_x)
            top.append((name.y - 1) * factor_y)
            label.append(name.label)
    else:
        raise LabelsError(
            f"{path}: needs columns x, y, label (level-0 pixels) or file (Kaggle patch names); "
            f"it has {', '.join(header) or 'none'}"
        )
    if not label:
        raise LabelsError(f"{path}: no labelled tile in it")
    return Labels(np.array(left), np.array(top), np.array(label, np.int64), str(path))


def compare_with_labels(
    labels: Labels,
    grid: TileGrid,
    p_idc: np.ndarray,
    threshold: float,
    found: list[regions.Region],
    mm2_per_px2: float,
) -> tuple[dict, np.ndarray]:
    """Agreement of the map with the ground truth, and the true label of each analysed tile
    (-1 where unlabelled).

    A label belongs to the grid tile nearest its corner. Tile-level metrics are over the labelled
    tiles that were analysed; Dice compares the IDC regions with the union of the labelled IDC
    squares, so labelled IDC that the tissue detector skipped counts as missed.
    """
    size = grid.size
    label_cols = np.round(labels.left / size[0]).astype(np.int64)
    label_rows = np.round(labels.top / size[1]).astype(np.int64)
    offset = np.maximum(
        np.abs(labels.left - label_cols * size[0]) / size[0],
        np.abs(labels.top - label_rows * size[1]) / size[1],
    )
    index = {(int(c), int(r)): i for i, (c, r) in enumerate(zip(grid.cols, grid.rows))}
    truth = np.full(len(grid.cols), -1, np.int64)
    for c, r, value in zip(label_cols, label_rows, labels.label):
        i = index.get((int(c), int(r)))
        if i is not None:
            truth[i] = value
    known = truth >= 0
    report = {
        "file": labels.path,
        "labelled": int(len(labels.label)),
        "labelled_idc": int(labels.label.sum()),
        "labelled_and_analysed": int(known.sum()),
        "labelled_not_analysed": int(len(labels.label) - known.sum()),
        "labelled_idc_not_analysed": int(labels.label.sum() - (truth == 1).sum()),
        "max_offset_from_grid": float(offset.max()),
    }
    if known.any():
        tile_metrics = metrics.binary_metrics(truth[known], p_idc[known], threshold)
        report["tiles"] = {
            k: tile_metrics[k]
            for k in (
                "num_examples",
                "roc_auc",
                "pr_auc",
                "balanced_accuracy",
                "recall",
                "specificity",
                "precision",
                "f1",
                "accuracy",
                "tp",
                "fp",
                "fn",
                "tn",
            )
        }
    truth_idc = labels.label == 1
    truth_area = regions.squares(labels.left[truth_idc], labels.top[truth_idc], size)
    found_area = regions.union(found)
    report["dice_regions_vs_labelled_idc"] = regions.dice(found_area, truth_area)
    report["labelled_idc_area_mm2"] = truth_area.area * mm2_per_px2
    return report, truth
