"""The flags that choose a model, shared by predict.py, heatmap.py and map_slide.py.

    model_flags.define()                 # in a program's define_flags()
    model = model_flags.load_model()     # in its main(): the model, or one line and exit 2

Only absl is imported here, so that a program answers a flag mistake before JAX starts.
"""

from __future__ import annotations

from absl import flags


def define(unit: str = "patches") -> None:
    """--workdir, --checkpoint, --tta, --threshold and --batch_size."""
    flags.DEFINE_string(
        "workdir",
        None,
        "A training run (its --workdir) or an inference-weights .safetensors file; "
        "default: the shipped model.",
    )
    flags.DEFINE_string(
        "checkpoint", "latest", '"latest", "best" (validation) or a step number (training runs).'
    )
    flags.DEFINE_bool(
        "tta",
        None,
        "Average P(IDC) over the 8 dihedral views of each patch (--notta: one view); "
        "default: as the run evaluated.",
    )
    flags.DEFINE_string(
        "threshold",
        "validation",
        'P(IDC) at or above which a patch is called IDC: a number, or "validation" (the '
        "threshold tuned on the run's validation patients).",
    )
    flags.DEFINE_integer(
        "batch_size", 256, f"{unit.capitalize()} per compiled batch (rounded up to the devices)."
    )


def load_model():
    """The model the flags name (`idc_inference.programs.load_for_program`)."""
    from idc_inference.programs import load_for_program  # noqa: PLC0415 (JAX starts here)

    values = flags.FLAGS
    return load_for_program(
        values.workdir,
        checkpoint=values.checkpoint,
        tta=values.tta,
        threshold=values.threshold,
        batch_size=values.batch_size,
    )
