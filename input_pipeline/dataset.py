"""Loads a prepared IDC data set (real or synthetic) into memory and applies a split protocol.

Why in memory: `tfds.data_source` decodes about 2.3k PNG patches per second per core, far below
the 100k+ images/s a GPU trains at, while the whole set is only 2.1 GB as uint8. So each set is
decoded once (PNG decoding releases the GIL, so a thread per core), cached as .npy files beside the
prepared TFDS dataset, and later loads read (memory-map) those files. Batches are then gathered
by index (`input_pipeline.batching`).

Rows are put in a canonical order (patient, y, x, file name): array_record files are written in a
hashed order, and the split protocols and the batch order must not depend on it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any

import ml_collections
import numpy as np

from input_pipeline import sources
from input_pipeline.patches import PATCH_SIZE, Counts, decode_patch

DATASET_NAMES = ("kaggle_idc", "synthetic_idc")
_COLUMNS = ("image", "label", "patient", "x", "y", "height", "width", "file_name")
_CACHE_DIR = "decoded_npy"
_CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Split:
    """One split held in memory as parallel numpy columns (row i is one patch)."""

    image: np.ndarray  # uint8 [N, 50, 50, 3], white beyond the true size
    label: np.ndarray  # int32 [N], 1 = IDC
    patient: np.ndarray  # int32 [N]
    x: np.ndarray  # int32 [N], 1-based top-left column on the 50-pixel grid
    y: np.ndarray  # int32 [N], 1-based top-left row
    height: np.ndarray  # int32 [N], true height before padding
    width: np.ndarray  # int32 [N], true width before padding
    file_name: np.ndarray  # str [N]

    def __len__(self) -> int:
        return len(self.label)

    def take(self, rows: np.ndarray) -> Split:
        """The rows given, in that order (copies)."""
        return Split(**{c: np.asarray(getattr(self, c)[rows]) for c in _COLUMNS})

    @property
    def num_positives(self) -> int:
        return int(self.label.sum())

    @property
    def num_patients(self) -> int:
        return len(np.unique(self.patient))

    def counts(self) -> dict[str, int]:
        return dict(patches=len(self), positives=self.num_positives, patients=self.num_patients)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What was loaded and how it was split; `to_dict()` is written into every output."""

    name: str  # "kaggle_idc" | "synthetic_idc"
    synthetic: bool
    config_name: str  # TFDS builder config ("tiny", "small", "full"), "" for kaggle_idc
    split_protocol: str
    split_seed: int
    validation_fraction: float
    test_fraction: float
    counts: dict[str, dict[str, int]]  # split -> {patches, positives, patients}
    notes: list[str]
    build_report: dict[str, int]
    data_dir: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: Split
    validation: Split
    test: Split
    info: DatasetInfo


def _resolve_dirs(config: ml_collections.ConfigDict) -> tuple[pathlib.Path, pathlib.Path]:
    """(data_dir, manual_dir) with TFDS's defaults for empty strings."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy import, only when loading)

    data_dir = config.data_dir or os.environ.get("TFDS_DATA_DIR", "")
    data_dir = pathlib.Path(data_dir or tfds.core.constants.DATA_DIR).expanduser()
    manual_dir = config.manual_dir or data_dir / "downloads" / "manual"
    return data_dir, pathlib.Path(manual_dir).expanduser()


def make_builder(config: ml_collections.ConfigDict):
    """The TFDS builder the config names ("auto" resolved), with the array_record format."""
    from input_pipeline import kaggle_idc, synthetic_idc  # noqa: PLC0415

    data_dir, manual_dir = _resolve_dirs(config)
    name = config.dataset
    if name == "auto":
        kaggle = kaggle_idc.KaggleIdc(data_dir=str(data_dir), file_format="array_record")
        prepared = kaggle.is_prepared()
        name = "kaggle_idc" if prepared or sources.find_sources(manual_dir) else "synthetic_idc"
        logging.info("data.dataset='auto' resolved to %s", name)
    if name == "kaggle_idc":
        builder = kaggle_idc.KaggleIdc(data_dir=str(data_dir), file_format="array_record")
        if not builder.is_prepared() and not sources.find_sources(manual_dir):
            raise sources.ManualDownloadMissingError(sources.missing_download_message(manual_dir))
    elif name == "synthetic_idc":
        builder = synthetic_idc.SyntheticIdc(
            config=config.synthetic_size,
            data_dir=str(data_dir),
            file_format="array_record",
        )
    else:
        raise ValueError(f"unknown dataset {name!r}; expected 'auto' or one of {DATASET_NAMES}")
    return builder, manual_dir


def prepare(config: ml_collections.ConfigDict):
    """Builds the dataset if needed (idempotent) and returns its builder."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    builder, manual_dir = make_builder(config)
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        )
    return builder


def _read_prepared(builder, num_threads: int | None = None) -> dict[str, np.ndarray]:
    """Reads every record of the prepared "train" split, decoding PNGs on a thread pool."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    source = builder.as_data_source(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    num = len(source)
    columns: dict[str, Any] = {c: [] for c in _COLUMNS}
    pngs: list[bytes] = []
    chunk = 8192
    for start in range(0, num, chunk):
        for record in source.__getitems__(list(range(start, min(num, start + chunk)))):
            pngs.append(record["image"])
            for c in _COLUMNS[1:]:
                columns[c].append(record[c])
    image = np.empty((num, PATCH_SIZE, PATCH_SIZE, 3), np.uint8)

    def decode_range(bounds: tuple[int, int]) -> None:
        for i in range(*bounds):  # stored PNGs are whole 50x50 RGB patches: nothing is counted
            image[i] = decode_patch(pngs[i], Counts())[0]

    workers = num_threads or os.cpu_count() or 1
    bounds = [(s, min(num, s + 2048)) for s in range(0, num, 2048)]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode_range, bounds))
    table = {c: np.asarray(columns[c], np.int32) for c in _COLUMNS[1:-1]}
    table["file_name"] = np.array(
        [n.decode() if isinstance(n, bytes) else str(n) for n in columns["file_name"]]
    )
    table["image"] = image
    order = np.lexsort((table["file_name"], table["x"], table["y"], table["patient"]))
    return {c: table[c][order] for c in _COLUMNS}


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
    return table


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
    """Prepares (if needed), loads and splits the data set described by `config.data`.

    Keys: dataset, data_dir, manual_dir, synthetic_size, split, split_seed, validation_fraction,
    test_fraction (see configs/default.py). Returns train / validation / test splits in memory.
    """
    from input_pipeline import splits  # noqa: PLC0415

    builder = prepare(config)
    table = load_table(builder)
    full = Split(**table)
    protocol = config.split
    seed = config.split_seed
    validation_fraction = config.validation_fraction
    test_fraction = config.test_fraction
    indices = splits.make_splits(
        protocol, full.patient, full.label, seed, validation_fraction, test_fraction
    )
    train, validation, test = (
        full.take(indices.train),
        full.take(indices.validation),
        full.take(indices.test),
    )
    if len(train) == 0:
        raise ValueError(
            f"the {protocol!r} split left no training patches in {builder.name} "
            f"({'; '.join(indices.notes)})"
        )
    metadata = builder.info.metadata or {}
    synthetic = builder.name == "synthetic_idc"
    notes = list(indices.notes)
    if synthetic:
        notes.insert(0, "synthetic data: procedural twin of the Kaggle IDC set, not real tissue")
    info = DatasetInfo(
        name=builder.name,
        synthetic=synthetic,
        config_name=builder.builder_config.name if builder.builder_config else "",
        split_protocol=protocol,
        split_seed=seed,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        counts={
            "train": train.counts(),
            "validation": validation.counts(),
            "test": test.counts(),
        },
        notes=notes,
        build_report=dict(metadata.get("build_report", {})),
        data_dir=str(builder.data_dir),
    )
    logging.info("loaded %s: %s", builder.name, info.counts)
    for note in notes:
        logging.info("data note: %s", note)
    return Dataset(train, validation, test, info)
