"""Loads a prepared IDC data set into memory and applies a split protocol.

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

DATASET_NAMES = ("kaggle_idc", "idc_sample")
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
    """What was loaded, from where and why, and how it was split; written into every output."""

    name: str  # "kaggle_idc" (the Kaggle download) | "idc_sample" (the shipped sample)
    source: str  # the zip or folder the data set was built from
    selection: str  # why this data set was used (`data.dataset` and what "auto" found)
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


@dataclasses.dataclass(frozen=True)
class Choice:
    """The data set a config resolves to: its builder, where its files are, and why."""

    name: str
    builder: Any  # kaggle_idc.KaggleIdc
    source_dir: pathlib.Path
    selection: str


def choose(config: ml_collections.ConfigDict) -> Choice:
    """The data set `config.dataset` names, "auto" resolved: the Kaggle set when it is there.

    "auto" takes the Kaggle download when it is prepared in data_dir or found in manual_dir, and
    otherwise the real sample shipped in data/idc_sample; the choice and its reason are logged
    and recorded in every run's summary.
    """
    from input_pipeline import kaggle_idc  # noqa: PLC0415

    data_dir, manual_dir = _resolve_dirs(config)

    def builder(config_name: str):
        return kaggle_idc.KaggleIdc(
            config=config_name, data_dir=str(data_dir), file_format="array_record"
        )

    name = config.dataset
    if name not in ("auto", *DATASET_NAMES):
        raise ValueError(f"unknown dataset {name!r}; expected 'auto' or one of {DATASET_NAMES}")
    full = builder("full")
    if name == "auto":
        if full.is_prepared():
            selection = f"auto: the Kaggle set is prepared in {full.data_dir}"
        elif sources.find_sources(manual_dir):
            selection = f"auto: the Kaggle download was found in {manual_dir}"
        else:
            name = "idc_sample"
            selection = (
                f"auto: no Kaggle download in {manual_dir} and none prepared in {data_dir}, so "
                f"the real sample shipped in {sources.EMBEDDED_SAMPLE}"
            )
        name = "kaggle_idc" if name == "auto" else name
        logging.info("data.dataset=%s", selection)
    else:
        selection = f"data.dataset={name!r}"
    if name == "kaggle_idc":
        if not full.is_prepared() and not sources.find_sources(manual_dir):
            raise sources.ManualDownloadMissingError(sources.missing_download_message(manual_dir))
        return Choice(name, full, manual_dir, selection)
    sample = builder("sample")
    source_dir = sample.source_dir(manual_dir)
    if not sample.is_prepared() and not sources.find_sources(source_dir):
        raise FileNotFoundError(
            f"the sample shipped with this repository is missing from {source_dir}: "
            "restore it with `git checkout -- data/idc_sample`"
        )
    return Choice(name, sample, source_dir, selection)


def prepare(config: ml_collections.ConfigDict) -> Choice:
    """Builds the data set if needed (idempotent, and again when its files have changed).

    A prepared data set records the fingerprint (names, sizes, modification times) of the files
    it was built from. When the files found now differ, say a manual_dir pointed elsewhere with
    the same data_dir, the old preparation is deleted and rebuilt from them, and a warning says
    so: a prepared set is never silently read in place of other files.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415

    choice = choose(config)
    builder = choice.builder
    found = sources.find_sources(choice.source_dir)
    if builder.is_prepared() and found:
        built_from = builder.info.metadata.get("source_fingerprint")
        if built_from != sources.fingerprint(found[0]):
            logging.warning(
                "the %s data set prepared in %s was built from %s, not from the files now in "
                "%s (their names, sizes or times differ): rebuilding it from them.",
                choice.name,
                builder.data_dir,
                builder.info.metadata.get("source", "other files"),
                found[0],
            )
            shutil.rmtree(builder.data_dir)
            choice = choose(config)
            builder = choice.builder
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(choice.source_dir))
        )
    return choice


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


def check_splits(protocol: str, splits: dict[str, Split], dataset: str) -> None:
    """Refuses evaluation splits that cannot measure anything, naming what they hold.

    Validation and test must each hold both classes, and under a patient protocol at least two
    patients: a ROC AUC needs both classes, and one patient's patches measure that patient.
    """
    problems = []
    for name in ("validation", "test"):
        split = splits[name]
        counts = split.counts()
        negatives = counts["patches"] - counts["positives"]
        held = (
            f"{name} holds {counts['patients']} patient(s), {counts['patches']} patches "
            f"({counts['positives']} IDC, {negatives} not)"
        )
        if protocol != "random_patch" and counts["patients"] < 2:
            problems.append(f"{held}: fewer than 2 patients")
        elif counts["positives"] == 0 or negatives == 0:
            problems.append(f"{held}: one class is missing")
    if problems:
        train = splits["train"].counts()
        raise ValueError(
            f"the {protocol!r} split of {dataset} cannot be evaluated: "
            + "; ".join(problems)
            + f" (train: {train['patients']} patients, {train['patches']} patches). Use a data "
            "set with more patients, larger validation_fraction / test_fraction, or another "
            "split protocol."
        )


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
    """Prepares (if needed), loads and splits the data set described by `config.data`.

    Keys: dataset, data_dir, manual_dir, split, split_seed, validation_fraction, test_fraction
    (see configs/default.py). Returns train / validation / test splits in memory.
    """
    from input_pipeline import splits as protocols  # noqa: PLC0415

    choice = prepare(config)
    builder = choice.builder
    full = Split(**load_table(builder))
    protocol = config.split
    indices = protocols.make_splits(
        protocol,
        full.patient,
        full.label,
        config.split_seed,
        config.validation_fraction,
        config.test_fraction,
    )
    split = {name: full.take(getattr(indices, name)) for name in ("train", "validation", "test")}
    if len(split["train"]) == 0:
        raise ValueError(
            f"the {protocol!r} split left no training patches in {choice.name} "
            f"({'; '.join(indices.notes)})"
        )
    check_splits(protocol, split, choice.name)
    metadata = builder.info.metadata or {}
    info = DatasetInfo(
        name=choice.name,
        source=str(metadata.get("source", choice.source_dir)),
        selection=choice.selection,
        split_protocol=protocol,
        split_seed=config.split_seed,
        validation_fraction=config.validation_fraction,
        test_fraction=config.test_fraction,
        counts={name: part.counts() for name, part in split.items()},
        notes=list(indices.notes),
        build_report=dict(metadata.get("build_report", {})),
        data_dir=str(builder.data_dir),
    )
    logging.info("loaded %s (%s): %s", choice.name, choice.selection, info.counts)
    for note in info.notes:
        logging.info("data note: %s", note)
    return Dataset(split["train"], split["validation"], split["test"], info)
