"""Slide maps of one patient's Kaggle patches: the tissue mosaic, P(IDC) and TP/FP/FN/TN maps.

The Kaggle file name `<patient>_idx5_x<X>_y<Y>_class<C>.png` gives the tile's 1-based top-left
pixel, so the slide is rebuilt by putting each patch's pixels at row Y-1, column X-1 of a white
canvas (`idc_inference.mosaic`). `slide_maps` writes, to its output folder:

- mosaic.png: the rebuilt slide at full resolution;
- ground_truth.png: the annotated IDC region (patches labelled 1 tinted red), when labels are known;
- p_idc.png (with a model): each tissue patch tinted by its P(IDC) on the `inferno` colormap;
- outcomes.png (with a model and labels): TP red, FN blue, FP amber, TN green;
- slide_maps.png: the maps side by side, downscaled, with a colour bar and the outcome counts;
- predictions.csv (with a model), unreadable.txt (files that could not be read or placed) and
  summary.json (counts, the model's record (`IDCModel.describe`: source, checkpoint, step,
  threshold, TTA, code version), outcome counts, images/s).
"""

from __future__ import annotations

import pathlib

import numpy as np

from idc_inference import mosaic, patch_files, slide_outputs
from input_pipeline.patches import find_png_files

COLORMAP = "inferno"
IDC_RED = (0.85, 0.10, 0.10)


class PatientFolderError(ValueError):
    """A folder that gives no slide map: no placeable patch, or patches of several patients."""


def slide_maps(
    patient_dir: str | pathlib.Path,
    output_dir: str | pathlib.Path,
    *,
    model=None,
    opacity: float = 0.5,
    progress: bool = False,
) -> dict:
    """Writes the slide maps of the patches under `patient_dir`; returns a summary of what it did.

    `model` is an `idc_inference.model.IDCModel` (`idc_inference.load`): its predictor, threshold
    and TTA make the P(IDC) and outcome maps, its `describe()` goes into summary.json. Without a
    model only the mosaic and the ground truth are rendered.
    """
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files, errors = find_png_files([patient_dir])
    predictor = model.predictor if model is not None else None
    step = model.step if model is not None else None
    if model is not None:
        predictions = model.predict_files(files, keep_images=True, progress=progress)
    else:
        predictions = patch_files.predict_files(None, files, keep_images=True, progress=progress)
    errors += predictions.errors

    # Only patches whose names give their slide position can be placed.
    placeable = np.array([n.x is not None for n in predictions.names], bool)
    for path, name in zip(predictions.files, predictions.names):
        if name.x is None:
            errors.append((path, "file name gives no slide position (x, y)"))
    patients = {n.patient for n in predictions.names if n.patient is not None}
    if len(patients) > 1:
        raise PatientFolderError(
            f"{patient_dir} holds patches of {len(patients)} patients ({sorted(patients)[:5]}...); "
            "a slide map needs the folder of one patient"
        )
    if not placeable.any():
        raise PatientFolderError(
            f"no readable patch with a Kaggle-style name (<patient>_idx5_x<X>_y<Y>...png) under "
            f"{patient_dir}: a slide map places each patch by the x and y of its name"
        )
    names = [n for n, ok in zip(predictions.names, placeable) if ok]
    images = predictions.images[placeable]
    placement = mosaic.SlidePlacement.from_names(
        names, predictions.heights[placeable], predictions.widths[placeable]
    )
    labels = predictions.labels[placeable]
    p_idc = predictions.p_idc[placeable]

    canvas = mosaic.build_mosaic(images, placement)
    mosaic.save_png(output_dir / "mosaic.png", canvas)
    panels = [("tissue", canvas)]
    summary = {
        "patient": next(iter(patients)) if patients else None,
        "patches_placed": int(placeable.sum()),
        "unreadable_or_unplaced": len(errors),
        "canvas_height_width": list(canvas.shape[:2]),
        "labels_known": int(np.sum(labels >= 0)),
        "idc_patches_labelled": int(np.sum(labels == 1)),
    }
    if (labels >= 0).any():
        truth = mosaic.overlay_patches(
            canvas,
            placement,
            np.broadcast_to(IDC_RED, (len(labels), 3)),
            opacity=opacity,
            skip=labels != 1,
        )
        mosaic.save_png(output_dir / "ground_truth.png", truth)
        panels.append(("ground truth (IDC in red)", truth))
    outcome_counts = None
    if predictor is not None:
        cut = model.threshold
        overlay = mosaic.overlay_patches(
            canvas, placement, mosaic.probability_colours(p_idc, COLORMAP), opacity=opacity
        )
        mosaic.save_png(output_dir / "p_idc.png", overlay)
        panels.append(("P(IDC)", overlay))
        patch_files.write_predictions_csv(output_dir / "predictions.csv", predictions, cut)
        decisions = patch_files.predicted_labels(p_idc, cut)
        summary.update(
            checkpoint_step=step,
            threshold=cut,
            tta=model.tta,
            model=model.describe(),
            predicted_idc_patches=int(decisions.sum()),
            images_per_second=predictions.images_per_second,
        )
        if (labels >= 0).any():
            outcome = mosaic.outcomes(labels, decisions)
            outcome_counts = {k: int(np.sum(outcome == k)) for k in mosaic.OUTCOME_COLOURS}
            outcome_map = mosaic.overlay_patches(
                canvas,
                placement,
                mosaic.outcome_colours(outcome),
                opacity=opacity,
                skip=outcome == "",
            )
            mosaic.save_png(output_dir / "outcomes.png", outcome_map)
            panels.append((f"outcomes at threshold {cut:.3g}", outcome_map))
            summary["outcomes"] = outcome_counts
    patch_files.write_errors(output_dir / "unreadable.txt", errors)
    title = f"patient {summary['patient']}: {summary['patches_placed']} patches"
    if step is not None:
        title += f", {model.name} step {step}" + (" (8-view TTA)" if model.tta else "")
    mosaic.save_slide_figure(
        output_dir / "slide_maps.png",
        panels,
        title=title,
        colormap=COLORMAP if predictor is not None else None,
        outcome_counts=outcome_counts,
    )
    slide_outputs.write_json(output_dir / "summary.json", summary)
    return summary
