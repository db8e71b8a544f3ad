"""Slide maps: a patient's patches tiled back into their whole-slide image, and tinted.

The Kaggle file name `<patient>_idx5_x<X>_y<Y>_class<C>.png` gives the 1-based top-left pixel of
the patch on the whole-slide image, so the patches of one patient tile the slide again:
`build_mosaic` puts each patch's pixels at row Y-1, column X-1 of a white canvas, and
`overlay_patches` tints each patch by a colour (P(IDC) or the TP/FP/FN/TN outcome).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np

from input_pipeline.patches import WHITE, PatchName


@dataclasses.dataclass(frozen=True)
class SlidePlacement:
    """Where each patch of one slide goes: top-left pixel (0-based) and true size."""

    top: np.ndarray  # int [N]: Y - 1
    left: np.ndarray  # int [N]: X - 1
    heights: np.ndarray
    widths: np.ndarray

    @classmethod
    def from_names(
        cls, names: Sequence[PatchName], heights: np.ndarray, widths: np.ndarray
    ) -> SlidePlacement:
        """Placement of patches whose names give their slide position (x and y not None)."""
        return cls(
            top=np.array([n.y - 1 for n in names], np.int64),
            left=np.array([n.x - 1 for n in names], np.int64),
            heights=np.asarray(heights, np.int64),
            widths=np.asarray(widths, np.int64),
        )

    @property
    def canvas_shape(self) -> tuple[int, int]:
        """(height, width) that holds every patch: the furthest patch corner."""
        if not len(self.top):
            return 0, 0
        return int(np.max(self.top + self.heights)), int(np.max(self.left + self.widths))

    def regions(self) -> Iterator[tuple[int, slice, slice]]:
        """(patch index, rows, columns) of each patch's true pixels on the canvas."""
        for i, (top, left, h, w) in enumerate(zip(self.top, self.left, self.heights, self.widths)):
            yield i, slice(int(top), int(top + h)), slice(int(left), int(left + w))


def build_mosaic(images: np.ndarray, placement: SlidePlacement) -> np.ndarray:
    """The slide rebuilt from its patches: uint8 [H, W, 3], white where no patch lies.

    Only a patch's true pixels are copied (not the white padding of a border patch), so the
    canvas ends exactly at the slide's furthest tissue patch.
    """
    mosaic = np.full((*placement.canvas_shape, 3), WHITE, np.uint8)
    for i, rows, cols in placement.regions():
        mosaic[rows, cols] = images[i, : rows.stop - rows.start, : cols.stop - cols.start]
    return mosaic


def overlay_patches(
    mosaic: np.ndarray,
    placement: SlidePlacement,
    colours: np.ndarray,
    *,
    opacity: float = 0.5,
    skip: np.ndarray | None = None,
) -> np.ndarray:
    """The mosaic with each patch tinted: (1 - opacity) * tissue + opacity * colour.

    `colours` is float RGB in [0, 1], one per patch; patches where `skip` is true stay as they are.
    The tissue stays visible under the tint, so a pathologist can check what the model flagged.
    """
    out = mosaic.astype(np.float32)
    tint = np.asarray(colours, np.float32) * WHITE
    for i, rows, cols in placement.regions():
        if skip is not None and skip[i]:
            continue
        out[rows, cols] = (1.0 - opacity) * out[rows, cols] + opacity * tint[i]
    return np.clip(np.round(out), 0, WHITE).astype(np.uint8)


def probability_colours(p_idc: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """RGB in [0, 1] of each P(IDC) under a perceptually uniform matplotlib colormap."""
    import matplotlib

    return matplotlib.colormaps[colormap](np.clip(p_idc, 0.0, 1.0))[:, :3]


# Outcome of each patch, with IDC the positive class.
OUTCOME_COLOURS = {
    "TP": (0.85, 0.10, 0.10),  # red: IDC found
    "FN": (0.10, 0.35, 0.95),  # blue: IDC missed
    "FP": (1.00, 0.75, 0.00),  # amber: false alarm
    "TN": (0.20, 0.70, 0.30),  # green: correctly clear
}


def outcomes(labels: np.ndarray, decisions: np.ndarray) -> np.ndarray:
    """ "TP"/"FP"/"FN"/"TN" of each patch, "" where the label is unknown (-1)."""
    labels, decisions = np.asarray(labels), np.asarray(decisions).astype(bool)
    result = np.full(len(labels), "", dtype="<U2")
    known = labels >= 0
    positive = labels == 1
    result[known & positive & decisions] = "TP"
    result[known & positive & ~decisions] = "FN"
    result[known & ~positive & decisions] = "FP"
    result[known & ~positive & ~decisions] = "TN"
    return result


def outcome_colours(outcome: np.ndarray) -> np.ndarray:
    colours = np.ones((len(outcome), 3), np.float32)
    for name, colour in OUTCOME_COLOURS.items():
        colours[outcome == name] = colour
    return colours


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def save_slide_figure(
    path: str | os.PathLike,
    panels: Sequence[tuple[str, np.ndarray]],
    *,
    title: str,
    colormap: str | None = None,
    outcome_counts: dict[str, int] | None = None,
) -> None:
    """A side-by-side figure of slide images with a P(IDC) colour bar and an outcome legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.5), squeeze=False)
    for ax, (name, image) in zip(axes[0], panels):
        ax.imshow(image)
        ax.set_title(name)
        ax.axis("off")
    if colormap is not None:
        mappable = plt.cm.ScalarMappable(cmap=colormap, norm=plt.Normalize(0.0, 1.0))
        fig.colorbar(mappable, ax=axes[0].tolist(), fraction=0.02, pad=0.01, label="P(IDC)")
    if outcome_counts is not None:
        handles = [
            Patch(color=colour, label=f"{name} ({outcome_counts.get(name, 0)})")
            for name, colour in OUTCOME_COLOURS.items()
        ]
        fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
