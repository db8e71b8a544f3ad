"""Slide maps of one patient: the tissue mosaic, the P(IDC) overlay and the TP/FP/FN/TN map.

    python heatmap.py --patient_dir=data/idc_sample/9226 --output_dir=/tmp/9226   # shipped model
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
- predictions.csv (with a model), unreadable.txt listing files that could not be read, and
  summary.json: counts, outcome counts, images/s and the model (source, checkpoint, step,
  threshold, TTA, code version).

--workdir: a training run or an inference-weights file; without it the shipped model
(MODEL_CARD.md). --tta and --threshold default to the run's own evaluation settings, as in
predict.py. --labels_only needs no model: it renders the mosaic and the ground truth.
Exit status 2 with one line when the folder does not exist or holds no placeable patch.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from idc_inference import model_flags
from idc_inference.errors import USER_ERRORS
from trainer import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags when this file runs as a program (predict.py says why)."""
    model_flags.define()
    flags.DEFINE_string(
        "patient_dir", None, "Folder of one patient's patches (searched recursively)."
    )
    flags.DEFINE_string("output_dir", None, "Where the PNGs go (created).")
    flags.DEFINE_bool(
        "labels_only", False, "Render the mosaic and ground truth only, without a model."
    )
    flags.DEFINE_float("opacity", 0.5, "Opacity of the colour tint over the tissue.")
    flags.mark_flags_as_required(["patient_dir", "output_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    patient_dir = pathlib.Path(FLAGS.patient_dir)
    if not patient_dir.is_dir():
        raise cli.UserError(
            f"--patient_dir {patient_dir} does not exist (or is not a folder): give the folder "
            "of one patient's patches"
        )
    from idc_inference import patient_maps  # noqa: PLC0415
    from input_pipeline.patches import find_png_files  # noqa: PLC0415

    if not find_png_files([patient_dir])[0]:
        raise cli.UserError(f"no PNG file under --patient_dir {patient_dir}")

    model = None
    if not FLAGS.labels_only:
        model = model_flags.load_model()
        print(model.announce(), flush=True)
    try:
        summary = patient_maps.slide_maps(
            patient_dir, FLAGS.output_dir, model=model, opacity=FLAGS.opacity, progress=True
        )
    except patient_maps.PatientFolderError as error:
        raise cli.UserError(str(error)) from None
    if summary["unreadable_or_unplaced"]:
        print(
            f"{summary['unreadable_or_unplaced']} files unreadable or unplaced: see "
            f"{pathlib.Path(FLAGS.output_dir) / 'unreadable.txt'}",
            file=sys.stderr,
        )
    line = f"patient {summary['patient']}: {summary['patches_placed']} patches placed"
    if model is not None:
        line += (
            f", {summary['predicted_idc_patches']} called IDC at threshold "
            f"{summary['threshold']:.4g}, {summary['images_per_second']:.1f} images/s"
        )
    print(line)
    print(f"wrote the slide maps of patient {summary['patient']} to {FLAGS.output_dir}")


if __name__ == "__main__":
    define_flags()
    cli.run(main, user_errors=USER_ERRORS)
