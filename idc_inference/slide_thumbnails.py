"""The whole slide at low resolution, read in bands (a slide is never held in memory).

    thumbnail = read_thumbnail(slide, max_side=2048)   # RGB uint8, and its scale
    thumbnail.downsample_x, thumbnail.mpp

The thumbnail is what tissue is detected on (`tissue.py`) and what the map is painted over
(`overlay.py`). It is read from the pyramid level that fits its resolution, band by band, so a
slide without a pyramid (level 0 only) costs reading time, not memory.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from idc_inference.slide_files import Slide, SlideError, read_region_level


@dataclasses.dataclass
class Thumbnail:
    """The slide at low resolution: RGB uint8 [h, w, 3] and level-0 pixels per thumbnail pixel."""

    image: np.ndarray
    downsample_x: float
    downsample_y: float
    level: int  # the pyramid level it was read from
    mpp: float  # micrometres per thumbnail pixel (the mean of both axes)


def thumbnail_size(slide: Slide, max_side: int, min_mpp: float) -> tuple[int, int]:
    """(width, height) of a thumbnail no longer than `max_side` and no finer than `min_mpp`."""
    w0, h0 = slide.dimensions
    factor = max(max(w0, h0) / max_side, min_mpp / slide.scale.mpp, 1.0)
    return max(1, int(round(w0 / factor))), max(1, int(round(h0 / factor)))


def read_thumbnail(
    slide: Slide, *, max_side: int = 2048, min_mpp: float = 8.0, band_pixels: int = 1 << 22
) -> Thumbnail:
    """The whole slide at low resolution, read in bands from the best level for that resolution.

    Never more than about `band_pixels` level pixels (16 MiB of RGBA) are in memory at once,
    however large the slide and whatever levels it has (a slide without a pyramid is read from
    level 0, band by band). `min_mpp` keeps small slides from giving needlessly large thumbnails.
    """
    out_w, out_h = thumbnail_size(slide, max_side, min_mpp)
    w0, h0 = slide.dimensions
    ds_x, ds_y = w0 / out_w, h0 / out_h
    level = slide.best_level(slide.scale.mpp * min(ds_x, ds_y))
    wl, hl = slide.level_dimensions[level]
    scale_y = hl / out_h  # level rows per thumbnail row
    rows_per_band = max(1, int(band_pixels / max(1.0, wl * scale_y)))
    image = np.empty((out_h, out_w, 3), np.uint8)
    handle = slide.open_handle()
    try:
        for top in range(0, out_h, rows_per_band):
            rows = min(rows_per_band, out_h - top)
            box = (0.0, top * scale_y, float(wl), rows * scale_y)
            image[top : top + rows] = read_region_level(
                handle, level, slide.level_downsamples[level], box, (out_w, rows)
            )
    except Exception as error:
        import openslide

        if isinstance(error, openslide.OpenSlideError):
            raise SlideError(
                f"{slide.path}: level {level} cannot be read for the thumbnail ({error})"
            ) from None
        raise
    finally:
        handle.close()
    mpp = slide.scale.mpp * (ds_x + ds_y) / 2.0
    return Thumbnail(image, ds_x, ds_y, level, mpp)
