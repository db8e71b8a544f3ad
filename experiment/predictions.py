"""Every validation and test patch's P(IDC) from a finished run, kept beside it.

    table = split_predictions("/tmp/idc_v1", "test")    # PatchPredictions of the test split
    table.p_idc, table.patient, table.x, table.y, table.label

The numbers are the run's own evaluation (its checkpoint, its eval_tta views, its evaluation
function `trainer.evaluate.predict_split`), so the test metrics computed from them equal those of
the run's summary.json. They are cached as `<workdir>/predictions_<split>.npz` (plain arrays,
no pickle) because the studies that read them (slide context, ensembles, calibration) revisit
them many times.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

import input_pipeline
from input_pipeline.sharding import Sharding
from trainer import compiled, evaluate
from trainer.rundir import RunDirectory

SPLITS = ("validation", "test")


@dataclasses.dataclass(frozen=True)
class PatchPredictions:
    """P(IDC) of the patches of one split, with where each patch lies and its label."""

    p_idc: np.ndarray  # float32 [N]
    label: np.ndarray  # int32 [N]
    patient: np.ndarray  # int32 [N]
    x: np.ndarray  # int32 [N], 1-based top-left column on the slide's 50-pixel grid
    y: np.ndarray  # int32 [N]

    def select(self, rows: np.ndarray) -> PatchPredictions:
        return PatchPredictions(**{k: v[rows] for k, v in dataclasses.asdict(self).items()})

    def with_p_idc(self, p_idc: np.ndarray) -> PatchPredictions:
        return dataclasses.replace(self, p_idc=np.asarray(p_idc, np.float32))


def _cache_file(workdir: pathlib.Path, split: str, which: str) -> pathlib.Path:
    """The final network's are written by the run itself (`RunDirectory.write_predictions`)."""
    if which == "latest":
        return RunDirectory(workdir).predictions_file(split)
    return workdir / f"predictions_{split}_{which}.npz"


def split_predictions(
    workdir: str | pathlib.Path, split: str, which: str = "latest"
) -> PatchPredictions:
    """The run's P(IDC) of every patch of `split` ("validation" or "test"), cached in workdir."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    workdir = pathlib.Path(workdir)
    cache = _cache_file(workdir, split, which)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as arrays:
            return PatchPredictions(**{k: arrays[k] for k in arrays.files})
    computed = _predict_splits(workdir, which)
    for name, table in computed.items():
        np.savez(_cache_file(workdir, name, which), **dataclasses.asdict(table))
    return computed[split]


def _predict_splits(workdir: pathlib.Path, which: str) -> dict[str, PatchPredictions]:
    config, state, _ = RunDirectory(workdir).restore_state(which)
    dataset = input_pipeline.load_dataset(config.data)
    sharding = Sharding.over_all_devices()
    training = compiled.build(config, sharding, state=state)  # puts the state on the mesh
    tables = {}
    for name in SPLITS:
        part = getattr(dataset, name)
        p_idc, _ = evaluate.predict_split(
            training.eval_step, training.state, part, config, sharding
        )
        tables[name] = PatchPredictions(
            p_idc=p_idc.astype(np.float32),
            label=part.label.astype(np.int32),
            patient=part.patient.astype(np.int32),
            x=part.x.astype(np.int32),
            y=part.y.astype(np.int32),
        )
    return tables
