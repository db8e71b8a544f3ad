"""Loads a prepared IDC data set into memory and applies a split protocol.

Why in memory: `tfds.data_source` decodes PNG patches far slower, per core, than a GPU trains on
them, while the whole set is small as uint8 (277,524 x 50 x 50 x 3 bytes, 2.1 GB). So each set is
decoded once (PNG decoding releases the GIL, so a thread per core), cached as .npy files beside the
prepared TFDS dataset (`input_pipeline.decoded_cache`), and later loads read those files.
Batches are gathered by index (`input_pipeline.batching`). benchmarks/RESULTS.md, section "Input
pipeline", has the figures; `benchmarks/input_pipeline_bench.py` measures them.

Rows are put in a canonical order (patient, y, x, file name): array_record files are written in a
hashed order, and the split protocols and the batch order must not depend on it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any

import ml_collections
import numpy as np

from input_pipeline import sources, windows
from input_pipeline.decoded_cache import _COLUMNS, _gather, load_table, release_freed_memory
from input_pipeline.errors import DataError

DATASET_NAMES = ("kaggle_idc", "idc_sample")


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
    # int64 [N, k * k] or None: the rows of this split that make each patch's k x k window on
    # its slide's grid, -1 where the grid has no patch (`windows.window_rows`; data.window).
    windows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    def take(self, rows: np.ndarray) -> Split:
        """The rows given, in that order (copies; a memory-mapped column is read, not mapped),
        without windows: they index rows, which change (`with_windows` makes them anew)."""
        return Split(**{c: _gather(getattr(self, c), rows) for c in _COLUMNS})

    def with_windows(self, size: int) -> Split:
        """This split whose batches are `size` x `size` windows of patches (1: the patch alone).

        A window's cells come from this split only: under the patient protocols a patient's
        patches are all in one split, so nothing is lost; under "random_patch" a neighbour drawn
        into another split is a white cell."""
        if size == 1:
            return dataclasses.replace(self, windows=None)
        rows = windows.window_rows(self.patient, self.x, self.y, size)
        return dataclasses.replace(self, windows=rows)

    def images(self, rows: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] of these rows: the patches (S = 50), or their windows (S = 50 k)."""
        if self.windows is None:
            return np.take(self.image, rows, axis=0)
        return windows.assemble_windows(self.image, self.windows[rows])

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
        raise DataError(
            f"unknown data.dataset {name!r}: choose 'auto' or one of {', '.join(DATASET_NAMES)}"
        )
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
    else:
        selection = f"data.dataset={name!r}"
    if name == "kaggle_idc":
        if not full.is_prepared() and not sources.find_sources(manual_dir):
            raise sources.ManualDownloadMissingError(sources.missing_download_message(manual_dir))
        return Choice(name, full, manual_dir, selection)
    sample = builder("sample")
    source_dir = sample.source_dir(manual_dir)
    if not sample.is_prepared() and not sources.find_sources(source_dir):
        raise DataError(
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
        if found and _source_bytes(found[0]) >= BUILD_IN_CHILD_BYTES:
            _build_in_child(config)
            return choose(config)  # a builder that reads what the child wrote
        # TFDS's own bars (splits, examples, shuffling) would stack on the builder's one.
        tfds.display_progress_bar(False)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(choice.source_dir))
        )
        release_freed_memory()  # the build's buffers, before the decoded images take their place
    return choice


# Sources at least this large are built in a child process. TFDS's writer holds up to 1 GB of
# examples, and a process keeps part of what a build allocated (glibc's arenas, TensorFlow
# Datasets' and array_record's own buffers) after it ends: built in the training process, a
# full-size build left 0.6 GB behind and the decoding after it peaked at 3.8 GB instead of
# 2.4 GB. A child gives it all back when it exits (benchmarks/RESULTS.md, "The full-size data
# set").
BUILD_IN_CHILD_BYTES = 256 << 20


def _source_bytes(source: pathlib.Path) -> int:
    if source.is_file():
        return source.stat().st_size
    return sum(path.stat().st_size for path in source.rglob("*") if path.is_file())


def _build_in_child(config: ml_collections.ConfigDict) -> None:
    """`prepare(config)` in a child process; its errors are raised here, as if made here."""
    import pickle  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    root = str(pathlib.Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory(prefix="idc_build_") as exchange:
        asked, answer = pathlib.Path(exchange, "config.pickle"), pathlib.Path(exchange, "outcome")
        asked.write_bytes(pickle.dumps(config))
        code = (
            f"import sys; sys.path.insert(0, {root!r}); from input_pipeline import dataset; "
            f"dataset._prepare_and_report({str(asked)!r}, {str(answer)!r})"
        )
        child = subprocess.run([sys.executable, "-c", code], check=False)
        outcome = pickle.loads(answer.read_bytes()) if answer.is_file() else None
    if outcome is None:
        raise RuntimeError(
            f"the process building the data set died (exit code {child.returncode}) before it "
            "finished; its output above says why"
        )
    if isinstance(outcome, BaseException):
        raise outcome


class _ChildFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = {logging.WARNING: "warning: ", logging.ERROR: "error: "}.get(record.levelno, "")
        return prefix + record.getMessage()


def _prepare_and_report(asked: str, answer: str) -> None:
    """The child of `_build_in_child`: prepares the pickled config in `asked` and pickles True,
    or the exception, to `answer`. This module's lines are printed as the programs print them;
    the libraries' (TFDS logs through absl) only when they are errors."""
    import pickle  # noqa: PLC0415

    config = pickle.loads(pathlib.Path(asked).read_bytes())
    handler = logging.StreamHandler()
    handler.setFormatter(_ChildFormatter())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.ERROR)
    global BUILD_IN_CHILD_BYTES
    BUILD_IN_CHILD_BYTES = float("inf")  # this process builds
    try:
        prepare(config)
        outcome = True
    except Exception as error:  # noqa: BLE001 (sent to the parent, which raises it)
        outcome = error
    pathlib.Path(answer).write_bytes(pickle.dumps(outcome))


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
        raise DataError(
            f"the {protocol!r} split of {dataset} cannot be evaluated: "
            + "; ".join(problems)
            + f" (train: {train['patients']} patients, {train['patches']} patches). Use a data "
            "set with more patients, larger validation_fraction / test_fraction, or another "
            "split protocol."
        )


def describe(info: DatasetInfo) -> str:
    """One line: the data set, why it was chosen, the split protocol and what each part holds."""
    parts = []
    for name, counts in info.counts.items():
        share = counts["positives"] / counts["patches"] if counts["patches"] else 0.0
        parts.append(
            f"{name} {counts['patches']:,} patches of {counts['patients']:,} patients "
            f"({share:.0%} IDC)"
        )
    return f"data: {info.name} ({info.selection}), {info.split_protocol} split: " + ", ".join(parts)


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
    """Prepares (if needed), loads and splits the data set described by `config.data`.

    Keys: dataset, data_dir, manual_dir, split, split_seed, validation_fraction, test_fraction,
    test_patients, train_patients_fraction
    (see configs/default.py). Returns train / validation / test splits in memory.
    """
    from input_pipeline import splits as protocols  # noqa: PLC0415

    choice = prepare(config)
    builder = choice.builder
    full = Split(**load_table(builder))
    protocol = config.split
    try:
        indices = protocols.make_splits(
            protocol,
            full.patient,
            full.label,
            config.split_seed,
            config.validation_fraction,
            config.test_fraction,
            # Configs written before the key existed drew the test patients too.
            config.get("test_patients", ""),
            x=full.x,
            y=full.y,
        )
    except ValueError as error:  # a patient or protocol the data does not have
        raise DataError(f"{error} ({choice.name})") from None
    train_rows, fewer_note = protocols.fewer_training_patients(
        full.patient,
        full.label,
        indices.train,
        # Configs written before the key existed trained on every training patient.
        config.get("train_patients_fraction", 1.0),
        config.split_seed,
    )
    if fewer_note:
        indices = dataclasses.replace(indices, train=train_rows, notes=(*indices.notes, fewer_note))
    # Configs written before the key existed showed each patch alone.
    window = config.get("window", 1)
    split = {
        name: full.take(getattr(indices, name)).with_windows(window)
        for name in ("train", "validation", "test")
    }
    if len(split["train"]) == 0:
        raise DataError(
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
    logging.info("%s", describe(info))
    return Dataset(split["train"], split["validation"], split["test"], info)
