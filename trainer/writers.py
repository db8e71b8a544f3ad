"""What a run writes as it goes: scalars, history.csv, curves.png, and the console's progress.

Every scalar goes to `metrics.jsonl`, a file that needs nothing to read, and to TensorBoard
through clu where TensorFlow is installed (GPU images often lack it: then TensorBoard is off, a
line says so). The console gets no scalars: it gets `TrainingProgress` (a bar per epoch with
images/s on a terminal, a line every so often in a log file) and one line per epoch
(`epoch_line`); the loop adds the start and the closing line.
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


class MetricWriter:
    """Scalars to metrics.jsonl and, where TensorFlow is installed, to TensorBoard (clu).

    `logdir` receives the TensorBoard events, `jsonl_path` every scalar. Processes other than 0
    write nothing.
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

            self._writers.append(
                metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(logdir)))
            )
        else:
            logging.info(
                "TensorFlow is not installed: no TensorBoard events; every scalar is in %s.",
                self.jsonl.path,
            )
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


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class TrainingProgress:
    """The console's view of training steps.

    With `bar` (a terminal): one tqdm bar per epoch counting images, with images/s and the time
    left, cleared at the epoch's end (its line replaces it). Otherwise (a log file, a pipe, or
    `config.progress_bar=False`): every `every_steps` steps, at most once per `min_interval_s`,
    a line `step 40/400 (epoch 1/5): 2.1 steps/s, 34 images/s, ETA 3.2 min`. Rates leave out
    each (re)started epoch's first step, which may include compilation.
    """

    def __init__(
        self,
        *,
        num_steps: int,
        steps_per_epoch: int,
        num_epochs: int,
        batch_size: int,
        every_steps: int,
        bar: bool,
        min_interval_s: float = 10.0,
    ):
        self.num_steps, self.steps_per_epoch = num_steps, steps_per_epoch
        self.num_epochs, self.batch_size = num_epochs, batch_size
        self.every_steps, self.min_interval_s = every_steps, min_interval_s
        self.use_bar = bar
        self._bar = None
        self._rate_start: tuple[int, float] | None = None
        self._last_line = -math.inf

    def start_epoch(self, epoch: int, start_batch: int) -> None:
        self._rate_start = None
        if self.use_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=(self.steps_per_epoch - start_batch) * self.batch_size,
                desc=f"epoch {epoch + 1}/{self.num_epochs}",
                unit="img",
                leave=False,
                mininterval=1.0,
                dynamic_ncols=True,
            )

    def step(self, step: int) -> None:
        """After training step `step` (1-based count of steps done)."""
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(self.batch_size)
            return
        if self._rate_start is None:
            self._rate_start = (step, now)
            return
        if step % self.every_steps or now - self._last_line < self.min_interval_s:
            return
        first_step, first_time = self._rate_start
        steps_per_second = (step - first_step) / max(now - first_time, 1e-9)
        eta = (self.num_steps - step) / max(steps_per_second, 1e-9)
        logging.info(
            "step %d/%d (epoch %d/%d): %.2f steps/s, %.0f images/s, ETA %s",
            step,
            self.num_steps,
            (step - 1) // self.steps_per_epoch + 1,
            self.num_epochs,
            steps_per_second,
            steps_per_second * self.batch_size,
            _minutes(eta),
        )
        self._last_line = now

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def epoch_line(record: Mapping, num_epochs: int, images_per_second: float | None) -> str:
    """One line per finished epoch: the train and validation metrics that matter."""
    speed = f"; {images_per_second:.0f} train images/s" if images_per_second else ""
    return (
        f"epoch {record['epoch']}/{num_epochs}: train loss {record['train_loss']:.3f}, "
        f"accuracy {record['train_accuracy']:.3f}; validation loss {record['val_loss']:.3f}, "
        f"accuracy {record['val_accuracy']:.3f} (majority {record['val_majority_baseline']:.3f}), "
        f"balanced accuracy {record['val_balanced_accuracy']:.3f}, "
        f"ROC AUC {record['val_roc_auc']:.3f}{speed}"
    )


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


def _series(history: Sequence[Mapping], key: str) -> list[float]:
    """The column `key` of the history as floats, NaN where a row lacks it (or it is empty)."""
    values = []
    for row in history:
        value = row.get(key)
        try:
            values.append(math.nan if value in (None, "") else float(value))
        except (TypeError, ValueError):
            values.append(math.nan)
    return values


# The panels of curves.png: (title, y label, [(history column, label, style)], chance level).
CURVE_PANELS = (
    (
        "Accuracy",
        "accuracy",
        [
            ("train_accuracy", "train", "o-"),
            ("val_accuracy", "validation", "s-"),
            ("val_majority_baseline", "majority baseline (validation)", "k:"),
        ],
        None,
    ),
    (
        "Loss",
        "cross-entropy",
        [("train_loss", "train", "o-"), ("val_loss", "validation", "s-")],
        None,
    ),
    (
        "Balanced accuracy (threshold 0.5)",
        "balanced accuracy",
        [("train_balanced_accuracy", "train", "o-"), ("val_balanced_accuracy", "validation", "s-")],
        0.5,
    ),
    (
        "ROC AUC",
        "ROC AUC",
        [("train_roc_auc", "train", "o-"), ("val_roc_auc", "validation", "s-")],
        0.5,
    ),
)


def plot_curves(path: pathlib.Path, history: Sequence[Mapping], title: str) -> None:
    """Per epoch: accuracy and loss (the paper's figures 2 and 3), balanced accuracy and ROC AUC.

    Accuracy flatters a model under class imbalance (the majority baseline is drawn beside it);
    balanced accuracy and ROC AUC do not. Validation everywhere; train where the history has the
    column (the training loop records train loss and accuracy only: the running means of the
    epoch's steps). The dotted line of the last two panels is chance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = _series(history, "epoch")
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    legend: dict[str, object] = {}  # one legend for the figure, below the panels: no data hidden
    for ax, (panel_title, ylabel, lines, chance) in zip(axes.flat, CURVE_PANELS):
        for key, label, style in lines:
            values = _series(history, key)
            if any(math.isfinite(v) for v in values):
                colour = {"train": "tab:blue", "validation": "tab:orange"}.get(label)
                ax.plot(epochs, values, style, label=label, **({"color": colour} if colour else {}))
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance (0.5)")
        ax.set(xlabel="epoch", ylabel=ylabel, title=panel_title)
        ax.grid(alpha=0.3)
        if epochs:
            ax.set_xticks(_epoch_ticks(epochs))
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=len(legend), fontsize=9)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _epoch_ticks(epochs: Sequence[float]) -> list[int]:
    """Whole epochs, at most about 10 ticks."""
    last = int(max(epochs))
    stride = max(1, math.ceil(last / 10))
    return list(range(stride if stride > 1 else 1, last + 1, stride)) or [last]


def _with_interval(value, interval: Mapping | None) -> str:
    text = "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"
    if interval and interval.get("low") is not None and interval.get("high") is not None:
        text += f" [{interval['low']:.2f}, {interval['high']:.2f}]"
    return text


def closing_line(summary: Mapping, workdir: pathlib.Path, files: Sequence[str]) -> str:
    """The run's last line: test metrics at 0.5 with their 95% intervals, and where it all is.

    "test ROC AUC 0.874 [0.83, 0.91], balanced accuracy 0.762 [0.70, 0.81], F1 0.698 [0.61, 0.76]
    at threshold 0.5, 95% intervals over the 26 test patients (470 patches); wrote summary.json,
    ... to /tmp/idc_v1"
    """
    test = summary["test"]
    intervals = (summary.get("test_intervals") or {}).get("at_0.5") or {}
    metrics = ", ".join(
        f"{title} {_with_interval(test.get(key), intervals.get(key))}"
        for key, title in (
            ("roc_auc", "ROC AUC"),
            ("balanced_accuracy", "balanced accuracy"),
            ("f1", "F1"),
        )
    )
    counts = (summary.get("data_info") or {}).get("counts", {}).get("test", {})
    patients = f"the {counts['patients']} test patients" if "patients" in counts else "patients"
    patches = f" ({counts['patches']:,} patches)" if "patches" in counts else ""
    where = f", 95% intervals over {patients}{patches}" if intervals else patches
    return f"test {metrics} at threshold 0.5{where}; wrote {', '.join(files)} to {workdir}"
