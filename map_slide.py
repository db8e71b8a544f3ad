"""IDC maps of whole-slide images: P(IDC) over the tissue, and the regions for QuPath.

    python map_slide.py --output_dir=/tmp/maps data/demo_slide/8955.tiff
    python map_slide.py --output_dir=maps --workdir=/tmp/idc_v1 --labels=truth.csv slide.svs
    python map_slide.py --output_dir=maps --mpp=0.25 slide_without_scale.tiff other.ndpi
    python map_slide.py --output_dir=/tmp/maps --context data/demo_slide/8955.tiff

Reads: SLIDE files in any format OpenSlide reads (Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs,
Leica .scn, Philips and generic tiled .tiff, DICOM, ...), tile by tile (a slide is never held in
memory), and the model: the one shipped with the package, or --workdir (a training run, or a
weights file), with the run's own TTA and validation-tuned threshold unless --tta/--notta and
--threshold say otherwise.

--context: each tile's P(IDC) is revised by its neighbours' on the tile grid by the model's
slide-context stage (`idc_inference/context_stage.py`), with the stage's own threshold unless
--threshold gives one. The shipped model's stage is plain smoothing: P(IDC) averaged over the
neighbours with a normalised Gaussian of sigma 1.5 tiles, called IDC at 0.315, the width and
threshold chosen on 22 whole slides that two other networks of its recipe never trained on
(`v1_slides_a`, `v1_slides_b`). export_model.py can fit a smoothing or a learned stage (a logistic
regression over smoothed P(IDC)) for other weights; a training run's --workdir has none. IDC is a
region: on 27 whole slides held out of training, smoothing raised the ROC AUC of a map's own tiles
from 0.892 to 0.935 (MobileNetV1), not its balanced accuracy, and the IDC area it reports is
above the labelled on most slides (results/real_245/slide_agreement.md).

How: the slide's scale (its openslide.mpp-x/-y properties, or --mpp) sets the tiles: each
covers the field of view of one Kaggle training patch (50 pixels at 4 um per pixel, 200 um), read
from the best pyramid level and resampled to 50x50. Tissue is found on a thumbnail (Otsu on
saturation); only tiles that are at least --min_tissue tissue are predicted, in worker threads
that overlap the network, with a progress bar (tiles/s) and the throughput at the end.

Writes, to --output_dir, for each slide <stem>.*:
  overlay.png    P(IDC) blended over the thumbnail (low probability faint, not hidden), IDC regions
                 outlined, colour bar and scale bar in mm
  geojson        the IDC regions (tiles with P(IDC) >= threshold, merged): QuPath annotations
                 classified "IDC" with their mean P(IDC), in level-0 pixel coordinates
  tiles.csv      every tissue tile: level-0 x, y, width, height, tissue fraction, P(IDC), the call,
                 and the true label with --labels
  unreadable.txt tiles that could not be read (skipped and counted, never fatal), with why
  summary.json   tissue area and IDC area in mm2, IDC fraction of the tissue, tiles, level and
                 scale, model, checkpoint, threshold, TTA, throughput, warnings; with --labels,
                 tile-level ROC AUC and Dice of the regions against the labelled IDC
The files appear together when the slide is done (summary.json last); a slide that fails leaves
none. --labels: a CSV with columns x, y, label (level-0 top-left pixel of tile-sized squares) or
a column file of Kaggle patch names (e.g. predict.py's CSV); for one slide only.

Exit status: 0 when every slide was mapped (a slide without tissue gives an empty map and a
warning); 2 with one line naming the file for a slide that cannot be used (not a slide, truncated,
no scale and no --mpp), bad labels, or a model that cannot be loaded.
"""

from __future__ import annotations

import sys

from absl import app, flags

from idc_inference import model_flags
from idc_inference.errors import USER_ERRORS
from trainer import cli

FLAGS = flags.FLAGS
MAX_LISTED = 10  # unreadable tiles printed per slide; the file lists them all


def define_flags() -> None:
    """Defines the flags when this file runs as a program (predict.py says why)."""
    flags.DEFINE_string("output_dir", None, "Where the maps go (created).")
    model_flags.define(unit="tiles")
    flags.DEFINE_float(
        "mpp",
        None,
        "Micrometres per pixel at full resolution, for a slide that does not say (e.g. 0.25 for "
        "40x); overrides the slide's own value.",
    )
    flags.DEFINE_string("labels", None, "Ground truth CSV (see above), for one slide.")
    flags.DEFINE_float(
        "min_tissue", 0.1, "Tissue share of a tile at or above which it is predicted."
    )
    flags.DEFINE_integer("num_threads", 4, "Threads reading tiles.")
    flags.DEFINE_float("opacity", 0.6, "Opacity of the P(IDC) colours at high probability.")
    flags.DEFINE_float(
        "smooth_um", 0.0, "Round the regions' tile edges by this radius (um); 0 keeps them."
    )
    flags.DEFINE_bool(
        "context",
        False,
        "Revise each tile's P(IDC) by its neighbours' with the model's slide-context stage "
        "(--nocontext: the patch network alone).",
    )
    flags.DEFINE_bool("progress", True, "Show a progress bar (tiles/s) on stderr.")
    flags.mark_flags_as_required(["output_dir"])


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give at least one slide file to map")
    if not 0.0 < FLAGS.min_tissue <= 1.0:
        raise cli.UserError(f"--min_tissue must lie in (0, 1], got {FLAGS.min_tissue}")
    if FLAGS.labels is not None and len(paths) > 1:
        raise cli.UserError("--labels describes one slide; map the slides one at a time")
    from idc_inference import slide_files, slide_labels, slide_maps  # noqa: PLC0415 (flags first)

    # Every slide is checked before the model loads: a mistake costs seconds, not a compile.
    try:
        slides = [slide_files.open_slide(path, mpp=FLAGS.mpp) for path in paths]
        labels = slide_labels.read_labels(FLAGS.labels, slides[0]) if FLAGS.labels else None
    except (slide_files.SlideError, slide_labels.LabelsError) as error:
        raise cli.UserError(str(error)) from None

    model = model_flags.load_model()  # a model that cannot be loaded: one line, exit 2
    print(model.announce())
    context, threshold = None, model.threshold
    if FLAGS.context:
        from idc_inference.context_stage import ContextStageError  # noqa: PLC0415

        try:
            context = model.context_stage
        except ContextStageError as error:
            raise cli.UserError(f"{model.path}: {error}") from None
        if context is None:
            raise cli.UserError(
                f"--context: {model.path} carries no slide-context stage; export the run with "
                "export_model.py --workdir=<run> --output=<name>.safetensors, which fits one on "
                "its validation patients"
            )
        if FLAGS.threshold == "validation":
            threshold = context.threshold
        print(f"slide context: {context.fitted_on}, threshold {threshold:.4g}")

    for slide in slides:
        try:
            summary = slide_maps.map_slide(
                slide,
                FLAGS.output_dir,
                model.predictor,
                model=model.describe(),
                threshold=threshold,
                labels=labels,
                min_tissue=FLAGS.min_tissue,
                num_threads=FLAGS.num_threads,
                progress=FLAGS.progress,
                opacity=FLAGS.opacity,
                smooth_um=FLAGS.smooth_um,
                context=context,
                calibration=model.calibration,
            )
        except slide_files.SlideError as error:
            raise cli.UserError(str(error)) from None
        unreadable = summary["unreadable_tiles"]
        for name, reason in unreadable[:MAX_LISTED]:
            print(f"unreadable: {slide.path}: {name}: {reason}", file=sys.stderr)
        if len(unreadable) > MAX_LISTED:
            print(
                f"unreadable: ... and {len(unreadable) - MAX_LISTED} more tiles, listed in "
                f"{FLAGS.output_dir}/{summary['outputs']['unreadable']}",
                file=sys.stderr,
            )
        for warning in summary["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        tiles = summary["tiles"]
        level = tiles["geometry"]
        print(
            f"{slide.path}: {tiles['predicted']} of {tiles['in_grid']} tiles were tissue and "
            f"predicted ({tiles['unreadable']} unreadable), read from level {level['level']} "
            f"({level['level_mpp']:.3g} um/px) for {level['target_mpp']:g} um/px; "
            f"{summary['throughput']['tiles_per_second']:.1f} tiles/s "
            f"({summary['throughput']['seconds']:.1f} s, compilation excluded)"
        )
        print(
            f"  tissue {summary['tissue_area_mm2']:.2f} mm2, IDC "
            f"{summary['idc_tissue_area_mm2']:.2f} mm2 ({summary['idc_fraction_of_tissue']:.1%} "
            "of the tissue) at threshold "
            f"{summary['threshold']:.4g}, {summary['idc_regions']} regions"
        )
        if summary["labels"] is not None:
            report = summary["labels"]
            auc = report.get("tiles", {}).get("roc_auc")
            print(
                f"  against {report['labelled']} labelled tiles: tile ROC AUC "
                f"{auc if auc is None else round(auc, 4)}, Dice of the regions "
                f"{report['dice_regions_vs_labelled_idc']:.3f}"
            )
        print(f"  wrote {FLAGS.output_dir}/{summary['outputs']['summary']} and its maps")


if __name__ == "__main__":
    define_flags()
    cli.run(main, user_errors=USER_ERRORS)
