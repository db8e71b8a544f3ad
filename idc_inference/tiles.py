"""The one streaming pipeline: tiles or PNG patches in, P(IDC) out, with bounded memory.

    source = SlideTiles(reader, left, top)          # or PngFiles(files)
    result = stream(source, predictor, num_threads=4, progress=True)
    result.p_idc, result.indices, result.errors, result.images_per_second

Two sources, one pipeline: `PngFiles` decodes the Kaggle patch files (predict.py, heatmap.py),
`SlideTiles` reads tiles of a whole-slide image through OpenSlide (map_slide.py). Both give
`LoadedPatch`es (uint8 [50, 50, 3], white-padded; the size of the real pixels; or an error), and
`stream` does the rest the same way for both. For a neighbourhood network (`window` > 1, its
`data.window`) each item is the window of `window` x `window` patches centred on it, 50 `window`
pixels a side, read as training built it (`input_pipeline.windows`): from the neighbouring files
of the same patient on the Kaggle grid, or one region of the slide around the tile; what lies
beyond the tissue, the files or the slide's edge is white.

- worker threads read items ahead of the consumer, in order, at most `lookahead` of them at a
  time (decoding a PNG, reading an OpenSlide region and resampling it all release the GIL);
- full batches go to `Predictor.dispatch`, which returns at once (JAX runs the network
  asynchronously), so reading the next batch overlaps the network on the current one; at most
  `max_pending` batches are in flight, the oldest fetched when there are more, so memory stays
  flat however many tiles a slide has;
- an item that cannot be read is counted, skipped and listed with its reason, never fatal;
- a tqdm progress bar shows the items per second while it runs (`progress=True`), and the
  result carries the throughput (reading + network, compilation excluded).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from input_pipeline import windows
from input_pipeline.patches import PATCH_SIZE, WHITE, LoadedPatch, load_patch, parse_patch_name


class TileSource(Protocol):
    """Items that `stream` can read: len(), read(i) -> LoadedPatch, and a name per item."""

    unit: str  # what an item is called in the progress bar ("tile", "patch")

    def __len__(self) -> int: ...

    def read(self, index: int) -> LoadedPatch: ...

    def name(self, index: int) -> str: ...


class PngFiles:
    """PNG patch files, decoded as training decoded them (`input_pipeline.patches.load_patch`).

    With `window` > 1 each item is its file's window on the Kaggle grid, its cells the files of
    the same patient that the names place there (`windows.window_rows`); a file whose name gives
    no grid position (`no_position`) is shown with white around it, and a neighbour that cannot
    be read is a white cell."""

    unit = "patch"

    def __init__(self, files: Sequence[pathlib.Path], window: int = 1):
        self.files = list(files)
        self.window = window
        self.no_position: list[int] = []
        if window > 1:
            self._rows, self.no_position = png_window_rows(self.files, window)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> LoadedPatch:
        centre = load_patch(self.files[index])
        if self.window == 1 or centre.image is None:
            return centre
        cells = []
        for row in self._rows[index]:
            patch = centre if row == index else load_patch(self.files[row]) if row >= 0 else None
            cells.append(patch.image if patch is not None and patch.image is not None else None)
        blank = np.full_like(centre.image, WHITE)
        stacked = np.stack([blank if cell is None else cell for cell in cells])
        image = windows.assemble_windows(stacked, np.arange(len(cells))[None])[0]
        return LoadedPatch(image, centre.height, centre.width)

    def name(self, index: int) -> str:
        return str(self.files[index])


def png_window_rows(files: Sequence[pathlib.Path], window: int) -> tuple[np.ndarray, list[int]]:
    """(int64 [N, window**2] rows of each file's window among `files`, the indices of the files
    whose names give no grid position: only their own cell is filled)."""
    names = [parse_patch_name(pathlib.Path(f).name) for f in files]
    placed = [i for i, n in enumerate(names) if n.x is not None and n.patient is not None]
    rows = np.full((len(files), window * window), -1, np.int64)
    rows[:, window * window // 2] = np.arange(len(files))
    if placed:
        patient = np.array([names[i].patient for i in placed])
        x = np.array([names[i].x for i in placed])
        y = np.array([names[i].y for i in placed])
        found = windows.window_rows(patient, x, y, window)
        rows[placed] = np.where(found >= 0, np.asarray(placed)[np.maximum(found, 0)], -1)
    return rows, sorted(set(range(len(files))) - set(placed))


class SlideTiles:
    """Tiles of a slide at given level-0 top-left corners, through a `slide_tiles.TileReader`.

    Each tile is the field of view of one Kaggle patch, read from the reader's pyramid level
    and resampled to 50x50; the part of a tile beyond the slide's edge is white (`height` and
    `width` give the part inside, in tile pixels, as a border patch's true size). With
    `window` > 1, each item is the region of `window` x `window` tiles centred on the tile, read
    at once and resampled to 50 `window` pixels a side.
    """

    unit = "tile"

    def __init__(self, reader, left: np.ndarray, top: np.ndarray, window: int = 1):
        self.window = window
        self.reader = reader
        self.left = np.asarray(left, np.float64)
        self.top = np.asarray(top, np.float64)
        w0, h0 = reader.slide.dimensions
        size_x, size_y = reader.geometry.size_level0
        inside_w = np.clip((w0 - self.left) / size_x, 0, 1) * PATCH_SIZE
        inside_h = np.clip((h0 - self.top) / size_y, 0, 1) * PATCH_SIZE
        self.widths = np.ceil(inside_w - 1e-6).astype(np.int32)
        self.heights = np.ceil(inside_h - 1e-6).astype(np.int32)

    def __len__(self) -> int:
        return len(self.left)

    def read(self, index: int) -> LoadedPatch:
        from idc_inference.slide_tiles import TileReadError

        try:
            image = self.reader.read(self.left[index], self.top[index], window=self.window)
        except TileReadError as error:
            return LoadedPatch(None, error=f"unreadable tile: {error}")
        return LoadedPatch(image, int(self.heights[index]), int(self.widths[index]))

    def name(self, index: int) -> str:
        return f"tile at level-0 x={self.left[index]:g}, y={self.top[index]:g}"


@dataclasses.dataclass
class StreamResult:
    """What `stream` read and predicted, in source order."""

    indices: np.ndarray  # int64 [N]: the source index of each readable item
    p_idc: np.ndarray  # float32 [N] (NaN without a predictor)
    heights: np.ndarray  # int32 [N]: true size of the real pixels
    widths: np.ndarray
    errors: list[tuple[int, str]]  # (source index, reason) of every unreadable item
    seconds: float  # reading + prediction, compilation excluded
    images: np.ndarray | None = None  # uint8 [N, 50, 50, 3] when asked for (windows' centres)

    @property
    def images_per_second(self) -> float:
        return len(self.indices) / self.seconds if self.seconds > 0 else math.nan


def _to_host(array) -> np.ndarray:
    from input_pipeline.sharding import to_host

    return to_host(array)


def stream(
    source: TileSource,
    predictor=None,
    *,
    num_threads: int = 4,
    keep_images: bool = False,
    progress: bool = False,
    description: str | None = None,
    lookahead: int | None = None,
    max_pending: int = 3,
) -> StreamResult:
    """Reads every item of `source` in worker threads and predicts P(IDC) batch by batch.

    `predictor` is an `idc_inference.predictor.Predictor` (or anything with `batch_size` and
    `dispatch`); None reads only (p_idc is NaN), for maps of the images alone. `lookahead` items
    are read ahead (default: two batches); `max_pending` batches may run at once on the device.
    """
    from tqdm import tqdm

    batch_size = predictor.batch_size if predictor is not None else 256
    lookahead = lookahead or max(2 * batch_size, 4 * num_threads)
    start = time.perf_counter()
    indices: list[int] = []
    heights: list[int] = []
    widths: list[int] = []
    errors: list[tuple[int, str]] = []
    images: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    pending: collections.deque = collections.deque()  # (device result, count)
    done: list[np.ndarray] = []

    def collect_oldest() -> None:
        result, count = pending.popleft()
        done.append(np.asarray(_to_host(result))[:count])

    def flush() -> None:
        if predictor is not None and batch:
            pending.append((predictor.dispatch(np.stack(batch)), len(batch)))
            while len(pending) > max_pending:
                collect_oldest()
        batch.clear()

    bar = tqdm(
        total=len(source),
        unit=source.unit,
        desc=description,
        disable=not progress,
        smoothing=0.1,
        mininterval=0.5,
    )
    with bar, concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        futures: collections.deque = collections.deque()
        next_index = 0
        total = len(source)
        while next_index < total or futures:
            while next_index < total and len(futures) < lookahead:
                futures.append((next_index, pool.submit(source.read, next_index)))
                next_index += 1
            index, future = futures.popleft()
            try:
                patch = future.result()
            except Exception as error:  # noqa: BLE001 (a reader's bug must not lose the slide)
                patch = LoadedPatch(None, error=f"{type(error).__name__}: {error}")
            bar.update(1)
            if patch.error is not None or patch.image is None:
                errors.append((index, patch.error or "unreadable"))
                continue
            indices.append(index)
            heights.append(patch.height)
            widths.append(patch.width)
            batch.append(patch.image)
            if keep_images:
                images.append(windows.centre_of(patch.image[None])[0])
            if len(batch) == batch_size:
                flush()
        flush()
        while pending:
            collect_oldest()
    if predictor is not None:
        p_idc = np.concatenate(done) if done else np.zeros(0, np.float32)
    else:
        p_idc = np.full(len(indices), np.nan, np.float32)
    seconds = time.perf_counter() - start
    return StreamResult(
        indices=np.asarray(indices, np.int64),
        p_idc=p_idc.astype(np.float32),
        heights=np.asarray(heights, np.int32),
        widths=np.asarray(widths, np.int32),
        errors=errors,
        seconds=seconds,
        images=np.stack(images) if keep_images and images else None,
    )
