"""Where the IDC patches come from, found, fingerprinted and listed (no TFDS).

The Kaggle set (Janowczyk & Madabhushi 2016; Cruz-Roa et al. 2014; CC0) holds 277,524 RGB patches
of 279 patients (`KAGGLE_PATCHES`, `KAGGLE_PATIENTS`) as
`<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png`. Kaggle needs a login, so the user
downloads it and puts the zip (or the extracted folder) in the manual directory.
Without it, this repository ships a real sample in the same layout, `data/idc_sample`
(`EMBEDDED_SAMPLE`). `scan` lists the patches of a source and counts every file it skips, so that
nothing is dropped silently; `fingerprint` identifies a source, so that a data set prepared from
other files is never read as if it were this one.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pathlib
import zipfile
from collections.abc import Iterator

from input_pipeline.errors import DataError
from input_pipeline.patches import FILE_NAME_PATTERN, Counts

KAGGLE_URL = "https://www.kaggle.com/datasets/paultimothymooney/breast-histopathology-images"
# The Kaggle set's size, written once (full-size benchmarks, the experiment's share of the set).
# 198,738 of the patches are negative (71.6%), 78,786 IDC.
KAGGLE_PATCHES = 277_524
KAGGLE_PATIENTS = 279
# The scale of the Kaggle patches, in micrometres per pixel (slides are read at it).
#
# The Kaggle set (IDC_regular_ps50_idx5) is the patch data of Cruz-Roa et al., "Automatic
# detection of invasive ductal carcinoma in whole slide images with convolutional neural
# networks", SPIE Medical Imaging 2014 (9041:904103), reused as use case 6 of Janowczyk &
# Madabhushi, "Deep learning for digital pathology image analysis: a comprehensive tutorial with
# selected use cases", J Pathol Inform 2016;7:29 (whose use-case page says the patches came from
# Cruz-Roa's authors as 50x50 patches). Both describe 162 whole-mount slides scanned at 40x and
# the patches cut from them reduced 16:1, to an apparent magnification of 2.5x. Neither states a
# pixel size: at 40x a whole-slide scanner's pixel is about 0.25 um, so 16 x 0.25 = 4 um per
# pixel, and a 50x50 patch spans 200 x 200 um of tissue. A few per cent of error in this value
# (a 40x scanner's 0.24-0.26 um) does not matter: tiles 10% larger or smaller than a Kaggle
# patch's field (the demo slide mapped as if it were 3.6 or 4.4 um/px, shipped model, one view)
# moved its tile ROC AUC from 0.912 to 0.914-0.931.
KAGGLE_PATCH_MPP = 4.0
# Names the archive has: from the browser, from the Kaggle CLI, and the original release.
KNOWN_ZIP_NAMES = ("archive.zip", "breast-histopathology-images.zip", "IDC_regular_ps50_idx5.zip")
# The real sample shipped with the repository (data/README.md says what it holds and its licence).
EMBEDDED_SAMPLE = pathlib.Path(__file__).resolve().parents[1] / "data" / "idc_sample"


class ManualDownloadMissingError(DataError, FileNotFoundError):
    """The Kaggle download is not in the manual directory."""


def missing_download_message(manual_dir: str | os.PathLike) -> str:
    """Two lines: where the Kaggle download was looked for and how to get it; the sample instead."""
    return (
        f"the Kaggle IDC data set is not in {manual_dir}: download archive.zip (free Kaggle "
        f"login) from {KAGGLE_URL} and put it, or its extracted folder, there, or pass "
        "--config.data.manual_dir=<where it is>.\n"
        f"To train on the real sample shipped with this repository instead: {SAMPLE_COMMAND}"
    )


SAMPLE_COMMAND = (
    "python main.py --config=configs/v1.py --workdir=/tmp/idc_v1 --config.data.dataset=idc_sample"
)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One patch file found: where to read it from and what its name says."""

    source: str  # path of the file, or path of the zip
    member: str | None  # name inside the zip, None for a plain file
    patient: int
    x: int
    y: int
    label: int
    file_name: str


def find_sources(manual_dir: pathlib.Path) -> list[pathlib.Path]:
    """The zips (known names first) or, when there is none, the folder itself."""
    if not manual_dir.is_dir():
        return []
    zips = sorted(manual_dir.glob("*.zip"), key=lambda p: (p.name not in KNOWN_ZIP_NAMES, p.name))
    if zips:
        return zips[:1]  # the three known zips hold the same patches: read one
    if any(p.suffix.lower() == ".png" for p in manual_dir.rglob("*")):
        return [manual_dir]
    return []


def fingerprint(source: pathlib.Path) -> str:
    """A digest of the names, sizes and modification times of a source's files.

    A zip is one file; a folder is every file below it. Reading contents would take minutes on
    the full set; a changed, added or removed file changes its size, time or the list of names.
    """
    digest = hashlib.sha256()
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for path in files:
        stat = path.stat()
        name = path.name if path == source else path.relative_to(source).as_posix()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _list_files(source: pathlib.Path) -> Iterator[tuple[str | None, str, bool]]:
    """Yields (zip member or None, relative path with '/', is_directory) for every entry."""
    if source.suffix.lower() == ".zip":
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                yield info.filename, info.filename.rstrip("/"), info.is_dir()
        return
    for root, dirs, files in os.walk(source):
        rel_root = pathlib.Path(root).relative_to(source)
        for name in sorted(dirs):
            yield None, (rel_root / name).as_posix(), True
        for name in sorted(files):
            yield None, (rel_root / name).as_posix(), False


def scan(source: pathlib.Path, report: Counts) -> list[_Entry]:
    """Lists the patch files of one source, deduplicated, counting everything it skips.

    The Kaggle zip holds every patient folder twice (at the top level and again under
    `IDC_regular_ps50_idx5/`); a patch is identified by (patient, file name) and counted once.
    """
    entries: dict[tuple[int, str], _Entry] = {}
    class_folders: dict[int, set[str]] = collections.defaultdict(set)
    nonempty_class_folders: dict[int, set[str]] = collections.defaultdict(set)
    for member, rel_path, is_dir in _list_files(source):
        parts = rel_path.split("/")
        if is_dir:
            if len(parts) >= 2 and parts[-2].isdigit() and parts[-1] in ("0", "1"):
                class_folders[int(parts[-2])].add(parts[-1])
            continue
        name = parts[-1]
        if not name.lower().endswith(".png"):
            report.add("skipped_stray_file")  # .DS_Store, Thumbs.db, README, ...
            continue
        report.add("png_files_found")
        match = FILE_NAME_PATTERN.match(name)
        if match is None:
            report.add("skipped_unparsable_name")
            continue
        patient, x, y, label = (int(g) for g in match.groups())
        folder_class = parts[-2] if len(parts) >= 2 else None
        folder_patient = parts[-3] if len(parts) >= 3 else None
        if folder_class != str(label) or folder_patient != str(patient):
            report.add("skipped_folder_disagrees_with_name")
            continue
        class_folders[patient].add(folder_class)
        nonempty_class_folders[patient].add(folder_class)
        key = (patient, name)
        if key in entries:
            report.add("duplicate_copies_ignored")  # the zip's nested second copy
            continue
        path = str(source if member is not None else source / rel_path)
        entries[key] = _Entry(path, member, patient, x, y, label, name)
    for patient in sorted(set(class_folders) | set(nonempty_class_folders)):
        missing_or_empty = {"0", "1"} - nonempty_class_folders[patient]
        report.add("class_folders_missing_or_empty", len(missing_or_empty))
    report.add("patients", len({e.patient for e in entries.values()}))
    return [entries[k] for k in sorted(entries)]
