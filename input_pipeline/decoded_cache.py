"""The decoded patches of a prepared data set, cached as .npy files beside it, and read back.

`load_table` decodes a prepared TFDS data set once (PNG decoding releases the GIL, so a thread
per core) straight into one preallocated uint8 array, puts the rows in their canonical order
(patient, y, x, file name) in place, and writes each column as .npy beside the prepared set;
later loads read those files. `_gather` reads rows of a memory-mapped column with plain reads
instead of touching the map, so a split in memory does not also keep the mapped pages.
`input_pipeline.dataset` builds splits from the table.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import json
import logging
import mmap
import os
import pathlib
import platform
import shutil
import tempfile

import numpy as np

from input_pipeline.patches import PATCH_SIZE, Counts, decode_patch

_COLUMNS = ("image", "label", "patient", "x", "y", "height", "width", "file_name")
_CACHE_DIR = "decoded_npy"
_CACHE_FORMAT = 1


def release_freed_memory() -> None:
    """Returns the heap's free pages to the system (glibc's `malloc_trim`).

    After the TFDS build, or once the decoded images are written to the cache and freed, glibc
    keeps the freed memory mapped for later allocations, and never gives it back when a CPU
    training run has set `M_TRIM_THRESHOLD` (mobilenets/cpu/host_memory.py): the process would
    go on holding the build's buffers beside the data set. Nothing happens off glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _gather(column: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """column[rows] as a new array in memory.

    A memory-mapped column (the .npy cache) is read run by run of consecutive rows with plain
    file reads: indexing the map instead would map every page it touches into this process,
    doubling its resident memory while the splits are copied out (patients are contiguous in
    the canonical order, so a patient split reads a few thousand runs).
    """
    rows = np.asarray(rows, dtype=np.int64)
    region = _file_region(column)
    if region is None or len(rows) == 0:
        return np.asarray(column[rows])
    filename, offset = region
    out = np.empty((len(rows), *column.shape[1:]), column.dtype)
    row_bytes = column.dtype.itemsize * int(np.prod(column.shape[1:], dtype=np.int64))
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    flat = out.reshape(len(rows), -1).view(np.uint8)
    with open(filename, "rb", buffering=0) as f:
        for start, end in zip(starts, ends):
            f.seek(offset + int(rows[start]) * row_bytes)
            view = memoryview(flat[start:end].reshape(-1))
            while view:
                read = f.readinto(view)
                if not read:
                    raise OSError(f"{filename} ended early")
                view = view[read:]
    return out


def _file_region(column: np.ndarray) -> tuple[str, int] | None:
    """(file, byte offset of row 0) of a C-contiguous array memory-mapped from a file, else None."""
    mapping = getattr(column, "_mmap", None)
    if mapping is None or not column.flags.c_contiguous or not column.filename:
        return None
    mapped_at = np.frombuffer(mapping, np.uint8).ctypes.data
    mapping_start = column.offset - column.offset % mmap.ALLOCATIONGRANULARITY
    return column.filename, mapping_start + (column.ctypes.data - mapped_at)


def _permute_rows_in_place(array: np.ndarray, order: np.ndarray) -> None:
    """array[:] = array[order] with one row of extra memory (cycle by cycle)."""
    done = np.zeros(len(order), bool)
    row = np.empty_like(array[0])
    for first in range(len(order)):
        if done[first] or order[first] == first:
            continue
        row[...] = array[first]
        at = first
        while True:
            done[at] = True
            source = order[at]
            if source == first:
                array[at] = row
                break
            array[at] = array[source]
            at = source


def _read_prepared(builder, num_threads: int | None = None) -> dict[str, np.ndarray]:
    """Reads every record of the prepared "train" split, decoding PNGs on a thread pool.

    Memory: the decoded images go straight into one preallocated uint8 array, chunk by chunk,
    and each chunk's PNG bytes are dropped once decoded; the canonical order is then applied to
    that array in place. The peak is the decoded data plus one chunk, not PNGs + images + a
    sorted copy (2.5x more on the full set: benchmarks/RESULTS.md, "The full-size data set").
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415

    source = builder.as_data_source(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    num = len(source)
    image = np.empty((num, PATCH_SIZE, PATCH_SIZE, 3), np.uint8)
    numbers = {c: np.empty(num, np.int32) for c in _COLUMNS[1:-1]}
    file_names: list[str] = []
    workers = num_threads or os.cpu_count() or 1
    chunk = 2048  # records in flight: their PNGs are the only memory beside the images

    def decode_range(pngs: list[bytes], offset: int, bounds: tuple[int, int]) -> None:
        for i in range(*bounds):  # stored PNGs are whole 50x50 RGB patches: nothing is counted
            image[offset + i] = decode_patch(pngs[i], Counts())[0]

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, num, chunk):
            records = source.__getitems__(list(range(start, min(num, start + chunk))))
            pngs = [record["image"] for record in records]
            for i, record in enumerate(records, start=start):
                for c in numbers:
                    numbers[c][i] = record[c]
                name = record["file_name"]
                file_names.append(name.decode() if isinstance(name, bytes) else str(name))
            del records
            step = -(-len(pngs) // workers)
            bounds = [(b, min(len(pngs), b + step)) for b in range(0, len(pngs), step)]
            list(pool.map(lambda b, p=pngs, o=start: decode_range(p, o, b), bounds))
            del pngs
            # The chunk's records were read on array_record's threads, into their own glibc
            # arenas, which keep the freed memory: give it back before the next chunk.
            release_freed_memory()
    table = {**numbers, "file_name": np.array(file_names)}
    order = np.lexsort((table["file_name"], table["x"], table["y"], table["patient"]))
    table = {c: table[c][order] for c in table}
    _permute_rows_in_place(image, order)
    table["image"] = image
    return {c: table[c] for c in _COLUMNS}


def load_table(builder, use_cache: bool = True) -> dict[str, np.ndarray]:
    """All patches of a prepared builder as numpy columns, via the .npy cache when present.

    The image column comes back memory-mapped from the cache (read-only); indexing it copies.
    """
    cache = pathlib.Path(builder.data_dir) / _CACHE_DIR
    manifest = cache / "manifest.json"
    expected = int(builder.info.splits["train"].num_examples)
    if use_cache and manifest.is_file():
        meta = json.loads(manifest.read_text())
        if meta.get("format") == _CACHE_FORMAT and meta.get("num_examples") == expected:
            table = {
                c: np.load(cache / f"{c}.npy", mmap_mode="r" if c == "image" else None)
                for c in _COLUMNS
            }
            return table
    table = _read_prepared(builder)
    if use_cache:
        # Written to a temporary folder and renamed, so a concurrent reader never sees half a cache.
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".decoding_", dir=builder.data_dir))
        try:
            for c in _COLUMNS:
                np.save(tmp / f"{c}.npy", table[c])
            (tmp / "manifest.json").write_text(
                json.dumps({"format": _CACHE_FORMAT, "num_examples": expected})
            )
            shutil.rmtree(cache, ignore_errors=True)
            os.replace(tmp, cache)
        except OSError as error:  # a read-only data_dir: keep going without the cache
            logging.warning("could not write the decoded cache to %s: %s", cache, error)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            # The images as every later run gets them, memory-mapped: the decoded copy in memory
            # is freed before the splits are copied out of the cache (`Split.take`).
            table["image"] = np.load(cache / "image.npy", mmap_mode="r")
            release_freed_memory()
    return table
