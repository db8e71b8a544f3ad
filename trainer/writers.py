"""What a run logs: scalars to clu / the console and metrics.jsonl, and its curves.

clu's `metric_writers` and `periodic_actions` import TensorFlow, which GPU images often lack.
With TensorFlow the run logs through clu (TensorBoard + console); without it, to the console
through absl logging. Either way every scalar also goes to `metrics.jsonl`, a file that needs
nothing to read.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import time
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging


def tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def _to_python(value):
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


class JsonlWriter:
    """Appends one JSON object per `write_scalars` call: {"step": .., "split": .., metrics...}.

    On resume, `truncate_after(step)` drops the records written after the restored checkpoint,
    so a run killed and resumed leaves the same file as an uninterrupted one.
    """

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        record = {"step": int(step), **{k: _to_python(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _ConsoleWriter:
    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        text = ", ".join(f"{k}={_format(v)}" for k, v in scalars.items())
        logging.info("[%d] %s", step, text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float | np.floating) else str(value)


class MetricWriter:
    """Fans scalars out to clu's default writer (or the console) and to a JSON-lines file.

    `logdir` receives the TensorBoard events, `jsonl_path` every scalar.
    """

    def __init__(
        self, logdir: pathlib.Path, jsonl_path: pathlib.Path, *, is_main_process: bool = True
    ):
        self.jsonl = JsonlWriter(jsonl_path)
        self._writers: list = []
        if not is_main_process:
            return
        if tensorflow_available():
            from clu import metric_writers

            self._writers.append(metric_writers.create_default_writer(str(logdir)))
        else:
            logging.warning(
                "TensorFlow is not installed: TensorBoard logging is off; metrics go to the "
                "console and to %s.",
                self.jsonl.path,
            )
            self._writers.append(_ConsoleWriter())
        self._writers.append(self.jsonl)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        scalars = {k: float(v) if np.ndim(v) == 0 else v for k, v in scalars.items()}
        for writer in self._writers:
            writer.write_scalars(step, scalars)

    def flush(self) -> None:
        for writer in self._writers:
            writer.flush()

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


class ProgressReporter:
    """Steps/s and ETA every `every_steps`: clu's ReportProgress where clu can import it."""

    def __init__(self, num_train_steps: int, writer: MetricWriter, every_steps: int):
        self._clu_hook = None
        if tensorflow_available() and writer._writers:
            from clu import periodic_actions

            self._clu_hook = periodic_actions.ReportProgress(
                num_train_steps=num_train_steps, writer=writer._writers[0], every_steps=every_steps
            )
        self.num_train_steps = num_train_steps
        self.every_steps = every_steps
        self._last = None

    def __call__(self, step: int) -> None:
        if self._clu_hook is not None:
            self._clu_hook(step)
            return
        now = time.monotonic()
        if self._last is None:
            self._last = (step, now)
            return
        if step % self.every_steps:
            return
        last_step, last_time = self._last
        steps_per_sec = (step - last_step) / max(now - last_time, 1e-9)
        eta_min = (self.num_train_steps - step) / max(steps_per_sec, 1e-9) / 60
        logging.info(
            "step %d/%d: %.2f steps/s, ETA %.1f min",
            step,
            self.num_train_steps,
            steps_per_sec,
            eta_min,
        )
        self._last = (step, now)


def write_json(path: pathlib.Path, payload: Mapping) -> None:
    tmp = pathlib.Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(_json_ready(payload), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def _json_ready(value):
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return _to_python(value)


def write_history_csv(path: pathlib.Path, history: Sequence[Mapping]) -> None:
    """One row per epoch, the union of all keys as columns, in first-seen order."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    tmp = pathlib.Path(str(path) + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: _to_python(v) for k, v in row.items()})
    tmp.replace(path)


def plot_curves(path: pathlib.Path, history: Sequence[Mapping], title: str) -> None:
    """Train vs validation accuracy and loss per epoch: the paper's figures 2 and 3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r["val_accuracy"] for r in history], "s-", label="validation")
    ax_acc.plot(
        epochs, [r["val_majority_baseline"] for r in history], "k:", label="majority baseline"
    )
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_xticks(epochs)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
