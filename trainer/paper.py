"""The paper's experiment: which runs it trains, and report.md from what they left behind.

"Study for Performance of MobileNetV1 and MobileNetV2 Based on Breast Cancer" trains MobileNetV1 and
MobileNetV2 from scratch (Adam 1e-4, 5 epochs, cross-entropy) on the Kaggle IDC patches, split at
random patch by patch, and reports train / validation accuracy (its Table 1: V1 0.849 / 0.857,
V2 0.819 / 0.743) and the accuracy curves of each model (its Figures 2 and 3). `reproduce.py`
trains the runs (`run_directory`); `write_report` renders Table 1 (extended), Figures 2 and 3 and
the leakage study from their run directories.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from trainer.rundir import Run, RunDirectory

MODELS = ("mobilenet_v1", "mobilenet_v2")
SPLITS = ("random_patch", "patient")  # the paper's protocol first
MODEL_TITLES = {"mobilenet_v1": "MobileNetV1", "mobilenet_v2": "MobileNetV2"}
SPLIT_TITLES = {"random_patch": "random patch (paper)", "patient": "patient-level"}
FIGURES = {"mobilenet_v1": "fig2_mobilenet_v1.png", "mobilenet_v2": "fig3_mobilenet_v2.png"}

# Table 1 of the paper (patch-level random split, 5 epochs).
PAPER_ACCURACY = {
    "mobilenet_v1": {"train": 0.849, "validation": 0.857},
    "mobilenet_v2": {"train": 0.819, "validation": 0.743},
}
PAPER_EPOCHS = 5

KAGGLE_PATIENTS, KAGGLE_PATCHES = 279, 277_524


def run_directory(workdir: str | pathlib.Path, model: str, split: str) -> pathlib.Path:
    return pathlib.Path(workdir) / f"{model}_{split}"


def load_runs(workdir: str | pathlib.Path) -> dict[tuple[str, str], Run]:
    """The four finished runs, keyed by (model, split); an error names any that is missing."""
    runs, missing = {}, []
    for model in MODELS:
        for split in SPLITS:
            run = RunDirectory(run_directory(workdir, model, split))
            if not run.finished():
                missing.append(run.path)
                continue
            runs[model, split] = record = run.read()
            if record.summary.get("model") != model:
                raise ValueError(
                    f"{run.summary_file} is a run of {record.summary.get('model')!r}, not {model!r}"
                )
            if record.config.data.split != split:
                raise ValueError(
                    f"{run.path} was trained with the {record.config.data.split!r} split, "
                    f"not {split!r}"
                )
    if missing:
        names = ", ".join(str(d) for d in missing)
        raise FileNotFoundError(
            f"unfinished runs (no summary.json): {names}; run without --report_only to train them"
        )
    return runs


# ----------------------------------------------------------------------------- formatting


def fmt(value, digits: int = 3) -> str:
    """A table cell: fixed decimals, 'n/a' for a missing or undefined (NaN) value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def fmt_signed(value, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}"


def fmt_duration(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


TABLE1_HEADER = (
    "Model",
    "Split",
    "Train acc.",
    "Val. acc.",
    "Paper train / val. acc.",
    "Val. majority baseline",
    "Val. balanced acc.",
    "Val. F1",
    "Val. ROC AUC",
    "Parameters",
    "Multiply-adds / image",
    "Train images/s",
    "Wall time",
)


def table1_rows(runs: Mapping[tuple[str, str], Run]) -> list[list[str]]:
    """The paper's Table 1 (train and validation accuracy after the last epoch), extended."""
    rows = []
    for model in MODELS:
        paper = PAPER_ACCURACY[model]
        for split in SPLITS:
            run = runs[model, split]
            summary, validation = run.summary, run.summary["final_validation"]
            rows.append(
                [
                    MODEL_TITLES[model],
                    SPLIT_TITLES[split],
                    fmt(summary["final_train"]["accuracy"]),
                    fmt(validation["accuracy"]),
                    f"{paper['train']:.3f} / {paper['validation']:.3f}",
                    fmt(validation["majority_baseline"]),
                    fmt(validation["balanced_accuracy"]),
                    fmt(validation["f1"]),
                    fmt(validation["roc_auc"]),
                    f"{summary['trainable_parameters']:,}",
                    f"{summary['multiply_adds_per_image'] / 1e6:.1f} M",
                    fmt(summary["train_images_per_second"], 0),
                    fmt_duration(summary["wall_time_s"]),
                ]
            )
    return rows


LEAKAGE_METRICS = (
    ("accuracy", "accuracy"),
    ("majority_baseline", "majority-class baseline"),
    ("balanced_accuracy", "balanced accuracy"),
    ("f1", "F1 (IDC)"),
    ("roc_auc", "ROC AUC"),
    ("pr_auc", "PR AUC"),
)


def leakage_rows(runs: Mapping[tuple[str, str], Run]) -> list[list[str]]:
    """Test metrics under the patch-level and the patient-level split, and their difference."""
    rows = []
    for model in MODELS:
        leaky, clean = (
            runs[model, "random_patch"].summary["test"],
            runs[model, "patient"].summary["test"],
        )
        for key, title in LEAKAGE_METRICS:
            rows.append(
                [
                    MODEL_TITLES[model],
                    title,
                    fmt(leaky[key]),
                    fmt(clean[key]),
                    fmt_signed(leaky[key] - clean[key]),
                ]
            )
    return rows


def data_rows(runs: Mapping[tuple[str, str], Run]) -> list[list[str]]:
    """Patches (IDC share) and patients of each split of each protocol (the V1 runs' data)."""
    rows = []
    for split in SPLITS:
        counts = runs[MODELS[0], split].summary.get("data_info", {}).get("counts", {})
        cells = []
        for part in ("train", "validation", "test"):
            c = counts.get(part)
            if c is None:
                cells.append("n/a")
                continue
            share = c["positives"] / c["patches"] if c["patches"] else math.nan
            patients = _plural(c["patients"], "patient")
            cells.append(f"{c['patches']:,} patches ({fmt(share, 2)} IDC), {patients}")
        rows.append([SPLIT_TITLES[split], *cells])
    return rows


# ----------------------------------------------------------------------------- figures


def plot_accuracy_figure(
    path: pathlib.Path, model: str, runs: Mapping[tuple[str, str], Run], *, figure_number: int
) -> None:
    """The paper's Figure 2 / 3 (train and validation accuracy per epoch), for both splits.

    The paper's final accuracies are marked at its epoch 5; the dotted line is the validation
    majority-class baseline, the accuracy of always answering "no IDC".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    colours = {"random_patch": "tab:red", "patient": "tab:blue"}
    for split in SPLITS:
        history = runs[model, split].history
        epochs = [row["epoch"] for row in history]
        for key, style, name, alpha in (
            ("train_accuracy", "o-", "train", 1.0),
            ("val_accuracy", "s--", "validation", 1.0),
            ("val_majority_baseline", ":", "majority baseline", 0.7),
        ):
            ax.plot(
                epochs,
                [row[key] for row in history],
                style,
                color=colours[split],
                alpha=alpha,
                label=f"{name}, {SPLIT_TITLES[split]}",
            )
    paper = PAPER_ACCURACY[model]
    ax.plot([PAPER_EPOCHS], [paper["train"]], "k*", markersize=12, label="paper, train")
    ax.plot(
        [PAPER_EPOCHS],
        [paper["validation"]],
        "X",
        color="dimgray",
        markersize=10,
        label="paper, validation",
    )
    last_epoch = max(int(row["epoch"]) for split in SPLITS for row in runs[model, split].history)
    ax.set_xticks(range(1, max(last_epoch, PAPER_EPOCHS) + 1))
    ax.set(xlabel="epoch", ylabel="accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Figure {figure_number}: {MODEL_TITLES[model]} accuracy per epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PER_PATIENT_METRICS = (("roc_auc", "ROC AUC"), ("balanced_accuracy", "balanced accuracy"))


def _as_floats(values) -> np.ndarray:
    """Numbers as read back from summary.json, where NaN was written as null."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def plot_reliability_diagram(
    path: pathlib.Path,
    curves: Sequence[tuple[str, Mapping]],
    *,
    title: str = "Reliability diagram (test)",
) -> None:
    """Observed fraction of IDC against mean predicted P(IDC), bin by bin, for one or more runs.

    `curves` are (name, curve) pairs; a curve is `metrics.reliability_curve` or
    `metrics.calibration_report` (a run's summary["test_calibration"]); all share the bin edges.
    Points on the diagonal are calibrated; above it the model underestimates P(IDC). The lower
    panel gives the patches per bin (log scale): the points of sparse bins are noisy.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_count) = plt.subplots(
        2, 1, figsize=(6.5, 6.5), sharex=True, gridspec_kw={"height_ratios": (3, 1)}
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    edges = _as_floats(curves[0][1]["bin_edges"]) if curves else np.linspace(0, 1, 2)
    bar_width = np.diff(edges) / max(len(curves), 1)
    for number, (name, curve) in enumerate(curves):
        predicted, observed = (
            _as_floats(curve["mean_predicted"]),
            _as_floats(curve["observed_fraction"]),
        )
        filled = ~np.isnan(predicted)
        label = name if "ece" not in curve else f"{name} (ECE {fmt(curve['ece'])})"
        (line,) = ax.plot(predicted[filled], observed[filled], "o-", label=label)
        ax_count.bar(
            edges[:-1] + number * bar_width,
            curve["count"],
            width=bar_width,
            align="edge",
            color=line.get_color(),
            alpha=0.7,
        )
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed fraction of IDC", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax_count.set(xlabel="predicted P(IDC)", ylabel="patches", yscale="log")
    ax_count.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_per_patient_distribution(
    path: pathlib.Path,
    tables: Sequence[tuple[str, Sequence[Mapping]]],
    *,
    title: str = "Per-patient metrics (test)",
) -> None:
    """Per-patient ROC AUC and balanced accuracy of one or more runs: a box and every patient.

    `tables` are (name, rows) pairs; rows are `metrics.per_patient_table` (a run's
    summary["test_per_patient"]["patients"]). A patient with one class only has neither metric
    and is left out (the axis label counts those shown). Marker area grows with the patient's
    patches; the dotted line is chance (0.5).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(PER_PATIENT_METRICS), figsize=(4 + 1.5 * len(tables), 4.5), squeeze=False
    )
    jitter = np.random.default_rng(0)  # the same figure every time
    for ax, (key, metric_title) in zip(axes[0], PER_PATIENT_METRICS, strict=True):
        labels = []
        for position, (name, rows) in enumerate(tables, start=1):
            values = _as_floats([row[key] for row in rows])
            patches = np.array([row["patches"] for row in rows], dtype=np.float64)
            shown = ~np.isnan(values)
            labels.append(f"{name}\n({shown.sum()} of {len(values)})")
            if shown.any():
                ax.boxplot(values[shown], positions=[position], widths=0.5, showfliers=False)
            ax.scatter(
                position + jitter.uniform(-0.18, 0.18, shown.sum()),
                values[shown],
                s=8 + 60 * np.sqrt(patches[shown] / max(patches.max(initial=1.0), 1.0)),
                alpha=0.6,
            )
        ax.axhline(0.5, color="k", linestyle=":", linewidth=1)
        ax.set_xticks(range(1, len(tables) + 1), labels, fontsize=8)
        ax.set(ylim=(-0.02, 1.02), ylabel=f"per-patient {metric_title}", title=metric_title)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- the report


def _recipe(runs: Mapping[tuple[str, str], Run]) -> str:
    run = runs[MODELS[0], SPLITS[0]]
    config, summary = run.config, run.summary
    return (
        f"Each run: {_plural(config['num_epochs'], 'epoch')} of Adam (learning rate "
        f"{config['learning_rate']:g}, {config['schedule']} schedule, weight decay "
        f"{config['weight_decay']:g}), softmax cross-entropy (label smoothing "
        f"{config['label_smoothing']:g}, class weights {config['class_weights']}), global batch "
        f"{config['global_batch_size']}, width multiplier alpha {config['model']['alpha']:g}, "
        f"patches resized to {config['preprocess']['image_size']}x"
        f"{config['preprocess']['image_size']} ({config['preprocess']['resize_method']}), "
        f"seed {config['seed']}. Trained on {summary['devices']} {summary['backend']} "
        f"device(s) in {summary['compute_dtype']}."
    )


def data_statement(runs: Mapping[tuple[str, str], Run]) -> str:
    """What the runs trained and were tested on, against the whole Kaggle set."""
    summary = runs[MODELS[0], "patient"].summary
    counts = summary["data_info"]["counts"].values()
    patients = sum(part["patients"] for part in counts)
    patches = sum(part["patches"] for part in counts)
    name = {"idc_sample": "the real sample shipped in `data/idc_sample`"}.get(
        summary["dataset"], f"`{summary['dataset']}` from `{summary['data_source']}`"
    )
    return (
        f"**Data: {name}, {patients} of the Kaggle set's {KAGGLE_PATIENTS} patients and "
        f"{patches:,} of its {KAGGLE_PATCHES:,} patches ({patches / KAGGLE_PATCHES:.1%}).** "
        "The paper used every patch."
    )


def render_report(runs: Mapping[tuple[str, str], Run], command: str | None = None) -> str:
    """report.md from the four runs (figures are referenced by their file names)."""
    parts = ["# Reproduction: MobileNetV1 and MobileNetV2 on breast histopathology (IDC)", ""]
    parts += [
        data_statement(runs),
        "",
        'Paper: "Study for Performance of MobileNetV1 and MobileNetV2 Based on Breast Cancer" '
        "(Adam 1e-4, 5 epochs, cross-entropy, global average pooling and a dense layer, on the "
        "Kaggle IDC patches split at random patch by patch).",
        "",
        _recipe(runs),
    ]
    if command:
        parts += ["", "Regenerate with:", "", "```bash", command, "```"]
    parts += [
        "",
        "## Table 1: accuracy after the last epoch, extended",
        "",
        "Train accuracy is the running mean over the last epoch, as Keras reports it; "
        "validation metrics are those of the final model on the validation "
        "split, at threshold 0.5. The paper split patches at random, so its numbers compare "
        "with the *random patch* rows. The majority baseline is the accuracy of always answering "
        '"no IDC": an accuracy means little until it is compared with it.',
        "",
        markdown_table(TABLE1_HEADER, table1_rows(runs)),
        "",
        "## Figures 2 and 3: accuracy per epoch",
        "",
    ]
    for number, model in enumerate(MODELS, start=2):
        parts += [f"![Figure {number}: {MODEL_TITLES[model]}]({FIGURES[model]})", ""]
    parts += [
        "## Leakage study: patch-level against patient-level split (test split)",
        "",
        "Under the paper's random patch split every patient contributes patches to training, "
        "validation and test, and neighbouring patches of one slide are near-copies of each "
        "other; under the patient-level split the test patients are never seen in training. "
        "The difference (random patch minus patient) estimates how much the paper's protocol "
        "overstates performance on new patients. Both at threshold 0.5.",
        "",
        markdown_table(
            ("Model", "Test metric", "Random patch", "Patient-level", "Difference"),
            leakage_rows(runs),
        ),
        "",
        "## Data",
        "",
        markdown_table(("Split protocol", "Train", "Validation", "Test"), data_rows(runs)),
        "",
        "Run directories (history.csv, summary.json, curves.png, checkpoints): "
        + ", ".join(f"`{run.directory.name}/`" for run in runs.values())
        + ".",
        "",
    ]
    return "\n".join(parts)


def write_report(workdir: str | pathlib.Path, command: str | None = None) -> pathlib.Path:
    """Writes <workdir>/report.md, fig2_mobilenet_v1.png and fig3_mobilenet_v2.png."""
    workdir = pathlib.Path(workdir)
    runs = load_runs(workdir)
    for number, model in enumerate(MODELS, start=2):
        plot_accuracy_figure(workdir / FIGURES[model], model, runs, figure_number=number)
    path = workdir / "report.md"
    path.write_text(render_report(runs, command))
    return path
