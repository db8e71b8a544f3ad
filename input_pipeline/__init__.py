"""Input pipeline for the Kaggle IDC patches (the full set, or the real sample shipped here).

- `load_dataset(config.data)`: builds (TFDS, array_record, no TensorFlow needed) and loads a data
  set into memory, split by patient, by the published lists, or by patch (the paper's protocol).
- `iterate_batches`: deterministic (seed, epoch) order, resumable, sharded over processes, exact
  padded-and-masked evaluation.
- `preprocess`: resize, scale and augment on the accelerator inside jit.

TFDS is imported lazily (by `load_dataset`), so batching and preprocessing import quickly.
"""

from input_pipeline.batching import class_weights, epoch_order, iterate_batches, num_batches
from input_pipeline.dataset import Dataset, DatasetInfo, Split, load_dataset, load_table, prepare
from input_pipeline.preprocessing import (
    dihedral_view,
    inverse_dihedral_view,
    preprocess,
    random_dihedral,
)
from input_pipeline.sources import KAGGLE_PATCH_MPP, KAGGLE_PATCHES, KAGGLE_PATIENTS

__all__ = [
    "KAGGLE_PATCH_MPP",
    "KAGGLE_PATCHES",
    "KAGGLE_PATIENTS",
    "Dataset",
    "DatasetInfo",
    "Split",
    "class_weights",
    "dihedral_view",
    "epoch_order",
    "inverse_dihedral_view",
    "iterate_batches",
    "load_dataset",
    "load_table",
    "num_batches",
    "prepare",
    "preprocess",
    "random_dihedral",
]
