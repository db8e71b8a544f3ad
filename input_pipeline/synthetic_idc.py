"""TFDS builder for the synthetic twin of the Kaggle IDC set (see `input_pipeline.synthetic`).

Same features as `KaggleIdc` and the same single "train" split; one builder config per size
("tiny", "small", "full"). Needs no download and no TensorFlow.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from input_pipeline import kaggle_idc, synthetic
from input_pipeline.patches import PATCH_SIZE, Counts, encode_png

GENERATION_SEED = 0  # part of the dataset's definition: a new seed would be a new version


class SyntheticIdc(tfds.core.GeneratorBasedBuilder):
    """Procedural H&E-like patches with the Kaggle IDC set's structure."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name=name,
            description=f"{spec.num_patches} patches of {spec.num_patients} synthetic patients.",
        )
        for name, spec in synthetic.SIZES.items()
    ]
    DEFAULT_CONFIG_NAME = "small"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Synthetic twin of the Kaggle IDC patches (procedural, offline).",
            features=kaggle_idc.idc_features(),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        spec = synthetic.SIZES[self.builder_config.name]
        report = Counts()
        for chunk in synthetic.iter_chunks(spec.num_patients, spec.num_patches, GENERATION_SEED):
            for i in range(len(chunk["label"])):
                report.add("examples_written")
                if chunk["height"][i] < PATCH_SIZE or chunk["width"][i] < PATCH_SIZE:
                    report.add("border_patches_padded")
                yield (
                    f"{chunk['patient'][i]}/{chunk['file_name'][i]}",
                    {
                        "image": encode_png(chunk["image"][i]),
                        "label": int(chunk["label"][i]),
                        "patient": int(chunk["patient"][i]),
                        "x": int(chunk["x"][i]),
                        "y": int(chunk["y"][i]),
                        "height": int(chunk["height"][i]),
                        "width": int(chunk["width"][i]),
                        "file_name": str(chunk["file_name"][i]),
                    },
                )
        report.add("patients", spec.num_patients)
        self.info.metadata["build_report"] = report.to_dict()
        self.info.metadata["generation_seed"] = GENERATION_SEED
