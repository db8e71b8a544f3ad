"""TIFF files at the level of their container (tifffile, not OpenSlide): whether a TIFF-based
slide is whole, and writing tiled pyramidal TIFFs that OpenSlide reads as slides.

    if (problem := tiff_problem(path, strict=False)) is not None: ...   # truncated, corrupt
    write_pyramidal_tiff("slide.tiff", width, height, level0_region, mpp=4.0)

Checking: OpenSlide opens a TIFF from its first directories and reads image data only when a
tile is asked for, so a file cut short by an interrupted copy opens fine and fails later, tile
by tile. `tiff_problem` reads the directories alone and checks that every directory and every
strip or tile lies inside the file, so that `slide_files.Slide` can refuse such a file when it
is opened, naming the byte where it ends.

Writing: `write_pyramidal_tiff` writes the layout a scanner writes (level 0, then levels of
downsample 2, 4, ..., tiled, lossless), one tile at a time, for the demo slide
(data/make_demo_slide.py) and the test slides (tests/test_slides.py).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from input_pipeline.patches import WHITE

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(path: pathlib.Path) -> bool:
    """Whether the file starts as a TIFF (classic or BigTIFF, either byte order) does."""
    with path.open("rb") as f:
        return f.read(4) in TIFF_MAGICS


def tiff_problem(path: pathlib.Path, *, strict: bool) -> str | None:
    """Why a TIFF-based file is damaged, or None if it looks whole.

    Reads only the TIFF directories (tifffile), then checks that the chain of directories and
    every strip or tile of every image lie inside the file: a file cut short by an interrupted
    copy fails here even when its first directories, written first, survived. `strict`: also
    report a file tifffile cannot parse at all (only asked when OpenSlide could not open it
    either: tifffile is not the judge of a vendor's TIFF dialect that OpenSlide reads).
    """
    import logging

    import tifffile

    size = path.stat().st_size
    skipped: list[str] = []  # what tifffile logs and skips: a directory offset past the end

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            skipped.append(record.getMessage())

    logger = logging.getLogger("tifffile")
    handler, propagate = Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with tifffile.TiffFile(path) as tif:
            end = 0
            for page in tif.pages:
                offsets = np.asarray(page.dataoffsets, np.int64)
                counts = np.asarray(page.databytecounts, np.int64)
                if len(offsets):
                    end = max(end, int(np.max(offsets + counts)))
    except Exception as error:  # noqa: BLE001 (tifffile raises many types for broken files)
        if strict:
            return f"a TIFF file that cannot be parsed (truncated or corrupt: {error})"
        return None
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    if end > size:
        return f"truncated: its image data runs to byte {end:,} but the file ends at byte {size:,}"
    if any("offset" in message for message in skipped):
        return (
            f"truncated or corrupt: a TIFF directory lies past the end of the file ({size:,} "
            f"bytes; {skipped[0]})"
        )
    return None


def pyramid_downsamples(width: int, height: int, tile: int = 256) -> list[int]:
    """1, 2, 4, ... until the level fits in one tile: the pyramid scanners write."""
    downsamples = [1]
    while max(width, height) / downsamples[-1] > tile:
        downsamples.append(downsamples[-1] * 2)
    return downsamples


def write_pyramidal_tiff(
    path: str | os.PathLike,
    width: int,
    height: int,
    level0_region,
    *,
    mpp: float | None,
    downsamples: list[int] | None = None,
    tile: int = 256,
    description: str = "",
    compression_level: int = 6,
) -> None:
    """Writes a tiled, pyramidal, lossless (deflate) RGB TIFF that OpenSlide reads as
    `generic-tiff`, one tile at a time: the image is never whole in memory.

    `level0_region(x, y, w, h)` returns the level-0 pixels [h, w, 3] of that rectangle (it may
    reach past the image, which is white there). Level k of integer downsample d is the d x d
    area average of level 0 (white beyond the edge), ceil(width / d) x ceil(height / d), as a
    scanner's pyramid is. The resolution tags give `mpp` (micrometres per pixel, in pixels per
    centimetre, which OpenSlide turns into `openslide.mpp-x/-y`); `mpp=None` writes none, a slide
    without a scale. `compression_level` is zlib's (1 fastest, 9 smallest).
    """
    import tifffile
    from PIL import Image

    downsamples = downsamples or pyramid_downsamples(width, height, tile)
    if downsamples[0] != 1:
        raise ValueError("the first level must have downsample 1")

    def tiles(d: int, level_w: int, level_h: int):
        for ty in range(0, level_h, tile):
            for tx in range(0, level_w, tile):
                block = np.asarray(level0_region(tx * d, ty * d, tile * d, tile * d), np.uint8)
                if d > 1:  # the d x d mean, rounded (PIL's box reduction, in C)
                    block = np.asarray(Image.fromarray(block).reduce(d))
                # Past the level's edge: white, as the image itself is beyond its edge.
                block = block.copy()
                block[max(0, level_h - ty) :, :] = WHITE
                block[:, max(0, level_w - tx) :] = WHITE
                yield block

    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as writer:
        for i, d in enumerate(downsamples):
            level_w, level_h = -(-width // d), -(-height // d)
            options = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * d)
                options = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            writer.write(
                tiles(d, level_w, level_h),
                shape=(level_h, level_w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                compressionargs={"level": compression_level},
                predictor=2,
                subfiletype=0 if i == 0 else 1,
                description=description if i == 0 else None,
                metadata=None,
                **options,
            )
