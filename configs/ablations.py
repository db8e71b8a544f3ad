"""The candidates for the best recipe, each tried one factor at a time against configs/v1.py.

`python reproduce.py ... --ablations=all` (or a list of their names) trains each as MobileNetV1
under the patient split of the 245-patient subset, with the base config changed by `overrides`;
results/real_subset/report.md tabulates their validation figures, cost and the decision taken.
Every decision is made on the validation patients; `decision` records it once the run is measured
(empty: not yet). They are listed, and trained, most promising first.
"""

ABLATIONS = (
    dict(
        name="size_128",
        change="128 px instead of 96 px",
        overrides={"preprocess.image_size": 128},
        decision="",
    ),
    dict(
        name="epochs_15_cosine",
        change="15 epochs, 1 of warm-up then cosine decay from 1e-4",
        overrides={"num_epochs": 15, "schedule": "warmup_cosine", "warmup_epochs": 1.0},
        decision="",
    ),
    dict(
        name="class_weights",
        change="loss weighted by inverse class frequency",
        overrides={"class_weights": "balanced"},
        decision="",
    ),
    dict(
        name="dihedral",
        change="a random dihedral view (rotation x mirror) of each training patch",
        overrides={"preprocess.dihedral": True},
        decision="",
    ),
    dict(
        name="lr_3e-4",
        change="Adam at 3e-4 instead of 1e-4",
        overrides={"learning_rate": 3e-4},
        decision="",
    ),
    dict(
        name="hed_jitter",
        change="stain augmentation: HED jitter 0.05 (Tellez et al. 2019)",
        overrides={"preprocess.hed_jitter": 0.05},
        decision="",
    ),
    dict(
        name="size_50",
        change="native 50 px instead of 96 px",
        overrides={"preprocess.image_size": 50},
        decision="",
    ),
    dict(
        name="batch_64",
        change="batch 64 (4x fewer steps), precise BN and TTA kept",
        overrides={"global_batch_size": 64},
        decision="",
    ),
    dict(
        name="paper_keras_evaluation",
        change="batch 64, moving-average BatchNorm and one view: the paper as Keras runs it",
        overrides={"global_batch_size": 64, "bn_recalibration_batches": 0, "eval_tta": False},
        decision="",
    ),
)
