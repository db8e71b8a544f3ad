"""IDC maps of whole-slide images: P(IDC) over the tissue, and the regions for QuPath.

    python map_slide.py --output_dir=/tmp/maps data/demo_slide/8955.tiff
    python map_slide.py --output_dir=maps --workdir=/tmp/idc_v1 --labels=truth.csv slide.svs
    python map_slide.py --output_dir=maps --mpp=0.25 slide_without_scale.tiff other.ndpi
    python map_slide.py --output_dir=/tmp/maps --context data/demo_slide/8955.tiff
    python map_slide.py --output_dir=maps slides/ 'more/*.svs'          # a cohort
    python map_slide.py --output_dir=maps --shard=3/16 slides/           # shard 3 of 16 of it

Reads: SLIDE files in any format OpenSlide reads (Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs,
Leica .scn, Philips and generic tiled .tiff, DICOM, ...), tile by tile (a slide is never held in
memory), and the model: the one shipped with the package, or --workdir (a training run, or a
weights file), with the run's own TTA and validation-tuned threshold unless --tta/--notta and
--threshold say otherwise.

--context: each tile's P(IDC) is revised by its neighbours' on the tile grid by the model's
slide-context stage (`idc_inference/context_stage.py`), with the stage's own threshold unless
--threshold gives one. The shipped model's stage is plain smoothing: P(IDC) averaged over the
neighbours with a normalised Gaussian of sigma 2.5 tiles, then calibrated, called IDC at 0.2323,
the width, calibration and threshold chosen on the model's 49 validation patients (MODEL_CARD.md,
results/frozen_test). export_model.py can fit a smoothing or a learned stage (a logistic
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
  slides.csv     (one per --output_dir) the table of its slides, below
The files appear together when the slide is done (summary.json last); a slide that fails leaves
none (in a cohort, its <stem>.failed.json says why). --labels: a CSV with columns x, y, label
(level-0 top-left pixel of tile-sized squares) or a column file of Kaggle patch names (e.g.
predict.py's CSV); for one slide only.

--geojson_tiles: the GeoJSON also holds every tile as a QuPath tile object with its P(IDC) (the
map's and the patch network's) as measurements, for QuPath's Measurement Maps.

The scale must be believable (`idc_inference/slide_scale.py`): an image program's default
resolution (72, 96, 150, 300 dpi) or one without a unit counts as no scale, a slide whose finest
level is coarser than the model's 4 um/px is refused, and an objective power more than 2x from
the scale is a warning.

Cohorts: folders (searched for slide files) and globs name many slides; so do several files. Each
slide is mapped in turn, with a line before it (slide i of n, ETA); a slide that fails is listed
with its one-line reason (on stderr and in <stem>.failed.json) and the others go on. A slide whose
outputs are complete and belong to the same model and settings (model, threshold, TTA, context,
--min_tissue, scale, --geojson_tiles) is skipped, so a rerun resumes; a changed setting redoes
the slide and says what changed (--redo redoes every slide). At the end --output_dir/slides.csv
is rewritten from every summary and failure record there: one row per slide (file, status,
reason, tissue and IDC mm2, IDC fraction, regions, largest region mm2, mean and max P(IDC),
model, threshold, seconds). --shard=i/N maps every N-th slide from the i-th (ordered by output
name): N processes or hosts, e.g. a SLURM job array, map a cohort into one --output_dir between
them (`idc_inference/cohorts.py`). Each batch of tiles is split over all local devices.

Exit status: 0 when every slide was mapped or skipped (a slide without tissue gives an empty map
and a warning); 1 when a slide of a cohort failed (the others are mapped); 2 with one line for a
mistake that stops the command: one slide named alone that cannot be used (not a slide,
truncated, no believable scale and no --mpp), bad labels, no slides found, a bad --shard, or a
model that cannot be loaded.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
import traceback

from absl import app, flags

from idc_inference import model_flags
from idc_inference.errors import USER_ERRORS
from trainer import cli

FLAGS = flags.FLAGS
MAX_LISTED = 10  # unreadable tiles printed per slide; the file lists them all
EXIT_SLIDES_FAILED = 1  # a cohort ran, and some of its slides failed (each listed)


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
    flags.DEFINE_bool(
        "geojson_tiles",
        False,
        "Also write every tile into the GeoJSON as a QuPath tile object with its P(IDC) "
        "(map and patch network) as measurements, for QuPath's Measurement Maps.",
    )
    flags.DEFINE_string(
        "shard",
        None,
        "i/N: map only shard i (0 <= i < N) of the cohort, e.g. "
        "--shard=${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT} in a job array.",
    )
    flags.DEFINE_bool(
        "redo", False, "Map every slide again, also those already mapped with these settings."
    )
    flags.DEFINE_bool("progress", True, "Show a progress bar (tiles/s) on stderr.")
    flags.mark_flags_as_required(["output_dir"])


@dataclasses.dataclass
class Mapper:
    """The model and settings every slide of the run is mapped with."""

    model: object  # idc_inference.model.IDCModel
    context: object  # idc_inference.context_stage.ContextStage | None
    threshold: float
    output_dir: pathlib.Path

    def map(self, slide, labels=None) -> dict:
        from idc_inference import slide_maps  # noqa: PLC0415 (flags first)

        return slide_maps.map_slide(
            slide,
            self.output_dir,
            self.model.predictor,
            model=self.model.describe(),
            threshold=self.threshold,
            labels=labels,
            min_tissue=FLAGS.min_tissue,
            num_threads=FLAGS.num_threads,
            progress=FLAGS.progress,
            opacity=FLAGS.opacity,
            smooth_um=FLAGS.smooth_um,
            context=self.context,
            calibration=self.model.calibration,
            geojson_tiles=FLAGS.geojson_tiles,
        )

    def settings(self, slide) -> dict:
        """This run's `cohorts.settings` for the slide: what a finished map must match."""
        from idc_inference import cohorts  # noqa: PLC0415

        return cohorts.settings(
            model=self.model.describe(),
            threshold=self.threshold,
            context_stage=None if self.context is None else self.context.to_record(),
            min_tissue=FLAGS.min_tissue,
            slide=slide.describe(),
            geojson_tiles=FLAGS.geojson_tiles,
        )


def load_mapper() -> Mapper:
    """The model the flags name, its slide-context stage with --context, and the threshold."""
    import jax  # noqa: PLC0415 (loaded by the model already)

    model = model_flags.load_model()  # a model that cannot be loaded: one line, exit 2
    print(model.announce())
    devices = jax.devices()
    print(
        f"batches of {model.predictor.batch_size} tiles, each split over {len(devices)} "
        f"{devices[0].platform} device{'s' if len(devices) > 1 else ''}"
    )
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
    return Mapper(model, context, threshold, pathlib.Path(FLAGS.output_dir))


def report(slide, summary: dict) -> None:
    """What the map of one slide found, and where it went."""
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
        labels = summary["labels"]
        auc = labels.get("tiles", {}).get("roc_auc")
        print(
            f"  against {labels['labelled']} labelled tiles: tile ROC AUC "
            f"{auc if auc is None else round(auc, 4)}, Dice of the regions "
            f"{labels['dice_regions_vs_labelled_idc']:.3f}"
        )
    print(f"  wrote {FLAGS.output_dir}/{summary['outputs']['summary']} and its maps")


# ----------------------------------------------------------------------------- one slide


def map_one_slide(path: pathlib.Path) -> None:
    """One slide named on its own: every mistake is one line and exit status 2, nothing written
    (the slide and labels are checked before the model loads: seconds, not a compile)."""
    from idc_inference import slide_files, slide_labels, slide_table  # noqa: PLC0415

    try:
        slide = slide_files.open_slide(path, mpp=FLAGS.mpp)
        labels = slide_labels.read_labels(FLAGS.labels, slide) if FLAGS.labels else None
    except (slide_files.SlideError, slide_labels.LabelsError) as error:
        raise cli.UserError(str(error)) from None
    mapper = load_mapper()
    try:
        summary = mapper.map(slide, labels)
    except slide_files.SlideError as error:
        raise cli.UserError(str(error)) from None
    report(slide, summary)
    slide_table.clear_failure(mapper.output_dir, slide.path)
    slide_table.write_table(mapper.output_dir)


# ----------------------------------------------------------------------------- a cohort


def map_in_cohort(mapper: Mapper, path: pathlib.Path) -> tuple[str, str | None]:
    """Maps one slide of a cohort unless it is finished: ("mapped" | "skipped", None) or
    ("failed", the one-line reason).

    A failure of any kind is the slide's alone: listed with its one-line reason, recorded in
    `<stem>.failed.json` (with the traceback of an unexpected error) and the cohort goes on.
    """
    from idc_inference import cohorts, slide_files, slide_table  # noqa: PLC0415

    detail = None
    try:
        slide = slide_files.open_slide(path, mpp=FLAGS.mpp)
        finished = None if FLAGS.redo else cohorts.finished_map(mapper.output_dir, path)
        if finished is not None:
            try:
                changed = cohorts.changes(
                    cohorts.settings_of_summary(finished), mapper.settings(slide)
                )
            except (KeyError, TypeError):
                changed = ["the earlier summary does not record its settings"]
            if not changed:
                print("  skipped: mapped before with the same model and settings")
                return "skipped", None
            print(f"  redoing {path}: {'; '.join(changed)}")
        summary = mapper.map(slide)
    except slide_files.SlideError as error:
        reason = str(error)
    except Exception as error:  # noqa: BLE001 (one slide's bug must not stop the cohort)
        detail = traceback.format_exc()
        failure = slide_table.failure_path(mapper.output_dir, path).name
        reason = f"{path}: {type(error).__name__}: {error} (unexpected; traceback in {failure})"
    else:
        report(slide, summary)
        slide_table.clear_failure(mapper.output_dir, path)
        return "mapped", None
    print(f"failed: {reason}", file=sys.stderr)
    slide_table.record_failure(mapper.output_dir, path, reason, detail)
    return "failed", reason


def map_cohort(slides: list[pathlib.Path], shard: tuple[int, int] | None) -> int:
    """Maps every slide (of the shard), then writes slides.csv; the exit status."""
    from idc_inference import cohorts, slide_table  # noqa: PLC0415

    mine = slides if shard is None else cohorts.shard(slides, *shard)
    where = "" if shard is None else f" (shard {shard[0]} of {shard[1]}, of {len(slides)})"
    print(f"{cohorts.plural(len(mine), 'slide')} to map{where}")
    mapper = load_mapper()
    progress = cohorts.Progress(len(mine))
    failed: list[str] = []
    try:
        for number, path in enumerate(mine, start=1):
            print(progress.line(number, path), flush=True)
            start = time.perf_counter()
            status, reason = map_in_cohort(mapper, path)
            progress.record(status, time.perf_counter() - start)
            if status == "failed":
                failed.append(reason)
    finally:  # also when interrupted: the table of what is finished
        table = slide_table.write_table(mapper.output_dir)
    counts = ", ".join(f"{count} {status}" for status, count in progress.counts.items())
    print(f"{cohorts.plural(len(mine), 'slide')} in {progress.elapsed()}: {counts}; table {table}")
    if not failed:
        return 0
    for reason in failed:
        print(f"failed: {reason}", file=sys.stderr)
    print(
        f"error: {len(failed)} of {cohorts.plural(len(mine), 'slide')} failed (listed above and "
        f"in {table}); the others are mapped",
        file=sys.stderr,
    )
    return EXIT_SLIDES_FAILED


def main(argv):
    arguments = argv[1:]
    if not arguments:
        raise app.UsageError("give at least one slide file or folder to map")
    if not 0.0 < FLAGS.min_tissue <= 1.0:
        raise cli.UserError(f"--min_tissue must lie in (0, 1], got {FLAGS.min_tissue}")
    from idc_inference import cohorts  # noqa: PLC0415 (flags first)

    try:
        shard = cohorts.parse_shard(FLAGS.shard) if FLAGS.shard is not None else None
        slides = cohorts.find_slides(arguments)
    except cohorts.CohortError as error:
        raise cli.UserError(str(error)) from None
    one_slide = len(arguments) == 1 and pathlib.Path(arguments[0]).is_file() and shard is None
    if FLAGS.labels is not None and not one_slide:
        raise cli.UserError("--labels describes one slide; map the slides one at a time")
    if one_slide:
        map_one_slide(slides[0])
        return 0
    return map_cohort(slides, shard)


if __name__ == "__main__":
    define_flags()
    cli.run(main, user_errors=USER_ERRORS)
