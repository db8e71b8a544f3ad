"""The run directory (`--workdir`): the one place that knows its files and reads them back.

    <workdir>/config.json     the resolved config of the run
             /parameters.txt  the network's parameters: name, shape, size, mean, std per array
             /metrics.jsonl   every scalar logged, one JSON object per line (trainer/writers.py)
             /history.csv     one row per epoch: train loss and accuracy, validation metrics
             /curves.png      accuracy, loss, balanced accuracy and ROC AUC per epoch
             /summary.json    test metrics, costs, the data set, written when the run finishes
             /checkpoints/    orbax checkpoints (trainer/checkpoints.py)
             /run.lock        while a run is in progress (trainer/workdir_lock.py)

Training writes through `RunDirectory`; `predict.py`, `heatmap.py` and `reproduce.py` read
through it (`RunDirectory.read`, `restore_model`), never by file names of their own.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence

import jax
import ml_collections
from flax import nnx

from trainer import state as state_lib
from trainer import writers
from trainer.checkpoints import Checkpointer


@dataclasses.dataclass(frozen=True)
class Run:
    """What a finished (or running) run left in its directory."""

    directory: pathlib.Path
    config: ml_collections.ConfigDict
    history: list[dict]  # one row per finished epoch, numbers as floats
    summary: dict  # empty until the run finishes

    @property
    def finished(self) -> bool:
        return bool(self.summary)


class RunDirectory:
    """The files of one training run."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path).absolute()

    config_file = property(lambda self: self.path / "config.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    history_file = property(lambda self: self.path / "history.csv")
    curves_file = property(lambda self: self.path / "curves.png")
    parameters_file = property(lambda self: self.path / "parameters.txt")
    summary_file = property(lambda self: self.path / "summary.json")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")

    def predictions_file(self, split: str) -> pathlib.Path:
        """P(IDC) of every patch of `split` by the final network (`write_predictions`)."""
        return self.path / f"predictions_{split}.npz"

    # ------------------------------------------------------------------------- writing

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        writers.write_json(self.config_file, config.to_dict())

    def write_history(self, history: Sequence[Mapping], title: str) -> None:
        """history.csv and curves.png of the epochs so far."""
        writers.write_history_csv(self.history_file, history)
        writers.plot_curves(self.curves_file, history, title)

    def write_predictions(self, split_name: str, split, p_idc) -> None:
        """The network's P(IDC) of every patch of a split, with its label and place (plain
        arrays, no pickle; `experiment.predictions` reads them), written whole."""
        import numpy as np  # noqa: PLC0415

        path = self.predictions_file(split_name)
        temporary = path.with_name(path.name + ".tmp.npz")
        np.savez(
            temporary,
            p_idc=np.asarray(p_idc, np.float32),
            label=split.label.astype(np.int32),
            patient=split.patient.astype(np.int32),
            x=split.x.astype(np.int32),
            y=split.y.astype(np.int32),
        )
        temporary.replace(path)

    def write_parameters(self, overview: str) -> None:
        self.parameters_file.write_text(overview.rstrip("\n") + "\n")

    def redraw_curves(self) -> pathlib.Path:
        """curves.png again from history.csv and config.json (after a change to the figure)."""
        history = self.history()
        dataset = str(history[-1].get("dataset", "")) if history else ""
        title = curves_title(self.config(), dataset, self.path.name)
        writers.plot_curves(self.curves_file, history, title)
        return self.curves_file

    def write_summary(self, summary: Mapping) -> None:
        writers.write_json(self.summary_file, summary)

    def checkpointer(self, keep: int, read_only: bool = False) -> Checkpointer:
        return Checkpointer(self.checkpoint_dir, keep=keep, read_only=read_only)

    # ------------------------------------------------------------------------- reading

    def finished(self) -> bool:
        """Whether the run ran to its end (it writes summary.json last)."""
        return self.summary_file.is_file()

    def has_checkpoint(self) -> bool:
        """Whether a finished checkpoint is there (orbax names them by their step)."""
        return self.checkpoint_dir.is_dir() and any(
            p.name.isdigit() for p in self.checkpoint_dir.iterdir()
        )

    def recorded_config(self) -> dict | None:
        """config.json as written (plain JSON), or None when there is none."""
        if not self.config_file.is_file():
            return None
        return json.loads(self.config_file.read_text())

    def config(self) -> ml_collections.ConfigDict:
        """The resolved config the run wrote, locked (a mistyped key is an error)."""
        if not self.config_file.is_file():
            raise FileNotFoundError(
                f"{self.config_file} not found: is {self.path} the --workdir of a training run?"
            )
        config = ml_collections.ConfigDict(json.loads(self.config_file.read_text()))
        config.lock()
        return config

    def history(self) -> list[dict]:
        """One dict per finished epoch; numeric columns as floats."""
        if not self.history_file.is_file():
            return []
        with self.history_file.open(newline="") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]

    def summary(self) -> dict:
        """summary.json, or {} while the run has not finished."""
        if not self.summary_file.is_file():
            return {}
        return json.loads(self.summary_file.read_text())

    def read(self) -> Run:
        return Run(self.path, self.config(), self.history(), self.summary())

    def validation_threshold(self, step: int) -> float:
        """The threshold tuned on validation (max balanced accuracy) at checkpoint `step`.

        Training records it after every epoch (`val_tuned_threshold`); a checkpoint taken
        mid-epoch has none.
        """
        if not self.history_file.is_file():
            raise FileNotFoundError(
                f"{self.history_file} not found: no validation threshold was recorded"
            )
        for row in self.history():
            if int(row["step"]) == step and row.get("val_tuned_threshold") not in (None, ""):
                return float(row["val_tuned_threshold"])
        raise ValueError(
            f"{self.history_file} has no validation threshold for step {step} (a mid-epoch "
            "checkpoint?); pass a number as the threshold or pick an end-of-epoch checkpoint"
        )

    def restore_state(self, which: str = "latest") -> tuple[ml_collections.ConfigDict, object, int]:
        """(config, TrainState, step) of a checkpoint of the run, on the default device.

        `which` is "latest", "best" (by validation balanced accuracy) or a step number.
        """
        config = self.config()
        checkpointer = self.checkpointer(config.keep_checkpoints, read_only=True)
        if which == "latest":
            step = checkpointer.latest_step()
        elif which == "best":
            step = checkpointer.best_step()
        else:
            step = int(which)
        if step is None:
            raise FileNotFoundError(f"no {which} checkpoint in {checkpointer.directory}")
        tx = state_lib.create_optimizer(config, steps_per_epoch=1)
        abstract_state = jax.eval_shape(lambda: state_lib.create_train_state(config, tx)[0])
        state, _ = checkpointer.restore(step, abstract_state)
        checkpointer.close()
        return config, state, step

    def restore_model(
        self, which: str = "latest"
    ) -> tuple[ml_collections.ConfigDict, nnx.Module, int]:
        """(config, model in eval mode, step) of a checkpoint of the run (`restore_state`)."""
        config, state, step = self.restore_state(which)
        _, eval_graph, _ = state_lib.split_model(
            nnx.eval_shape(lambda: state_lib.create_model(config, seed=0))
        )
        model = nnx.merge(eval_graph, state.params, state.batch_stats, state.rng_streams)
        return config, model, step


def curves_title(config: ml_collections.ConfigDict, dataset: str, run_name: str = "") -> str:
    """curves.png's title: the run's directory, network, input size, data set and split."""
    model = f"{config.model.name} alpha={config.model.alpha} at {config.preprocess.image_size} px"
    title = f"{model}, {dataset or config.data.dataset}, {config.data.split} split"
    return f"{run_name}: {title}" if run_name else title


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text
