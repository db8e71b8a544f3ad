"""Tiles of a slide at the training scale: the grid of them over the slide, where they are read
from, and reading them from any number of threads.

    grid = tile_grid(slide, thumbnail, tissue_mask)   # every tile, with its share of tissue
    geometry = TileGeometry.for_slide(slide)          # the pyramid level, one tile's size there
    reader = TileReader(slide, geometry)
    tile = reader.read(x0, y0)                        # uint8 [50, 50, 3], at 4 um/px
    reader.close()

Each tile covers the field of view of one 50x50 Kaggle patch (`slide_files.KAGGLE_PATCH_MPP`),
read from the slide's best pyramid level for that scale (`Slide.best_level`) and resampled to
50x50 (`slide_files.read_region_level`: area averaging when shrinking). The grid starts at
level-0 pixel (0, 0), row by row; the tissue share of each tile is measured on the thumbnail's
tissue mask (`tissue.tile_tissue_fractions`).

OpenSlide puts a handle into a permanent error state after any failed read, so tile reading
goes through `TileReader`, which reopens the slide after a failure: one unreadable tile costs
that tile only (`TileReadError`, which the streaming pipeline counts, skips and lists).
"""

from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np

from idc_inference import tissue
from idc_inference.slide_files import KAGGLE_PATCH_MPP, Slide, read_region_level
from idc_inference.slide_thumbnails import Thumbnail
from input_pipeline.patches import PATCH_SIZE


@dataclasses.dataclass(frozen=True)
class TileGeometry:
    """Where tiles come from: the pyramid level, and one tile's size there and at level 0."""

    level: int
    level_mpp: float
    downsample: float
    size_level0: tuple[float, float]  # (width, height) of one tile in level-0 pixels
    size_level: tuple[float, float]  # the same in pixels of `level`
    target_mpp: float

    @property
    def resampling_factor(self) -> float:
        """Level pixels per output pixel (1: read as is; 2: area-averaged 2:1; < 1: enlarged)."""
        return self.size_level[0] / PATCH_SIZE

    @classmethod
    def for_slide(cls, slide: Slide, target_mpp: float = KAGGLE_PATCH_MPP) -> TileGeometry:
        level = slide.best_level(target_mpp)
        size0 = slide.tile_size_level0(target_mpp)
        w0, h0 = slide.dimensions
        wl, hl = slide.level_dimensions[level]
        return cls(
            level=level,
            level_mpp=slide.level_mpp(level),
            downsample=slide.level_downsamples[level],
            size_level0=size0,
            size_level=(size0[0] * wl / w0, size0[1] * hl / h0),
            target_mpp=target_mpp,
        )

    def describe(self) -> dict:
        return {
            "level": self.level,
            "level_mpp": self.level_mpp,
            "target_mpp": self.target_mpp,
            "tile_size_level0": list(self.size_level0),
            "tile_size_at_level": list(self.size_level),
            "resampling_factor": self.resampling_factor,
        }


class TileReader:
    """Reads tiles of one slide from any number of threads, each with its own OpenSlide handle.

    OpenSlide is thread-safe, but a failed read leaves a handle in an error state for good, so
    each thread keeps its own (sharing one tile cache) and reopens it after a failure.
    """

    def __init__(self, slide: Slide, geometry: TileGeometry):
        self.slide = slide
        self.geometry = geometry
        self._local = threading.local()
        self._handles = []
        self._lock = threading.Lock()

    def _handle(self):
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self.slide.open_handle()
            self._local.handle = handle
            with self._lock:
                self._handles.append(handle)
        return handle

    def _drop_handle(self) -> None:
        handle = getattr(self._local, "handle", None)
        self._local.handle = None
        if handle is not None:
            with self._lock:
                if handle in self._handles:
                    self._handles.remove(handle)
            handle.close()

    def read(self, x0: float, y0: float, window: int = 1) -> np.ndarray:
        """The tile whose top-left corner is level-0 pixel (x0, y0): RGB uint8 [50, 50, 3]; with
        `window` > 1, the region of `window` x `window` tiles centred on it, read at once:
        uint8 [50 window, 50 window, 3], white beyond the slide's edge.

        Raises `TileReadError` when OpenSlide cannot decode it (the handle is then replaced).
        """
        import openslide

        g = self.geometry
        w0, h0 = self.slide.dimensions
        wl, hl = self.slide.level_dimensions[g.level]
        half = window // 2
        left, top = x0 * wl / w0 - half * g.size_level[0], y0 * hl / h0 - half * g.size_level[1]
        box = (left, top, window * g.size_level[0], window * g.size_level[1])
        try:
            return read_region_level(
                self._handle(), g.level, g.downsample, box, (window * PATCH_SIZE,) * 2
            )
        except openslide.OpenSlideError as error:
            self._drop_handle()
            raise TileReadError(str(error)) from None

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.close()


class TileReadError(Exception):
    """One tile that OpenSlide could not read or decode."""


# ----------------------------------------------------------------------------- the grid


@dataclasses.dataclass
class TileGrid:
    """The tiles of a slide: grid positions, level-0 corners and the tissue share of each."""

    cols: np.ndarray  # int64 [N]
    rows: np.ndarray
    size: tuple[float, float]  # level-0 width, height of one tile
    tissue_fraction: np.ndarray  # float32 [N]
    shape: tuple[int, int]  # (rows, cols) of the whole grid

    @property
    def left(self) -> np.ndarray:
        return self.cols * self.size[0]

    @property
    def top(self) -> np.ndarray:
        return self.rows * self.size[1]

    def subset(self, keep: np.ndarray) -> TileGrid:
        return TileGrid(
            self.cols[keep], self.rows[keep], self.size, self.tissue_fraction[keep], self.shape
        )


def tile_grid(slide: Slide, thumbnail: Thumbnail, mask: np.ndarray) -> TileGrid:
    """Every tile of the slide (row by row) with the share of it that `mask` calls tissue."""
    size = slide.tile_size_level0()
    w0, h0 = slide.dimensions
    num_cols, num_rows = int(math.ceil(w0 / size[0])), int(math.ceil(h0 / size[1]))
    rows, cols = np.divmod(np.arange(num_rows * num_cols, dtype=np.int64), num_cols)
    fraction = tissue.tile_tissue_fractions(
        mask,
        cols * size[0] / thumbnail.downsample_x,
        rows * size[1] / thumbnail.downsample_y,
        size[0] / thumbnail.downsample_x,
        size[1] / thumbnail.downsample_y,
    )
    return TileGrid(cols, rows, size, fraction, (num_rows, num_cols))
