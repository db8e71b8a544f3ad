"""What predict.py and heatmap.py share: the model as a program loads it, and the record.

    model = load_for_program(FLAGS.workdir, checkpoint=..., tta=..., threshold=...)
    print(model.announce())        # "using the shipped model mobilenet_v1_idc (trained on ...)"
    ...
    write_record(f"{output}.json", model, counts=...)

A user's mistake (a workdir that is not a run, a corrupted weights file, a threshold out of range)
raises one of `idc_inference.errors.USER_ERRORS`, which the programs print as one line with exit
status 2 (`trainer.cli.run(main, user_errors=...)`).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib

from idc_inference import model as model_lib


def load_for_program(workdir, **kwargs) -> model_lib.IDCModel:
    """`idc_inference.load`; a user's mistake raises one of `errors.USER_ERRORS`."""
    return model_lib.load(workdir, **kwargs)


def write_record(path: str | os.PathLike, model: model_lib.IDCModel | None, **fields) -> dict:
    """The JSON beside an output: which model, checkpoint, threshold, TTA, code version, counts."""
    record = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": model.describe() if model is not None else None,
        **fields,
    }
    pathlib.Path(path).write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record
