"""Slide maps of one patient: the tissue mosaic, the P(IDC) overlay and the TP/FP/FN/TN map.

    python heatmap.py --workdir=/tmp/idc_v1 --patient_dir=/data/IDC/8863 --output_dir=/tmp/8863
    python heatmap.py --labels_only --patient_dir=/data/IDC/8863 --output_dir=/tmp/8863

The Kaggle patches of a patient are tiles of one whole-slide image: the file name
`<patient>_idx5_x<X>_y<Y>_class<C>.png` gives the tile's 1-based top-left pixel, so the slide is
rebuilt by putting each patch's pixels at row Y-1, column X-1 of a white canvas (white where the
slide had no tissue patch). Written to --output_dir:

- mosaic.png: the rebuilt slide at full resolution;
- ground_truth.png: the annotated IDC region (patches labelled 1 tinted red), when labels are known;
- p_idc.png (with a model): each tissue patch tinted by its P(IDC) on the `inferno` colormap;
- outcomes.png (with a model and labels): TP red, FN blue, FP amber, TN green;
- slide_maps.png: the maps side by side, downscaled, with a colour bar and the outcome counts;
- predictions.csv (with a model), and unreadable.txt listing files that could not be read.

--labels_only needs no model: it renders the mosaic and the ground truth.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags when this file runs as a program (predict.py says why)."""
    flags.DEFINE_string("workdir", None, "Training run whose checkpoint predicts P(IDC).")
    flags.DEFINE_string("checkpoint", "latest", '"latest", "best" or a step number.')
    flags.DEFINE_string(
        "patient_dir", None, "Folder of one patient's patches (searched recursively)."
    )
    flags.DEFINE_string("output_dir", None, "Where the PNGs go (created).")
    flags.DEFINE_bool(
        "labels_only", False, "Render the mosaic and ground truth only, without a model."
    )
    flags.DEFINE_bool("tta", False, "Average P(IDC) over the 8 dihedral views of each patch.")
    flags.DEFINE_string(
        "threshold",
        "0.5",
        'P(IDC) at or above which a patch is called IDC: a number or "validation".',
    )
    flags.DEFINE_integer("batch_size", 256, "Patches per compiled batch.")
    flags.DEFINE_float("opacity", 0.5, "Opacity of the colour tint over the tissue.")
    flags.mark_flags_as_required(["patient_dir", "output_dir"])


COLORMAP = "inferno"
IDC_RED = (0.85, 0.10, 0.10)


def slide_maps(
    patient_dir: str | pathlib.Path,
    output_dir: str | pathlib.Path,
    *,
    workdir: str | pathlib.Path | None = None,
    checkpoint: str = "latest",
    tta: bool = False,
    threshold: str = "0.5",
    batch_size: int = 256,
    opacity: float = 0.5,
) -> dict:
    """Writes the slide maps of the patches under `patient_dir`; returns a summary of what it did.

    Without `workdir` only the mosaic and the ground truth are rendered.
    """
    from input_pipeline.patches import find_png_files
    from trainer import inference, slides, writers

    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files, errors = find_png_files([patient_dir])
    predictor, step = None, None
    if workdir is not None:
        predictor, _, step = inference.Predictor.from_workdir(
            workdir, checkpoint, batch_size=batch_size, tta=tta
        )
    predictions = inference.predict_files(predictor, files, keep_images=True)
    errors += predictions.errors

    # Only patches whose names give their slide position can be placed.
    placeable = np.array([n.x is not None for n in predictions.names], bool)
    for path, name in zip(predictions.files, predictions.names):
        if name.x is None:
            errors.append((path, "file name gives no slide position (x, y)"))
    patients = {n.patient for n in predictions.names if n.patient is not None}
    if len(patients) > 1:
        raise ValueError(
            f"{patient_dir} holds patches of {len(patients)} patients ({sorted(patients)[:5]}...); "
            "a slide map needs the folder of one patient"
        )
    if not placeable.any():
        raise ValueError(f"no patch with a Kaggle-style name (x, y) found under {patient_dir}")
    names = [n for n, ok in zip(predictions.names, placeable) if ok]
    images = predictions.images[placeable]
    placement = slides.SlidePlacement.from_names(
        names, predictions.heights[placeable], predictions.widths[placeable]
    )
    labels = predictions.labels[placeable]
    p_idc = predictions.p_idc[placeable]

    mosaic = slides.build_mosaic(images, placement)
    slides.save_png(output_dir / "mosaic.png", mosaic)
    panels = [("tissue", mosaic)]
    summary = {
        "patient": next(iter(patients)) if patients else None,
        "patches_placed": int(placeable.sum()),
        "unreadable_or_unplaced": len(errors),
        "canvas_height_width": list(mosaic.shape[:2]),
        "labels_known": int(np.sum(labels >= 0)),
        "idc_patches_labelled": int(np.sum(labels == 1)),
    }
    if (labels >= 0).any():
        truth = slides.overlay_patches(
            mosaic,
            placement,
            np.broadcast_to(IDC_RED, (len(labels), 3)),
            opacity=opacity,
            skip=labels != 1,
        )
        slides.save_png(output_dir / "ground_truth.png", truth)
        panels.append(("ground truth (IDC in red)", truth))
    outcome_counts = None
    if predictor is not None:
        cut = inference.resolve_threshold(threshold, workdir, step)
        overlay = slides.overlay_patches(
            mosaic, placement, slides.probability_colours(p_idc, COLORMAP), opacity=opacity
        )
        slides.save_png(output_dir / "p_idc.png", overlay)
        panels.append(("P(IDC)", overlay))
        inference.write_predictions_csv(output_dir / "predictions.csv", predictions, cut)
        decisions = inference.predicted_labels(p_idc, cut)
        summary.update(
            checkpoint_step=step,
            threshold=cut,
            tta=tta,
            predicted_idc_patches=int(decisions.sum()),
            images_per_second=predictions.images_per_second,
        )
        if (labels >= 0).any():
            outcome = slides.outcomes(labels, decisions)
            outcome_counts = {k: int(np.sum(outcome == k)) for k in slides.OUTCOME_COLOURS}
            outcome_map = slides.overlay_patches(
                mosaic,
                placement,
                slides.outcome_colours(outcome),
                opacity=opacity,
                skip=outcome == "",
            )
            slides.save_png(output_dir / "outcomes.png", outcome_map)
            panels.append((f"outcomes at threshold {cut:.3g}", outcome_map))
            summary["outcomes"] = outcome_counts
    inference.write_errors(output_dir / "unreadable.txt", errors)
    title = f"patient {summary['patient']}: {summary['patches_placed']} patches"
    if step is not None:
        title += f", {pathlib.Path(workdir).name} step {step}" + (" (8-view TTA)" if tta else "")
    slides.save_slide_figure(
        output_dir / "slide_maps.png",
        panels,
        title=title,
        colormap=COLORMAP if predictor is not None else None,
        outcome_counts=outcome_counts,
    )
    writers.write_json(output_dir / "summary.json", summary)
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.labels_only and FLAGS.workdir is None:
        raise app.UsageError("--workdir is required (or pass --labels_only for the ground truth)")
    summary = slide_maps(
        FLAGS.patient_dir,
        FLAGS.output_dir,
        workdir=None if FLAGS.labels_only else FLAGS.workdir,
        checkpoint=FLAGS.checkpoint,
        tta=FLAGS.tta,
        threshold=FLAGS.threshold,
        batch_size=FLAGS.batch_size,
        opacity=FLAGS.opacity,
    )
    if summary["unreadable_or_unplaced"]:
        print(
            f"{summary['unreadable_or_unplaced']} files unreadable or unplaced: see "
            f"{pathlib.Path(FLAGS.output_dir) / 'unreadable.txt'}",
            file=sys.stderr,
        )
    logging.info("slide maps: %s", summary)
    print(f"wrote the slide maps of patient {summary['patient']} to {FLAGS.output_dir}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
