"""P(IDC) of PNG patches with a trained model, written to a CSV.

    python predict.py --workdir=/tmp/idc_v1 --output=preds.csv /data/IDC/8863 extra_patch.png
    python predict.py --workdir=/tmp/idc_v1 --checkpoint=best --tta --threshold=validation \\
        --output=preds.csv /data/IDC/8863

PATHs are PNG files or folders (searched recursively: a patient folder, or the whole data set).
Each patch is preprocessed as in training (decoded to RGB, border patches padded with white,
resized and scaled inside the jitted model function). The CSV has one row per readable file:
file, patient, x, y, p_idc, predicted_label, true_label; patient/x/y/true_label come from Kaggle
file names (`<patient>_idx5_x<X>_y<Y>_class<C>.png`) and are empty when a name does not carry them.

--threshold: a patch is called IDC when P(IDC) >= threshold; 0.5 by default, or "validation" for
the threshold that maximised balanced accuracy on the run's validation split at that checkpoint.
--tta: the mean P(IDC) over the 8 dihedral views (rotations x mirror) of each patch.

Unreadable files never stop the run: they are counted, printed to stderr and listed with their
reason in <output>.errors.txt.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags; called only when this file runs as a program.

    absl flags are global to the process and predict.py, heatmap.py and reproduce.py share
    names (--workdir): defining them at import would stop one program, or a test, from
    importing the functions of another.
    """
    flags.DEFINE_string(
        "workdir", None, "The training run (its --workdir) whose checkpoint to use."
    )
    flags.DEFINE_string("checkpoint", "latest", '"latest", "best" (validation) or a step number.')
    flags.DEFINE_string("output", None, "The CSV to write.")
    flags.DEFINE_bool("tta", False, "Average P(IDC) over the 8 dihedral views of each patch.")
    flags.DEFINE_string(
        "threshold",
        "0.5",
        'P(IDC) at or above which a patch is called IDC: a number or "validation".',
    )
    flags.DEFINE_integer(
        "batch_size", 256, "Patches per compiled batch (rounded up to the devices)."
    )
    flags.DEFINE_integer("num_threads", 8, "Threads decoding PNGs.")
    flags.mark_flags_as_required(["workdir", "output"])




def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give at least one PNG file or folder to predict")
    from idc_inference.patch_files import predict_to_csv

    result = predict_to_csv(
        FLAGS.workdir,
        paths,
        FLAGS.output,
        checkpoint=FLAGS.checkpoint,
        tta=FLAGS.tta,
        threshold=FLAGS.threshold,
        batch_size=FLAGS.batch_size,
        num_threads=FLAGS.num_threads,
    )
    for file, reason in result["errors"]:
        print(f"unreadable: {file}: {reason}", file=sys.stderr)
    views = "8-view TTA" if result["tta"] else "1 view"
    print(
        f"{result['predicted']} patches predicted ({views}, checkpoint step "
        f"{result['checkpoint_step']}, threshold {result['threshold']:.4g}) in "
        f"{result['seconds']:.2f} s: {result['images_per_second']:.1f} images/s "
        f"(reading + model; compilation of {result['compile_seconds']:.1f} s excluded). "
        f"{result['unreadable']} unreadable (listed in {FLAGS.output}.errors.txt)."
    )
    print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
