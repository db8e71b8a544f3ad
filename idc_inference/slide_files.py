"""Whole-slide image files through OpenSlide: opening them, their scale, the best pyramid level,
and reading a region of a level resampled to a size (a slide is never held in memory).

    slide = open_slide("tumour.svs")                    # or open_slide(path, mpp=0.25)
    level = slide.best_level(KAGGLE_PATCH_MPP)          # the level the tiles are read from
    size = slide.tile_size_level0()                     # one Kaggle patch's field, level-0 px

Tiles at the training scale are read by `slide_tiles.TileReader`, thumbnails by
`slide_thumbnails.read_thumbnail`, both through `read_region_level`; `slide_tiff` checks that a
TIFF-based slide is whole and writes pyramidal TIFFs.

OpenSlide (the C library from the `openslide-bin` wheel, through `openslide-python`) reads
Aperio SVS, Hamamatsu NDPI/VMS, Leica SCN, MIRAX, Philips TIFF, Sakura SVSLIDE, Trestle,
Ventana BIF, Zeiss CZI, DICOM WSI and generic tiled TIFF.

The scale
---------
The network saw the Kaggle patches at one scale only, so a slide is read at that scale, whatever
its scanner's: `input_pipeline.KAGGLE_PATCH_MPP` micrometres per pixel (its sources are cited
there). Each tile covers the field of view of one 50x50 Kaggle patch (200 um x 200 um), read
from the best pyramid level (the one whose micrometres per pixel is the largest not exceeding the
target, so that nothing is upsampled when the slide has a fine enough level) and resampled to
50x50 by area averaging. The slide's own scale comes from OpenSlide's `openslide.mpp-x` /
`openslide.mpp-y` properties, or from the caller (a flag) for a slide that lacks them; without
either, `SlideError`. `slide_scale` judges it: an image program's default resolution (72 dpi)
is no scale, a slide whose finest level is coarser than the training scale is refused, and an
objective power that contradicts the scale is a warning (`Slide.warnings`).

Errors
------
Everything the user can fix is a `SlideError` whose message names the file and says what is
wrong: not a file, not a slide format OpenSlide reads, a TIFF that is truncated (its image data
runs past the end of the file: `slide_tiff.tiff_problem`) or corrupt, no scale (or a default
one), a scale coarser than the model's. A tile that
cannot be read later is not a `SlideError` but a `slide_tiles.TileReadError`, of that tile only.
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np

from idc_inference import slide_scale
from idc_inference.slide_scale import Scale  # noqa: F401 (re-exported: slide_files.Scale)
from idc_inference.slide_tiff import is_tiff, tiff_problem
from input_pipeline import KAGGLE_PATCH_MPP
from input_pipeline.patches import PATCH_SIZE, WHITE

# A pyramid level counts as "not finer than the target" up to this relative slack, so that a
# level of 4.0004 um/px (a rounding of the resolution tags) serves a 4.0 target without upsampling.
_LEVEL_SLACK = 1e-3


class SlideError(Exception):
    """A slide that cannot be used as given; the message names the file and says why."""


def _explain_unopenable(path: pathlib.Path, error: Exception) -> str:
    try:
        tiff = is_tiff(path)
    except OSError as read_error:
        return f"{path}: cannot be read ({read_error.strerror or read_error})"
    if tiff:
        problem = tiff_problem(path, strict=True)
        if problem is not None:
            return f"{path}: {problem}"
        return f"{path}: a TIFF file that OpenSlide cannot read as a slide ({error})"
    return (
        f"{path}: not a slide file OpenSlide can read (Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, "
        f"Leica .scn, Philips/generic tiled .tiff, DICOM, ...): {error}"
    )


def _open_handle(path: pathlib.Path):
    import openslide

    return openslide.OpenSlide(str(path))


class Slide:
    """One slide file: its levels, its scale, the level tiles come from, and reading.

    Opening checks everything that can be checked without reading the image: that the file is a
    slide OpenSlide reads, that a TIFF-based one is whole, and that the scale is known and
    believable (`slide_scale`); `warnings` holds what the map should report (an objective power
    that contradicts the scale).
    """

    def __init__(self, path: str | os.PathLike, *, mpp: float | None = None):
        import openslide

        self.path = pathlib.Path(path)
        if not self.path.exists():
            raise SlideError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise SlideError(f"{self.path}: not a file")
        try:
            handle = _open_handle(self.path)
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as error:
            raise SlideError(_explain_unopenable(self.path, error)) from None
        except OSError as error:
            raise SlideError(f"{self.path}: cannot be read ({error.strerror or error})") from None
        try:
            if is_tiff(self.path):
                problem = tiff_problem(self.path, strict=False)
                if problem is not None:
                    raise SlideError(f"{self.path}: {problem}")
            self.vendor = handle.properties.get("openslide.vendor", "unknown")
            self.dimensions: tuple[int, int] = tuple(handle.dimensions)
            self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
                tuple(d) for d in handle.level_dimensions
            )
            self.level_downsamples: tuple[float, ...] = tuple(handle.level_downsamples)
            properties = dict(handle.properties)
        finally:
            handle.close()
        self.scale, missing = slide_scale.read_scale(properties, mpp)
        if self.scale is None:
            raise SlideError(f"{self.path}: {missing}")
        problem = slide_scale.coarseness_problem(self.scale)
        if problem is not None:
            raise SlideError(f"{self.path}: {problem}")
        # What the map should report but not refuse (slide_maps adds them to its warnings).
        power = slide_scale.objective_power_warning(self.scale, properties)
        self.warnings: list[str] = [f"{self.path}: {power}"] if power else []
        self.objective_power = properties.get("openslide.objective-power")
        self._cache = None

    # ------------------------------------------------------------------------- geometry

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> float:
        """Micrometres per pixel of a pyramid level (level 0's times its downsample)."""
        return self.scale.mpp * self.level_downsamples[level]

    def best_level(self, target_mpp: float) -> int:
        """The level whose micrometres per pixel is the largest not exceeding `target_mpp`.

        Reading it and area-averaging down to the target loses nothing a finer level would give,
        and reads the fewest pixels. When every level is coarser than the target (a slide at
        most `slide_scale.COARSE_TOLERANCE` coarser than the training scale: coarser ones are
        refused when opened), level 0, the finest, is upsampled.
        """
        fine_enough = [
            level
            for level in range(self.level_count)
            if self.level_mpp(level) <= target_mpp * (1 + _LEVEL_SLACK)
        ]
        if not fine_enough:
            return 0
        return max(fine_enough, key=self.level_mpp)

    def tile_size_level0(self, target_mpp: float = KAGGLE_PATCH_MPP) -> tuple[float, float]:
        """(width, height) in level-0 pixels of the field of view of one Kaggle patch."""
        return (
            PATCH_SIZE * target_mpp / self.scale.mpp_x,
            PATCH_SIZE * target_mpp / self.scale.mpp_y,
        )

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "levels": [
                {"dimensions": list(d), "downsample": ds, "mpp": self.level_mpp(i)}
                for i, (d, ds) in enumerate(zip(self.level_dimensions, self.level_downsamples))
            ],
            "mpp_x": self.scale.mpp_x,
            "mpp_y": self.scale.mpp_y,
            "mpp_source": self.scale.source,
            "objective_power": self.objective_power,
        }

    # ------------------------------------------------------------------------- reading

    def shared_cache(self):
        """One OpenSlide tile cache for every handle of this slide (64 MiB)."""
        import openslide

        if self._cache is None:
            self._cache = openslide.OpenSlideCache(64 << 20)
        return self._cache

    def open_handle(self):
        """A fresh OpenSlide handle on the file, with the shared cache."""
        import openslide

        try:
            handle = _open_handle(self.path)
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as error:
            raise SlideError(_explain_unopenable(self.path, error)) from None
        handle.set_cache(self.shared_cache())
        return handle


def open_slide(path: str | os.PathLike, mpp: float | None = None) -> Slide:
    """`Slide(path, mpp=mpp)`: raises `SlideError` naming the file when it cannot be used."""
    return Slide(path, mpp=mpp)


# ----------------------------------------------------------------------------- reading regions


def rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGB uint8 of OpenSlide's RGBA: transparent pixels (outside the slide, or outside its
    scanned regions) become white, the slide background, as border patches are padded in
    training. Opaque pixels are returned exactly."""
    rgb = np.array(rgba[..., :3])
    alpha = rgba[..., 3]
    partial = alpha < 255
    if partial.any():
        a = alpha[partial].astype(np.float32)[:, None] / 255.0
        blended = rgb[partial].astype(np.float32) * a + WHITE * (1.0 - a)
        rgb[partial] = np.clip(np.round(blended), 0, WHITE).astype(np.uint8)
    return rgb


def read_region_level(
    handle,
    level: int,
    downsample: float,
    box: tuple[float, float, float, float],
    out_size: tuple[int, int],
) -> np.ndarray:
    """The region `box` = (left, top, width, height), in pixels of `level`, resampled to
    `out_size` = (width, height): RGB uint8 [height, width, 3].

    OpenSlide takes the location in level-0 pixels and truncates it to the level's grid; the
    region is read from that pixel on, then `box` is cut out of it with sub-pixel precision by
    PIL: area averaging (BOX) when shrinking, bicubic when enlarging, a plain copy when the box
    is whole pixels of the output size.
    """
    from PIL import Image

    left, top, width, height = box
    location = (int(math.floor(left * downsample)), int(math.floor(top * downsample)))
    origin_x = math.floor(location[0] / downsample)
    origin_y = math.floor(location[1] / downsample)
    dx, dy = left - origin_x, top - origin_y
    read_w = int(math.ceil(dx + width)) + (0 if dx == int(dx) and width == int(width) else 1)
    read_h = int(math.ceil(dy + height)) + (0 if dy == int(dy) and height == int(height) else 1)
    region = handle.read_region(location, level, (max(read_w, 1), max(read_h, 1)))
    rgb = rgba_on_white(np.asarray(region))
    exact = dx == int(dx) and dy == int(dy) and (width, height) == tuple(float(s) for s in out_size)
    if exact:
        return rgb[int(dy) : int(dy) + out_size[1], int(dx) : int(dx) + out_size[0]].copy()
    shrinking = width >= out_size[0] and height >= out_size[1]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    resized = Image.fromarray(rgb).resize(out_size, method, box=(dx, dy, dx + width, dy + height))
    return np.asarray(resized, np.uint8)
