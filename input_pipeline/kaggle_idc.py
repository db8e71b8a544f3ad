"""TFDS builder for the Kaggle "Breast Histopathology Images" (IDC) set, from a manual download.

The set (Janowczyk & Madabhushi 2016; Cruz-Roa et al. 2014; CC0) holds 277,524 RGB patches of
279 patients as `<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png`. Kaggle needs a login, so
the user downloads it and puts the zip (or the extracted folder) in the manual directory.

The builder never crashes half-way and never drops a file silently: every file found lands in
exactly one count of the build report (`BuildReport`), which is logged and stored in the dataset's
metadata (`info.metadata["build_report"]`). Images are written as PNG bytes with the array_record
file format, so that neither building nor reading needs TensorFlow.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import os
import pathlib
import re
import zipfile
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

PATCH_SIZE = 50
KAGGLE_URL = "https://www.kaggle.com/datasets/paultimothymooney/breast-histopathology-images"
# Names the archive has: from the browser, from the Kaggle CLI, and the original release.
KNOWN_ZIP_NAMES = ("archive.zip", "breast-histopathology-images.zip", "IDC_regular_ps50_idx5.zip")
FILE_NAME_PATTERN = re.compile(r"^(\d+)_idx5_x(\d+)_y(\d+)_class([01])\.png$")
SYNTHETIC_COMMAND = (
    "python main.py --config=configs/v1.py --workdir=/tmp/idc_v1"
    " --config.data.dataset=synthetic_idc"
)


class ManualDownloadMissingError(FileNotFoundError):
    """The Kaggle download is not in the manual directory."""


def missing_download_message(manual_dir: str | os.PathLike) -> str:
    return (
        f"The Kaggle IDC data set was not found in the manual directory {manual_dir}.\n"
        f"  1. Download it (free Kaggle login) from {KAGGLE_URL}\n"
        f"     (browser: archive.zip; CLI: `kaggle datasets download "
        f"paultimothymooney/breast-histopathology-images`).\n"
        f"  2. Put the zip, or the extracted folder of patient folders, in {manual_dir}\n"
        f"     (or pass --config.data.manual_dir=<where it is>).\n"
        f"To run on the synthetic twin instead, which needs no download:\n"
        f"  {SYNTHETIC_COMMAND}"
    )


@dataclasses.dataclass
class BuildReport:
    """Per-reason counts of what the builder did with every file it found."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, reason: str, amount: int = 1) -> None:
        self.counts[reason] += amount

    def to_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in sorted(self.counts.items())}


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


def scan(source: pathlib.Path, report: BuildReport) -> list[_Entry]:
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


def decode_patch(data: bytes, report: BuildReport) -> tuple[np.ndarray, int, int] | None:
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
                report.add(f"converted_{mode.lower()}_to_rgb")
                if "A" in mode or "transparency" in image.info:
                    rgba = image.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(white, rgba)
                image = image.convert("RGB")
            pixels = np.asarray(image, np.uint8)
    except Exception:  # noqa: BLE001 (PIL raises many types for broken files)
        report.add("skipped_corrupt_png")
        return None
    height, width = pixels.shape[:2]
    if height > PATCH_SIZE or width > PATCH_SIZE or height == 0 or width == 0:
        report.add("skipped_wrong_size")
        return None
    if (height, width) != (PATCH_SIZE, PATCH_SIZE):
        report.add("border_patches_padded")
        padded = np.full((PATCH_SIZE, PATCH_SIZE, 3), 255, np.uint8)
        padded[:height, :width] = pixels
        pixels = padded
    return pixels, height, width


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image  # noqa: PLC0415

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def idc_features() -> tfds.features.FeaturesDict:
    """Features shared by the Kaggle builder and its synthetic twin."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(PATCH_SIZE, PATCH_SIZE, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=["no_idc", "idc"]),
            "patient": np.int32,
            "x": np.int32,  # 1-based top-left column on the 50-pixel grid
            "y": np.int32,  # 1-based top-left row
            "height": np.int32,  # true size before padding (< 50 at the slide border)
            "width": np.int32,
            "file_name": tfds.features.Text(),
        }
    )


class KaggleIdc(tfds.core.GeneratorBasedBuilder):
    """The Kaggle IDC patches, one "train" split holding every patch (protocols split later)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download {KAGGLE_URL} (archive.zip, breast-histopathology-images.zip or
    IDC_regular_ps50_idx5.zip) and place the zip, or its extracted patient folders, in manual_dir.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Kaggle Breast Histopathology Images: 50x50 H&E patches, IDC vs not.",
            features=idc_features(),
            supervised_keys=("image", "label"),
            homepage=KAGGLE_URL,
            citation="Janowczyk & Madabhushi, J Pathol Inform 2016; Cruz-Roa et al., SPIE 2014.",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = pathlib.Path(dl_manager.manual_dir)
        sources = find_sources(manual_dir)
        if not sources:
            raise ManualDownloadMissingError(missing_download_message(manual_dir))
        return {"train": self._generate_examples(sources[0])}

    def _generate_examples(self, source: pathlib.Path):
        report = BuildReport()
        entries = scan(source, report)
        archive = zipfile.ZipFile(source) if source.suffix.lower() == ".zip" else None
        try:
            for entry in entries:
                try:
                    if archive is not None:
                        data = archive.read(entry.member)
                    else:
                        data = pathlib.Path(entry.source).read_bytes()
                except (OSError, zipfile.BadZipFile, EOFError):
                    report.add("skipped_unreadable_file")
                    continue
                decoded = decode_patch(data, report)
                if decoded is None:
                    continue
                image, height, width = decoded
                converted = (height, width) != (PATCH_SIZE, PATCH_SIZE) or not _is_rgb_png(data)
                report.add("examples_written")
                yield (
                    f"{entry.patient}/{entry.file_name}",
                    {
                        "image": encode_png(image) if converted else data,
                        "label": entry.label,
                        "patient": entry.patient,
                        "x": entry.x,
                        "y": entry.y,
                        "height": height,
                        "width": width,
                        "file_name": entry.file_name,
                    },
                )
        finally:
            if archive is not None:
                archive.close()
        # The generator is consumed before TFDS writes the dataset info, so this is saved.
        self.info.metadata["build_report"] = report.to_dict()
        logging.info("kaggle_idc build report: %s", report.to_dict())


def _is_rgb_png(data: bytes) -> bool:
    """Whether a PNG's header says 8-bit RGB (colour type 2): its bytes can be kept as is."""
    return len(data) > 26 and data[24] == 8 and data[25] == 2
