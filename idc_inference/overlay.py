"""The overlay a pathologist looks at: P(IDC) blended over the slide's thumbnail.

    render_overlay("slide.overlay.png", thumbnail, cols, rows, tile_size, p_idc,
                   threshold=0.6, regions=found, title="slide.svs")

Each tile is painted with its P(IDC) on the `turbo` colormap with an opacity that rises with the
probability: faint at low P(IDC) (`FAINT` of `opacity` at 0, so the tissue shows through and a
predicted tile with a low P(IDC) is still told from tissue that was not predicted), full
`opacity` from `OPAQUE_FROM` up, so the eye goes to what the model flags and the tissue under it
stays visible. Low P(IDC) is shown, not hidden: on the shipped model's test patients 12% of the
IDC patches score below 0.2 (`results/real_245/mobilenet_v1_patient/predictions_test.npz`), and an
overlay that made them transparent would show those tiles as if they had not been looked at.
The IDC regions at the threshold are outlined. The figure has a colour bar (drawn with the same
opacity ramp over white, so its colours are the map's) and a scale bar in millimetres.
"""

from __future__ import annotations

import os

import numpy as np

COLORMAP = "turbo"
FAINT = 0.2  # the opacity at P(IDC) 0, as a share of `opacity`
OPAQUE_FROM = 0.5
NICE_LENGTHS_MM = (0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 25, 50)


def alpha_ramp(p: np.ndarray, opacity: float) -> np.ndarray:
    """Opacity of the colour over the tissue: FAINT x `opacity` at P(IDC) 0, rising linearly to
    `opacity` at OPAQUE_FROM and staying there; 0 where there is no P(IDC) (NaN)."""
    p = np.asarray(p, np.float32)
    ramp = FAINT + (1.0 - FAINT) * np.clip(p / OPAQUE_FROM, 0.0, 1.0)
    return np.where(np.isnan(p), 0.0, ramp * opacity).astype(np.float32)


def tile_index_raster(
    shape: tuple[int, int],
    downsample: tuple[float, float],
    cols: np.ndarray,
    rows: np.ndarray,
    size: tuple[float, float],
) -> np.ndarray:
    """For every thumbnail pixel, the index of the tile its centre falls in (-1: none), int32."""
    h, w = shape
    cols, rows = np.asarray(cols, np.int64), np.asarray(rows, np.int64)
    raster = np.full((h, w), -1, np.int32)
    if not len(cols):
        return raster
    grid = np.full((rows.max() + 1, cols.max() + 1), -1, np.int32)
    grid[rows, cols] = np.arange(len(cols), dtype=np.int32)
    col_of_x = np.floor((np.arange(w) + 0.5) * downsample[0] / size[0]).astype(np.int64)
    row_of_y = np.floor((np.arange(h) + 0.5) * downsample[1] / size[1]).astype(np.int64)
    x_ok = col_of_x < grid.shape[1]
    y_ok = row_of_y < grid.shape[0]
    raster[np.ix_(y_ok, x_ok)] = grid[np.ix_(row_of_y[y_ok], col_of_x[x_ok])]
    return raster


def blend(thumbnail: np.ndarray, index: np.ndarray, p_idc: np.ndarray, opacity: float):
    """The thumbnail with each tile's P(IDC) colour blended over it: RGB uint8 [h, w, 3].

    `index` is `tile_index_raster`'s; colours and opacities are computed per tile, then
    painted row band by row band, so memory stays a few bytes per pixel.
    """
    import matplotlib

    p_idc = np.asarray(p_idc, np.float32)
    # Per tile, with one extra entry (the last, index -1) for pixels without a tile.
    colours = np.zeros((len(p_idc) + 1, 3), np.float32)
    colours[:-1] = matplotlib.colormaps[COLORMAP](p_idc)[:, :3]
    alpha = np.zeros(len(p_idc) + 1, np.float32)
    alpha[:-1] = alpha_ramp(p_idc, opacity)
    out = np.empty_like(thumbnail)
    for top in range(0, thumbnail.shape[0], 256):
        band = index[top : top + 256]
        a = alpha[band][..., None]
        mixed = thumbnail[top : top + 256] * (1.0 - a) + colours[band] * (255.0 * a)
        out[top : top + 256] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return out


def scale_bar_length_mm(width_px: int, mm_per_px: float) -> float:
    """A round length near a fifth of the image's width."""
    target = width_px * mm_per_px / 5.0
    fitting = [length for length in NICE_LENGTHS_MM if length <= target]
    return fitting[-1] if fitting else NICE_LENGTHS_MM[0]


def render_overlay(
    path: str | os.PathLike,
    thumbnail,
    cols: np.ndarray,
    rows: np.ndarray,
    size: tuple[float, float],
    p_idc: np.ndarray,
    *,
    threshold: float,
    mpp: float,
    regions=(),
    title: str = "",
    opacity: float = 0.6,
) -> None:
    """Writes the overlay figure (PNG) of one slide's map.

    `thumbnail` is a `slide_thumbnails.Thumbnail`; tiles are given by grid position and level-0
    size; `mpp` is micrometres per level-0 pixel (for the scale bar).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.colors import ListedColormap, Normalize
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    image = thumbnail.image
    h, w = image.shape[:2]
    downsample = (thumbnail.downsample_x, thumbnail.downsample_y)
    index = tile_index_raster((h, w), downsample, cols, rows, size)
    blended = blend(image, index, p_idc, opacity)
    del index

    dpi = 100
    fig_w = w / dpi + 1.6
    fig_h = h / dpi + 0.9
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes((0.2 / fig_w, 0.3 / fig_h, w / dpi / fig_w, h / dpi / fig_h))
    ax.imshow(blended, interpolation="nearest")
    ax.set_axis_off()
    outlines = [
        np.asarray(ring.coords) / np.asarray(downsample) - 0.5
        for region in regions
        for ring in (region.polygon.exterior, *region.polygon.interiors)
    ]
    if outlines:
        ax.add_collection(LineCollection(outlines, colors="black", linewidths=0.8))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)

    mm_per_px = mpp * downsample[0] / 1000.0
    length_mm = scale_bar_length_mm(w, mm_per_px)
    label = f"{length_mm:g} mm" if length_mm >= 1 else f"{length_mm * 1000:g} um"
    ax.add_artist(
        AnchoredSizeBar(
            ax.transData,
            length_mm / mm_per_px,
            label,
            "lower left",
            pad=0.4,
            color="black",
            frameon=True,
            size_vertical=max(1.0, h / 150.0),
        )
    )

    # The colour bar shows the map's colours as they look: the ramp over white.
    levels = np.linspace(0.0, 1.0, 256)
    rgb = matplotlib.colormaps[COLORMAP](levels)[:, :3]
    alpha = alpha_ramp(levels, opacity)[:, None]
    ramp = ListedColormap(rgb * alpha + (1.0 - alpha))
    cax = fig.add_axes(((w / dpi + 0.4) / fig_w, 0.3 / fig_h, 0.18 / fig_w, h / dpi / fig_h))
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=Normalize(0.0, 1.0), cmap=ramp), cax=cax)
    bar.set_label(f"P(IDC); outlined: >= {threshold:.3g}")
    bar.ax.axhline(threshold, color="black", linewidth=1.0)
    if title:
        fig.text(0.2 / fig_w, 1.0 - 0.35 / fig_h, title, fontsize=10, va="center")
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
