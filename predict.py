"""P(IDC) of PNG patches, written to a CSV, by the shipped model or a trained one.

    python predict.py --output=preds.csv data/idc_sample/9226          # the shipped model
    python predict.py --workdir=/tmp/idc_v1 --output=preds.csv /data/IDC/8863 extra_patch.png
    python predict.py --workdir=/tmp/idc_v1 --checkpoint=best --notta --threshold=0.5 \\
        --output=preds.csv /data/IDC/8863

PATHs are PNG files or folders (searched recursively: a patient folder, or the whole data set).
Each patch is preprocessed as in training (decoded to RGB, border patches padded with white,
resized and scaled inside the jitted model function). The CSV has one row per readable file:
file, patient, x, y, p_idc, predicted_label, true_label; patient/x/y/true_label come from Kaggle
file names (`<patient>_idx5_x<X>_y<Y>_class<C>.png`) and are empty when a name does not carry them.

--workdir: a training run, or an inference-weights file (.safetensors, export_model.py); without
it the model shipped in idc_inference/shipped/ (MODEL_CARD.md).
--tta / --notta: average P(IDC) over the 8 dihedral views (rotations x mirror) of each patch, or
not; by default as the run evaluated its validation and test patients (config.eval_tta).
--threshold: a patch is called IDC when P(IDC) >= threshold; by default ("validation") the
threshold tuned on the run's validation patients at that checkpoint (summary.json's), or a number.

Unreadable files never stop the run: they are counted, printed to stderr and listed with their
reason in <output>.errors.txt. <output>.json records the model (source, checkpoint, step,
threshold, TTA), the code version and the counts; when the file names give labels of both
classes, also the metrics on those patches (ROC AUC, balanced accuracy, F1, ...), printed too.
Exit status 2 with one line when nothing could be predicted (no PNG under the paths given, none
readable) or the model cannot be loaded.
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
    """Defines the command-line flags; called only when this file runs as a program.

    absl flags are global to the process and predict.py, heatmap.py and reproduce.py share
    names (--workdir): defining them at import would stop one program, or a test, from
    importing the functions of another.
    """
    model_flags.define()
    flags.DEFINE_string("output", None, "The CSV to write.")
    flags.DEFINE_integer("num_threads", 8, "Threads decoding PNGs.")
    flags.mark_flags_as_required(["output"])


def find_files(paths: list[str]):
    """The PNG files under `paths` and the paths that do not exist; one line when none is found."""
    from input_pipeline.patches import find_png_files  # noqa: PLC0415

    files, missing = find_png_files(paths)
    if not files:
        if missing and len(missing) == len(paths):
            names = ", ".join(str(path) for path, _ in missing)
            raise cli.UserError(f"no such file or folder: {names}")
        raise cli.UserError(f"no PNG file found under {', '.join(paths)}")
    return files, missing


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give at least one PNG file or folder to predict")
    output = pathlib.Path(FLAGS.output)
    if not output.parent.is_dir():
        raise cli.UserError(f"cannot write {output}: the folder {output.parent} does not exist")
    files, errors = find_files(paths)

    from idc_inference import patch_files, programs  # noqa: PLC0415

    model = model_flags.load_model()
    print(model.announce(), flush=True)
    predictions = model.predict_files(files, num_threads=FLAGS.num_threads, progress=True)
    errors = errors + predictions.errors
    patch_files.write_predictions_csv(output, predictions, model.threshold)
    patch_files.write_errors(f"{output}.errors.txt", errors)
    decisions = patch_files.predicted_labels(predictions.p_idc, model.threshold)
    scores = labelled_metrics(predictions, model.threshold)
    programs.write_record(
        f"{output}.json",
        model,
        inputs=paths,
        csv=str(output),
        counts={
            "png_files_found": len(files),
            "predicted": len(predictions.files),
            "predicted_idc": int(decisions.sum()),
            "unreadable": len(errors),
        },
        seconds=predictions.seconds,
        images_per_second=predictions.images_per_second,
        compile_seconds=model.predictor.compile_seconds,
        metrics_on_labelled_patches=scores,
    )
    for file, reason in errors:
        print(f"unreadable: {file}: {reason}", file=sys.stderr)
    if not predictions.files:
        raise cli.UserError(
            f"none of the {len(files)} PNG files could be read (reasons in {output}.errors.txt)"
        )
    views = "8-view TTA" if model.tta else "1 view"
    print(
        f"{len(predictions.files)} patches predicted ({views}, checkpoint step {model.step}, "
        f"threshold {model.threshold:.4g}) in {predictions.seconds:.2f} s: "
        f"{predictions.images_per_second:.1f} images/s (reading + model; compilation of "
        f"{model.predictor.compile_seconds:.1f} s excluded). {len(errors)} unreadable (listed in "
        f"{output}.errors.txt)."
    )
    if scores is not None:
        print(
            f"on the {scores['num_examples']:,} patches whose file names give their label: ROC "
            f"AUC {scores['roc_auc']:.4f}, balanced accuracy {scores['balanced_accuracy']:.4f}, "
            f"F1 {scores['f1']:.4f} at threshold {scores['threshold']:.4g} (patches, not "
            "patients: no interval)"
        )
    print(f"wrote {output} and {output}.json")


def labelled_metrics(predictions, threshold: float) -> dict | None:
    """`evaluation.metrics.binary_metrics` of the files whose names carry both classes' labels."""
    from evaluation import metrics  # noqa: PLC0415

    labels = predictions.labels
    known = labels >= 0
    if not known.any() or len(set(labels[known].tolist())) < 2:
        return None
    return metrics.binary_metrics(labels[known], predictions.p_idc[known], threshold)


if __name__ == "__main__":
    define_flags()
    cli.run(main, user_errors=USER_ERRORS)
