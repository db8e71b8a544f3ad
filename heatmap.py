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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.labels_only and FLAGS.workdir is None:
        raise app.UsageError("--workdir is required (or pass --labels_only for the ground truth)")
    from idc_inference.patient_maps import slide_maps

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
