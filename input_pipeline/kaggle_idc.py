"""TFDS builder for the Kaggle "Breast Histopathology Images" (IDC) set.

Two builder configs read the same layout: "full", the Kaggle download in the manual directory,
and "sample", the real sample shipped in this repository (`sources.EMBEDDED_SAMPLE`), which the
quickstart trains on. One "train" split holds every patch (the split protocols of `splits.py`
divide it later). Images are written as PNG bytes with the array_record file format, so that
neither building nor reading needs TensorFlow. Every file found lands in exactly one count of the
build report (`patches.Counts`), which is logged and stored in the dataset's metadata
(`info.metadata["build_report"]`), with the fingerprint of the source it was built from.
"""

from __future__ import annotations

import logging
import pathlib
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline.patches import PATCH_SIZE, Counts, decode_patch, encode_png, is_rgb_png
from input_pipeline.sources import (
    EMBEDDED_SAMPLE,
    KAGGLE_URL,
    ManualDownloadMissingError,
    find_sources,
    fingerprint,
    missing_download_message,
    scan,
)


def idc_features() -> tfds.features.FeaturesDict:
    """One patch: its image, label, patient, slide position, true size and file name."""
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

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Builder configs 'full' and 'sample'; the source's fingerprint in the metadata.",
    }
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="full", description="The Kaggle download (manual_dir)."),
        tfds.core.BuilderConfig(
            name="sample", description="The real sample shipped in data/idc_sample (CC0)."
        ),
    ]
    DEFAULT_CONFIG_NAME = "full"
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

    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and
    # prepared"; nothing is downloaded here, so these two say what happens instead.
    def _log_download_bytes(self) -> None:
        logging.info(
            "preparing the %s data set (%s) in %s, once: later runs read it in seconds",
            self.name,
            self.builder_config.name,
            self.data_dir,
        )

    def _log_download_done(self) -> None:
        pass  # the build report (`_generate_examples`) says it all

    def source_dir(self, manual_dir: str | pathlib.Path) -> pathlib.Path:
        """Where this config's patches are: the manual directory, or the embedded sample."""
        return EMBEDDED_SAMPLE if self.builder_config.name == "sample" else pathlib.Path(manual_dir)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        source_dir = self.source_dir(dl_manager.manual_dir)
        sources = find_sources(source_dir)
        if not sources:
            raise ManualDownloadMissingError(missing_download_message(source_dir))
        return {"train": self._generate_examples(sources[0])}

    def _generate_examples(self, source: pathlib.Path):
        # Taken before reading: a file changed during the build makes the data set stale.
        self.info.metadata["source"] = str(source)
        self.info.metadata["source_fingerprint"] = fingerprint(source)
        report = Counts()
        entries = scan(source, report)
        archive = zipfile.ZipFile(source) if source.suffix.lower() == ".zip" else None
        from tqdm import tqdm  # noqa: PLC0415

        # On a terminal only (disable=None): a log file gets the report line at the end.
        progress = tqdm(entries, desc=f"reading {source.name}", unit="patch", disable=None)
        try:
            for entry in progress:
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
                converted = (height, width) != (PATCH_SIZE, PATCH_SIZE) or not is_rgb_png(data)
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
            progress.close()
            if archive is not None:
                archive.close()
        # The generator is consumed before TFDS writes the dataset info, so this is saved.
        self.info.metadata["build_report"] = report.to_dict()
        logging.info("%s", build_report_line(source, report.to_dict()))


def build_report_line(source: pathlib.Path, report: dict[str, int]) -> str:
    """The build report as a sentence: what was written, and every file skipped or converted."""
    written = report.get("examples_written", 0)
    patients = report.get("patients", 0)
    others = ", ".join(
        f"{count:,} {reason.replace('_', ' ')}"
        for reason, count in report.items()
        if count and reason not in ("examples_written", "patients", "png_files_found")
    )
    return f"read {source}: {written:,} patches of {patients:,} patients written" + (
        f" ({others})" if others else ""
    )
