"""What predict.py and heatmap.py share: the model as a program loads it, and the record.

    model = load_for_program(FLAGS.workdir, checkpoint=..., tta=..., threshold=...)
    print(model.announce())        # "using the shipped model mobilenet_v1_idc (trained on ...)"
    ...
    write_record(f"{output}.json", model, counts=...)

A user's mistake (a workdir that is not a run, a corrupted weights file, a threshold out of range)
becomes `trainer.cli.UserError`: one line, exit status 2.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib

from idc_inference import model as model_lib
from idc_inference.weights import WeightsError
from trainer import cli


def load_for_program(workdir, **kwargs) -> model_lib.IDCModel:
    """`idc_inference.load`, with the user's mistakes as one-line errors."""
    try:
        return model_lib.load(workdir, **kwargs)
    except (model_lib.ModelSourceError, model_lib.ModelArgumentError, WeightsError) as error:
        raise cli.UserError(str(error)) from None


def write_record(path: str | os.PathLike, model: model_lib.IDCModel | None, **fields) -> dict:
    """The JSON beside an output: which model, checkpoint, threshold, TTA, code version, counts."""
    record = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": model.describe() if model is not None else None,
        **fields,
    }
    pathlib.Path(path).write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record
