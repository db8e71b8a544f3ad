"""Exports a trained model: inference weights from a training run, or ONNX / StableHLO from them.

    # 1. A run's checkpoint -> inference weights (.safetensors + .json), in the project's venv,
    #    with the slide-context stage fitted on the run's validation patients (--nocontext: none):
    python export_model.py --workdir=/tmp/idc_v1 --output=/tmp/v1.safetensors
    # the shipped model was written by (the frozen test's v1_patch run: MODEL_CARD.md)
    python export_model.py --workdir=/work/runs/v1_patch \\
        --output=idc_inference/shipped/mobilenet_v1_idc.safetensors

    # 2. Inference weights -> ONNX, in the export venv (requirements-export.txt: jax2onnx pins an
    #    orbax the project cannot use, and weights files need no orbax):
    python3 -m venv .venv-export && .venv-export/bin/pip install -r requirements-export.txt
    .venv-export/bin/python export_model.py --output=mobilenet_v1_idc.onnx   # the shipped model
    .venv-export/bin/python export_model.py --weights=/tmp/v1.safetensors --output=v1.onnx
    # or serialized StableHLO (jax.export), the fallback for layers jax2onnx cannot convert:
    python export_model.py --weights=/tmp/v1.safetensors --format=stablehlo --output=v1.stablehlo

The ONNX model takes uint8 RGB patches [N, 50, 50, 3] (NHWC, 0-255, the Kaggle scale; a
neighbourhood network its windows, [N, 150, 150, 3] for 3 x 3) and returns
P(IDC) float32 [N]; its metadata_props say so, with the threshold tuned on validation and the TTA
(`idc_inference/export_onnx.py` has the details). After writing it, the program runs it in
onnxruntime on 8 synthetic patches and prints the largest difference from JAX's P(IDC).
--tta / --notta: the 8-view average inside the graph (8x the compute) or one view; by default
as the run evaluated.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "A training run to export inference weights from.")
    flags.DEFINE_string("checkpoint", "latest", '"latest", "best" or a step (with --workdir).')
    flags.DEFINE_string(
        "weights", None, "Inference weights to convert (default: the shipped model)."
    )
    flags.DEFINE_string("output", None, "The file to write (.safetensors, .onnx, .stablehlo).")
    flags.DEFINE_enum(
        "format",
        None,
        ["weights", "onnx", "stablehlo"],
        "What to write; default: from --output's suffix.",
    )
    flags.DEFINE_bool("tta", None, "8-view TTA inside the graph; default: as the run evaluated.")
    flags.DEFINE_bool(
        "patients", True, "Recompute the run's split to list its patients (needs its data)."
    )
    flags.DEFINE_bool(
        "context",
        True,
        "Fit the slide-context stage (map_slide.py --context) on the run's validation P(IDC) "
        "and store it with the weights (needs the run's data unless its "
        "predictions_validation.npz is there).",
    )
    flags.DEFINE_enum(
        "context_kind",
        "smoothing",
        ["smoothing", "learned"],
        "The slide-context stage: P(IDC) smoothed over the tile grid at a width chosen on the "
        "fitting patients, or the learned logistic regression over three widths (on held-out "
        "whole slides the two ranked alike and smoothing called better, results/real_245).",
    )
    flags.DEFINE_list(
        "context_slides",
        None,
        "Training runs whose held-out whole slides (test patients that are whole slides) the "
        "slide-context stage is fitted on instead of the run's validation patients: a stage for "
        "whole slides learns best from whole slides (results/real_245).",
    )
    flags.DEFINE_bool(
        "calibrate",
        True,
        "Calibrate the shipped P(IDC) (idc_inference/calibration.py): the patch network's on "
        "the run's validation patients, the slide-context stage's on the patients it is fitted "
        "on; the thresholds are then chosen again on the calibrated scale.",
    )
    flags.mark_flags_as_required(["output"])


def fail(message: str) -> None:
    """`error: <message>` on stderr, exit status 2 (as trainer.cli.fail; the export venv has no
    `trainer`)."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def output_format(output: pathlib.Path) -> str:
    if FLAGS.format:
        return FLAGS.format
    suffixes = {".safetensors": "weights", ".onnx": "onnx", ".stablehlo": "stablehlo"}
    if output.suffix not in suffixes:
        fail(f"--output {output}: name it .safetensors, .onnx or .stablehlo, or pass --format")
    return suffixes[output.suffix]


def export_weights(output: pathlib.Path) -> None:
    from idc_inference import model as model_lib  # noqa: PLC0415
    from idc_inference import run_records  # noqa: PLC0415
    from idc_inference import weights as weights_lib  # noqa: PLC0415

    if FLAGS.workdir is None:
        fail("--workdir: the training run whose checkpoint to export")
    workdir = pathlib.Path(FLAGS.workdir)
    if not (workdir / "config.json").is_file():
        fail(f"{workdir} is not a training run (no config.json in it)")
    with model_lib.quiet_orbax():
        stage = fit_context_stage(workdir) if FLAGS.context else None
        calibration = calibrate_patches(workdir) if FLAGS.calibrate else None
        record = run_records.export_workdir(
            workdir,
            output,
            checkpoint=FLAGS.checkpoint,
            with_patients=FLAGS.patients,
            context_stage=stage,
            calibration=calibration,
        )
    size = weights_lib.tensors_path(output).stat().st_size
    print(
        f"wrote {weights_lib.tensors_path(output)} ({size / 2**20:.1f} MB, step "
        f"{record['step']}, threshold {record['threshold']['value']:.4g}, TTA {record['tta']}) "
        f"and {weights_lib.sidecar_path(output)}"
    )


def calibrate_patches(workdir: pathlib.Path):
    """(the patch network's calibration, its threshold), fitted on the validation patients."""
    from experiment import calibrating, predictions  # noqa: PLC0415

    table = predictions.split_predictions(workdir, "validation", FLAGS.checkpoint)
    fitted_on = f"the run's {len(set(table.patient.tolist()))} validation patients"
    calibration, threshold = calibrating.calibrate_patches(table, fitted_on)
    print(f"patch P(IDC) calibrated ({calibration.kind}) on {fitted_on}: threshold {threshold:.4g}")
    return calibration, threshold


def fit_context_stage(workdir: pathlib.Path):
    """The slide-context stage fitted on the run's validation patients at --checkpoint, or on
    the held-out whole slides of --context_slides."""
    from experiment import calibrating, predictions, slide_context, slide_folds  # noqa: PLC0415

    if FLAGS.context_slides:
        for run in FLAGS.context_slides:
            if not (pathlib.Path(run) / "summary.json").is_file():
                fail(f"--context_slides: {run} is not a finished training run (no summary.json)")
        table = slide_folds.held_out_slides_of_runs(FLAGS.context_slides)
        names = ", ".join(pathlib.Path(run).name for run in FLAGS.context_slides)
        fitted_on = (
            f"{len(set(table.patient.tolist()))} whole slides ({len(table.label):,} patches) held "
            f"out of the training of runs {names}"
        )
    else:
        table = predictions.split_predictions(workdir, "validation", FLAGS.checkpoint)
        fitted_on = (
            f"the run's {len(set(table.patient.tolist()))} validation patients "
            f"({len(table.label):,} patches), checkpoint {FLAGS.checkpoint}"
        )
    if not len(table.label) or len(set(table.label.tolist())) < 2:
        fail(f"the slide-context stage needs patches of both classes to fit on ({fitted_on})")
    if FLAGS.context_kind == "smoothing":
        stage = slide_context.fit_smoothing_stage(table, fitted_on=fitted_on)
    else:
        stage = slide_context.fit_context_model(table, fitted_on=fitted_on)
    if FLAGS.calibrate:
        stage = calibrating.calibrate_stage(stage, table)
    print(f"slide-context stage fitted on {stage.fitted_on}: threshold {stage.threshold:.4g}")
    return stage


def export_graph(output: pathlib.Path, kind: str) -> None:
    from idc_inference import export_onnx  # noqa: PLC0415
    from idc_inference import model as model_lib  # noqa: PLC0415
    from idc_inference import weights as weights_lib  # noqa: PLC0415

    if FLAGS.workdir is not None:
        fail(
            "--workdir: export the run's inference weights first (--output=<name>.safetensors), "
            "then convert them with --weights"
        )
    weights = pathlib.Path(FLAGS.weights) if FLAGS.weights else model_lib.SHIPPED_WEIGHTS
    try:
        if kind == "onnx":
            try:
                import jax2onnx  # noqa: F401, PLC0415
            except ImportError:
                fail(
                    "jax2onnx is not installed here: run this in the export venv "
                    "(pip install -r requirements-export.txt), or use --format=stablehlo"
                )
            properties = export_onnx.export_onnx(weights, output, tta=FLAGS.tta)
        else:
            properties = export_onnx.export_stablehlo(weights, output, tta=FLAGS.tta)
    except (weights_lib.WeightsError, export_onnx.ExportError) as error:
        fail(str(error))
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MB) from {weights}")
    for key in ("input", "output", "tta", "threshold", "converter"):
        print(f"  {key}: {properties[key]}")
    if kind == "onnx":
        check(weights, output)


def check(weights_path: pathlib.Path, output: pathlib.Path) -> None:
    """onnxruntime against JAX on 8 synthetic patches (tests/test_export_onnx.py: real ones)."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from idc_inference import export_onnx  # noqa: PLC0415
    from idc_inference import weights as weights_lib  # noqa: PLC0415

    weights = weights_lib.read_weights(weights_path)
    tta = weights.tta if FLAGS.tta is None else FLAGS.tta
    from input_pipeline import windows  # noqa: PLC0415

    size = 50 * windows.window_size(weights.config)
    images = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    expected = np.asarray(jax.jit(export_onnx.p_idc_function(weights, tta=tta))(images))
    got = export_onnx.run_onnx(output, images)
    difference = np.abs(got - expected).max()
    print(f"  onnxruntime vs JAX on 8 synthetic patches: max |P(IDC) difference| {difference:.2e}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    output = pathlib.Path(FLAGS.output)
    kind = output_format(output)
    if kind == "weights":
        export_weights(output)
    else:
        export_graph(output, kind)


if __name__ == "__main__":
    define_flags()
    try:
        from trainer import cli
    except ImportError:  # the export venv: no trainer dependencies (orbax, clu, TFDS)
        app.run(main)
    else:
        cli.run(main)
