"""The candidates for the best recipe, each tried one factor at a time against configs/v1.py.

`python reproduce.py ... --ablations=all` (or a list of their names) trains each as MobileNetV1
under the patient split of the 245-patient subset, with the base config changed by `overrides`;
results/real_subset/report.md tabulates their validation figures, cost and the decision taken.
Every decision is made on the validation patients; `decision` records it once the run is measured
(empty: not yet), "adopted" for a change configs/v1_best.py makes (tests/test_reproduce.py checks
that it makes exactly these). They are listed, and trained, most promising first. The base's
validation figures, against which each decision quotes its own: report.md's section "Ablations:
how the best recipe was chosen" (and Table 1's patient-level MobileNetV1 row).
"""

ABLATIONS = (
    dict(
        name="size_128",
        change="128 px instead of 96 px",
        overrides={"preprocess.image_size": 128},
        decision=(
            "rejected: validation ROC AUC, balanced accuracy and F1 within 0.005 of the base "
            "(0.882 / 0.788 / 0.710 against 0.880 / 0.784 / 0.705) for 1.8x the pixels"
        ),
    ),
    dict(
        name="epochs_15_cosine",
        change="15 epochs, 1 of warm-up then cosine decay from 1e-4",
        overrides={"num_epochs": 15, "schedule": "warmup_cosine", "warmup_epochs": 1.0},
        decision=(
            "adopted: raised all three validation metrics (ROC AUC "
            "+0.007, balanced accuracy +0.015, F1 +0.019), for 3x the training"
        ),
    ),
    dict(
        name="class_weights",
        change="loss weighted by inverse class frequency",
        overrides={"class_weights": "balanced"},
        decision=(
            "adopted: raised all three validation metrics (ROC AUC +0.007, balanced accuracy "
            "+0.028, F1 +0.015) at no cost"
        ),
    ),
    dict(
        name="dihedral",
        change="a random dihedral view (rotation x mirror) of each training patch",
        overrides={"preprocess.dihedral": True},
        decision=(
            "rejected: validation ROC AUC, balanced accuracy and F1 within 0.005 of the base "
            "(0.882 / 0.787 / 0.710); 5 epochs may be too few for an augmentation to pay"
        ),
    ),
    dict(
        name="lr_3e-4",
        change="Adam at 3e-4 instead of 1e-4",
        overrides={"learning_rate": 3e-4},
        decision=(
            "rejected: validation ROC AUC +0.002 but balanced accuracy -0.011 and F1 -0.015 "
            "(0.882 / 0.773 / 0.690)"
        ),
    ),
    dict(
        name="hed_jitter",
        change="stain augmentation: HED jitter 0.05 (Tellez et al. 2019)",
        overrides={"preprocess.hed_jitter": 0.05},
        decision=(
            "rejected: validation ROC AUC 0.751, balanced accuracy 0.626, F1 0.417, training "
            "accuracy 0.72; in this HED scale (scikit-image's, optical density / 13.8) the median "
            "haematoxylin of a patch is about 0.03, so a bias of up to 0.05 repaints it"
        ),
    ),
    dict(
        name="hed_jitter_0.005",
        change="stain augmentation: HED jitter 0.005, a tenth of Tellez et al.'s figure",
        overrides={"preprocess.hed_jitter": 0.005},
        decision=(
            "rejected: trains normally again, but validation ROC AUC +0.002, balanced accuracy "
            "-0.010, F1 -0.014 (0.882 / 0.774 / 0.691)"
        ),
    ),
    dict(
        name="size_50",
        change="native 50 px instead of 96 px",
        overrides={"preprocess.image_size": 50},
        decision=(
            "rejected: validation ROC AUC -0.041, balanced accuracy -0.039, F1 -0.060 (0.839 / "
            "0.745 / 0.645), though it trains 2.5x as many images/s"
        ),
    ),
    dict(
        name="batch_64",
        change="batch 64 (4x fewer steps), precise BN and TTA kept",
        overrides={"global_batch_size": 64},
        decision=(
            "rejected: validation ROC AUC -0.005, balanced accuracy -0.012, F1 -0.018 (0.875 / "
            "0.772 / 0.687) for 1.2x the training images/s"
        ),
    ),
    dict(
        name="paper_keras_evaluation",
        change="batch 64, moving-average BatchNorm and one view: the paper as Keras runs it",
        overrides={"global_batch_size": 64, "bn_recalibration_batches": 0, "eval_tta": False},
        decision=(
            "rejected, the project's defaults kept: validation ROC AUC -0.031, balanced accuracy "
            "-0.043, F1 -0.063 (0.849 / 0.741 / 0.642); against batch_64 (the same steps) the "
            "moving averages and the single view alone cost 0.026 ROC AUC"
        ),
    ),
)
