"""Defaults shared by every config: the paper's recipe.

"Study for Performance of MobileNetV1 and MobileNetV2 Based on Breast Cancer" trained both networks
from scratch on the Kaggle IDC patches with Adam at 1e-4 for 5 epochs, softmax cross-entropy, and a
global-average-pooling + fully connected head on resized images. Everything here keeps that; the
optional improvements (schedule, weight decay, label smoothing, class weights, augmentation) are
off. `configs/v1.py` and `configs/v2.py` pick the network (`v3_small.py`, `v3_large.py` and
`resnet50.py` train newer and larger peers with the same recipe); override any key on the command
line, e.g. `--config.num_epochs=1`. A mistyped key is an error: the config is locked, and the
message names the closest key. Rerunning a workdir resumes it; a resume may change only how the
run is watched, saved and laid out (num_epochs, log_every_steps, checkpoint_every_steps,
keep_checkpoints, progress_bar, eval_batch_size, eval_bootstrap_resamples, the data's location,
model.implementation, distributed.*): `trainer/config_checks.py`, `MAY_CHANGE_ON_RESUME`, lists
them with the reason for each, and refuses any other change with the keys that differ.

Choices the paper leaves open, and why:
- image_size 96: the 50x50 patches are resized (bilinear) to 96x96, the smallest input size for
  which Keras ships MobileNets (resolution multiplier rho = 96/224). It leaves a 3x3 final feature
  map instead of 2x2 at 50 px, and costs 3.7x the multiply-adds of 50 px.
- global_batch_size 16: the paper does not say. Five epochs at 1e-4 are few Adam steps on a small
  set; batch 16 gives 4x the steps of 64 for the same images (split over all devices and
  processes of the run).
- bn_recalibration_batches 100 ("precise BN") and eval_tta True change no training step. Before
  each evaluation the BatchNorm statistics are recomputed on 100 training batches, because the
  moving averages Keras evaluates with still hold much of their initial value after a few hundred
  steps; evaluation averages P(IDC) over the 8 dihedral views of each patch.
  results/sample/README.md gives the figures that led to these three choices.
- data.dataset "auto": the real Kaggle set when it is prepared or its download sits in the manual
  directory, else the real sample shipped in data/idc_sample (the log and summary.json say which
  output).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict(
        dict(
            # A key of mobilenets.ARCHITECTURES: mobilenet_v1, mobilenet_v2, mobilenet_v3_small,
            # mobilenet_v3_large, mobilenet_v3_small_minimalistic,
            # mobilenet_v3_large_minimalistic, resnet50.
            name="mobilenet_v1",
            alpha=1.0,  # width multiplier (Howard et al. 2017); ResNet-50 takes only 1.0
            # None: the Keras applications' defaults (dropout V1 1e-3, V2 0, V3 0.2, ResNet 0;
            # BN momentum V1 0.99, V2 and V3 0.999, ResNet 0.99; epsilon 1e-3, ResNet 1.001e-5).
            dropout_rate=config_dict.placeholder(float),
            bn_momentum=config_dict.placeholder(float),
            bn_epsilon=config_dict.placeholder(float),
            # "auto": the CPU path (mobilenets/cpu) on the CPU backend, the reference elsewhere;
            # "reference" | "cpu" force one. Both compute the same network.
            implementation="auto",
        )
    )

    config.data = ml_collections.ConfigDict(
        dict(
            dataset="auto",  # "auto" | "kaggle_idc" (the Kaggle set) | "idc_sample" (data/)
            data_dir="",  # TFDS data_dir; "" = ~/tensorflow_datasets or $TFDS_DATA_DIR
            manual_dir="",  # the Kaggle download; "" = <data_dir>/downloads/manual
            # "patient" | "stratified" (patient, with whole slides and scattered patients dealt
            # apart; the frozen test of results/frozen_test) | "leaky" (stratified, with half of
            # each validation and test patient's patches moved into training: the leak measured
            # on the same patients) | "published" | "random_patch" (the paper's: leaks patients)
            split="patient",
            split_seed=0,
            validation_fraction=0.15,
            test_fraction=0.15,
            # Patient ids, e.g. "8863,8914": these patients are the test split (one fold of a
            # cross-validation over whole slides) and test_fraction is unused.
            test_patients="",
            # < 1: train on this stratified fraction of the training patients only (learning
            # curves); validation and test are unchanged.
            train_patients_fraction=1.0,
            balanced_sampling=False,
            # Patches a side of the input (odd): 1, each patch alone (the paper); 3, the patch
            # with its 8 grid neighbours, a 150x150 window of 600 um, label the centre's
            # (input_pipeline/windows.py; missing neighbours are white). preprocess.image_size is
            # then the size the window is resized to.
            window=1,
        )
    )

    config.preprocess = ml_collections.ConfigDict(
        dict(
            image_size=96,
            resize_method="bilinear",
            dihedral=False,  # the 8 flips x 90-degree rotations, training only
            hsv_jitter=0.0,
            # Stain jitter (Tellez et al. 2019): each stain scaled by U(1-s, 1+s) and shifted by
            # U(-s, s) optical density (-ln I/I0, the unit of their strengths: 0.05 "light").
            hed_jitter_od=0.0,
            # The same with the shift on scikit-image's HED scale (optical density / 13.8), where
            # 0.05 repaints a patch (results/real_subset's `hed_jitter` ablations); set one only.
            hed_jitter=0.0,
        )
    )

    # The paper's recipe.
    config.seed = 0
    config.num_epochs = 5
    config.global_batch_size = 16
    config.eval_batch_size = 256
    config.learning_rate = 1e-4
    # Optional, off by default.
    config.schedule = "constant"  # "constant" | "warmup_cosine"
    config.warmup_epochs = 0.0
    config.weight_decay = 0.0  # > 0 switches Adam to AdamW (decoupled decay)
    config.label_smoothing = 0.0
    config.class_weights = "none"  # "none" | "balanced" (inverse class frequency of train)
    # > 0: before each evaluation, recompute BatchNorm statistics on this many training batches
    # ("precise BN"); fixes the lag of the moving averages in short runs (trainer/evaluate.py).
    config.bn_recalibration_batches = 100
    # True: every evaluation (validation and test) averages P(IDC) over the 8 dihedral views of
    # each patch (test-time augmentation); training is unchanged.
    config.eval_tta = True
    # Resamples of the bootstrap over test patients behind summary.json's confidence intervals
    # (evaluation/uncertainty.py; patients, not patches, are the independent unit). A few seconds
    # at 2000; 0 turns the intervals off.
    config.eval_bootstrap_resamples = 2000

    # "auto": bfloat16 compute on GPU/TPU, float32 on CPU. Parameters stay float32 (float64 when
    # computing in float64, as the sharding tests do).
    config.compute_dtype = "auto"
    # CPU backend, Linux: synchronous dispatch + glibc settings that keep XLA's per-step scratch
    # buffer allocated instead of mapping it afresh each step (mobilenets/cpu/host_memory.py;
    # benchmarks/RESULTS.md has the gain). Single-process runs only. False: JAX's and glibc's
    # defaults.
    config.keep_scratch_memory_mapped = True

    config.log_every_steps = 20
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 3
    # True: a bar per epoch with images/s when stderr is a terminal; in a log file (or False) a
    # line `step i/n ...: steps/s, images/s, ETA` every log_every_steps steps, at most every 10 s.
    config.progress_bar = True

    # Multi-process runs (jax.distributed). Empty/-1: single process, or what the cluster
    # environment (SLURM, Open MPI, Kubernetes, Cloud TPU) tells jax.distributed.initialize.
    config.distributed = ml_collections.ConfigDict(
        dict(
            coordinator_address="",
            num_processes=-1,
            process_id=-1,
            initialization_timeout_s=300,
            heartbeat_timeout_s=60,
        )
    )
    return config


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks the config so that a mistyped override is an error, not a silent new key."""
    config.lock()
    return config


def data_config(**overrides) -> ml_collections.ConfigDict:
    """`get_config().data` with `overrides`: what `input_pipeline.load_dataset` takes."""
    config = get_config().data
    config.update(overrides)
    return config


def preprocess_config(**overrides) -> ml_collections.ConfigDict:
    """`get_config().preprocess` with `overrides`: what `input_pipeline.preprocess` takes."""
    config = get_config().preprocess
    config.update(overrides)
    return config
