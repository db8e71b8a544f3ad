"""One IDC patch file: its name, its decoding, and the reading of many (no TFDS, no JAX).

The Kaggle set names every patch `<patient>_idx5_x<X>_y<Y>_class<C>.png`: X and Y are the
1-based top-left pixel of the 50x50 patch on the patient's whole-slide image, C is 1 for IDC.
Patches at the slide's right and bottom border are cut short. The TFDS builder
(`kaggle_idc.py`) and the predictor (`idc_inference/predictor.py`) both decode through
`decode_patch`, so a patch is seen the same way in training and in inference.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import os
import pathlib
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

PATCH_SIZE = 50
WHITE = 255  # the slide background: border patches are padded with it
FILE_NAME_PATTERN = re.compile(r"^(\d+)_idx5_x(\d+)_y(\d+)_class([01])\.png$")
# Patches cut by other tools may leave "_class<C>" out, and still give patient and position.
_UNLABELLED_NAME_PATTERN = re.compile(r"^(\d+)_idx5_x(\d+)_y(\d+)\.png$")


@dataclasses.dataclass(frozen=True)
class PatchName:
    """What a patch's file name says; None where the name does not say it."""

    patient: int | None = None
    x: int | None = None  # 1-based left column of the patch on the slide
    y: int | None = None  # 1-based top row
    label: int | None = None  # 1 = IDC


def parse_patch_name(file_name: str) -> PatchName:
    """Patient, slide position and label of `<patient>_idx5_x<X>_y<Y>[_class<C>].png`."""
    match = FILE_NAME_PATTERN.match(file_name)
    if match is not None:
        patient, x, y, label = (int(group) for group in match.groups())
        return PatchName(patient, x, y, label)
    match = _UNLABELLED_NAME_PATTERN.match(file_name)
    if match is not None:
        patient, x, y = (int(group) for group in match.groups())
        return PatchName(patient, x, y, None)
    return PatchName()


@dataclasses.dataclass
class Counts:
    """Per-reason counts of what was done with every file (the build report of a data set)."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, reason: str, amount: int = 1) -> None:
        self.counts[reason] += amount

    def to_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.counts.items())}


def decode_patch(data: bytes, counts: Counts) -> tuple[np.ndarray, int, int] | None:
    """Decodes one PNG to RGB uint8 [50, 50, 3], white-padded; None (counted) when unreadable.

    Returns (image, true height, true width). Grayscale, palette and RGBA PNGs are converted to RGB
    (alpha composited on white, the slide background) and counted.
    """
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes now, so that a truncated file fails here
            mode = image.mode
            if mode != "RGB":
                counts.add(f"converted_{mode.lower()}_to_rgb")
                if "A" in mode or "transparency" in image.info:
                    rgba = image.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (WHITE, WHITE, WHITE, 255))
                    image = Image.alpha_composite(white, rgba)
                image = image.convert("RGB")
            pixels = np.asarray(image, np.uint8)
    except Exception:  # noqa: BLE001 (PIL raises many types for broken files)
        counts.add("skipped_corrupt_png")
        return None
    height, width = pixels.shape[:2]
    if height > PATCH_SIZE or width > PATCH_SIZE or height == 0 or width == 0:
        counts.add("skipped_wrong_size")
        return None
    if (height, width) != (PATCH_SIZE, PATCH_SIZE):
        counts.add("border_patches_padded")
        padded = np.full((PATCH_SIZE, PATCH_SIZE, 3), WHITE, np.uint8)
        padded[:height, :width] = pixels
        pixels = padded
    return pixels, height, width


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image  # noqa: PLC0415

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def is_rgb_png(data: bytes) -> bool:
    """Whether a PNG's header says 8-bit RGB (colour type 2): its bytes can be kept as is."""
    return len(data) > 26 and data[24] == 8 and data[25] == 2


def find_png_files(
    paths: Iterable[str | os.PathLike],
) -> tuple[list[pathlib.Path], list[tuple[pathlib.Path, str]]]:
    """(PNG files, [(path, reason)] for paths that are neither a file nor a folder).

    A file is taken whatever its name (it is probably meant as a PNG; if it is not, reading it
    fails and it is listed then). A folder contributes every `*.png` below it, recursively, in
    sorted order. Each file appears once even when named twice.
    """
    files: dict[pathlib.Path, None] = {}  # an ordered set
    missing = []
    for path in map(pathlib.Path, paths):
        if path.is_file():
            files[path] = None
        elif path.is_dir():
            found = (p for p in path.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
            files.update(dict.fromkeys(sorted(found)))
        else:
            missing.append((path, "no such file or folder"))
    return list(files), missing


@dataclasses.dataclass(frozen=True)
class LoadedPatch:
    """A decoded patch (white-padded to 50x50 RGB) and its true size, or why it is unreadable."""

    image: np.ndarray | None
    height: int = 0
    width: int = 0
    error: str | None = None


def load_patch(path: pathlib.Path) -> LoadedPatch:
    """Reads one PNG as training did: RGB, alpha on white, border patches padded with white."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as error:
        return LoadedPatch(None, error=f"unreadable file: {error.strerror or error}")
    reasons = Counts()
    decoded = decode_patch(data, reasons)
    if decoded is None:
        # decode_patch counts why it gave up ("skipped_corrupt_png", "skipped_wrong_size").
        why = [reason for reason in reasons.counts if reason.startswith("skipped_")]
        return LoadedPatch(None, error=", ".join(why) or "not a readable PNG")
    image, height, width = decoded
    return LoadedPatch(image, height, width)


def load_patches(
    files: Sequence[pathlib.Path], *, num_threads: int = 8
) -> Iterator[tuple[pathlib.Path, LoadedPatch]]:
    """`load_patch` of every file, in order, decoded by a pool of threads (PIL frees the GIL)."""
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        # map() submits every file at once; chunks keep the decoded-but-unconsumed images bounded.
        chunk = 64 * num_threads
        for start in range(0, len(files), chunk):
            batch = files[start : start + chunk]
            yield from zip(batch, pool.map(load_patch, batch))
