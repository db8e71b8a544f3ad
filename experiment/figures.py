"""The report's figures (matplotlib, Agg): the paper's accuracy curves, calibration, patients."""

from __future__ import annotations

import pathlib
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np

from experiment.paper import MODEL_TITLES, PAPER_ACCURACY, PAPER_EPOCHS, SPLIT_TITLES, SPLITS
from trainer.rundir import Run


def _pyplot():
    import matplotlib  # noqa: PLC0415 (only the report draws)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_accuracy_figure(
    path: pathlib.Path, model: str, runs: Mapping[str, Run], *, figure_number: int
) -> None:
    """The paper's Figure 2 / 3 (train and validation accuracy per epoch), for both splits.

    `runs` are the paper's runs by name (`<model>_<split>`).
    The paper's final accuracies are marked at its epoch 5; the dotted line is the validation
    majority-class baseline, the accuracy of always answering "no IDC".
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colours = {"random_patch": "tab:red", "patient": "tab:blue"}
    for split in SPLITS:
        history = runs[f"{model}_{split}"].history
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
    last_epoch = max(
        int(row["epoch"]) for split in SPLITS for row in runs[f"{model}_{split}"].history
    )
    ax.set_xticks(range(1, max(last_epoch, PAPER_EPOCHS) + 1))
    ax.set(xlabel="epoch", ylabel="accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Figure {figure_number}: {MODEL_TITLES[model]} accuracy per epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PER_PATIENT_METRICS = (("roc_auc", "ROC AUC"), ("balanced_accuracy", "balanced accuracy"))


def tick_label(name: str, width: int = 13) -> str:
    """A label wrapped at spaces into lines of about `width` characters (axis ticks that sit
    side by side must not run into each other)."""
    return textwrap.fill(name, width=width, break_long_words=False, break_on_hyphens=False)


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
    plt = _pyplot()
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
        label = name if "ece" not in curve else f"{name} (ECE {curve['ece']:.3f})"
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
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(PER_PATIENT_METRICS), figsize=(3 + 1.8 * len(tables), 4.8), squeeze=False
    )
    jitter = np.random.default_rng(0)  # the same figure every time
    for ax, (key, metric_title) in zip(axes[0], PER_PATIENT_METRICS, strict=True):
        labels = []
        for position, (name, rows) in enumerate(tables, start=1):
            values = _as_floats([row[key] for row in rows])
            patches = np.array([row["patches"] for row in rows], dtype=np.float64)
            shown = ~np.isnan(values)
            labels.append(f"{tick_label(name)}\n({shown.sum()} of {len(values)} patients)")
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
        ax.set(ylim=(-0.02, 1.02), ylabel=f"per-patient {metric_title}")
        ax.set_title(metric_title[0].upper() + metric_title[1:])
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bland_altman(path: pathlib.Path, areas: Mapping[tuple[str, str, str], object]) -> None:
    """Bland-Altman plots of called against labelled IDC area per slide: one panel per
    (network, P(IDC)), one colour per threshold rule; `areas` maps (network, P(IDC), rule) to
    `slide_agreement.SlideAreas`. Lines: the bias and the limits of agreement (+- 1.96 SD)."""
    plt = _pyplot()
    panels = list(dict.fromkeys(key[:2] for key in areas))
    networks = list(dict.fromkeys(network for network, _ in panels))
    methods = list(dict.fromkeys(method for _, method in panels))
    rules = list(dict.fromkeys(key[2] for key in areas))
    fig, axes = plt.subplots(
        len(networks),
        len(methods),
        figsize=(5.2 * len(methods), 4.2 * len(networks)),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for (network, method), ax in zip(panels, axes.ravel()):
        for rule, colour, marker in zip(rules, colours, "os^D"):
            slide = areas[(network, method, rule)]
            d = slide.difference_mm2
            bias, sd = d.mean(), d.std(ddof=1)
            low, high = bias - 1.96 * sd, bias + 1.96 * sd
            ax.scatter(
                slide.mean_mm2,
                d,
                s=22,
                color=colour,
                marker=marker,
                alpha=0.8,
                label=f"{rule}: bias {bias:+.1f}, limits {low:+.1f} to {high:+.1f}",
            )
            ax.axhline(bias, color=colour, linewidth=1.2)
            for limit in (low, high):
                ax.axhline(limit, color=colour, linewidth=0.8, linestyle="--")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(f"{network}, {method}", fontsize=10)
        ax.legend(
            fontsize=7,
            loc="upper left",
            title="threshold; bias and limits in mm2",
            title_fontsize=7,
        )
        ax.grid(alpha=0.3)
    spread = np.concatenate([a.difference_mm2 for a in areas.values()])
    low, high = spread.min(), spread.max()
    axes[0, 0].set_ylim(low - 0.05 * (high - low), high + 0.4 * (high - low))  # room for legends
    for ax in axes[-1]:
        ax.set_xlabel("mean of called and labelled IDC area (mm2)")
    for ax in axes[:, 0]:
        ax.set_ylabel("called - labelled IDC area (mm2)")
    fig.suptitle(f"IDC area per held-out slide ({len(next(iter(areas.values())).patient)} slides)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
