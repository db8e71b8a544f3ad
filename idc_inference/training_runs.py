"""The one door from inference to a training run's workdir: its orbax checkpoints, config and
validation threshold are read by the training library (`trainer.rundir.RunDirectory`), which is
imported here only, and only when a workdir is asked for.

Everything else in `idc_inference` (the shipped model, weights files, slides, ONNX export) runs
without `trainer`, clu or TensorFlow: the export venv (requirements-export.txt) has none of them.
"""

from __future__ import annotations

import os

from idc_inference.errors import ModelSourceError


def run_directory(path: str | os.PathLike):
    """`trainer.rundir.RunDirectory(path)`, or a one-line `ModelSourceError` saying what to do
    when the training library cannot be imported here."""
    try:
        from trainer.rundir import RunDirectory  # noqa: PLC0415 (the only import of trainer)
    except ImportError as error:
        raise ModelSourceError(
            f"{path}: reading a training run needs the training library (`trainer`, with orbax "
            f"and clu; pip install -r requirements.txt), which cannot be imported here ({error}); "
            "or export the run once with export_model.py and load the weights file"
        ) from None
    return RunDirectory(path)
