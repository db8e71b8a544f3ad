"""A config checked before a run spends anything on it: values, and what a resume may change.

`check(config)` refuses values no run can use (an unknown model or split name, a batch of 0),
naming the choices. `check_resume(stored, config)` compares the config of a run being resumed
with the one its workdir recorded (config.json): the keys of `MAY_CHANGE_ON_RESUME` may differ
(how the run is watched, saved, laid out on devices, or how long it goes on); any other
difference (model, preprocessing, data, split, optimiser, seed, evaluation recipe) would restore
a checkpoint into another run, so it is refused with the keys that differ. Both raise
`cli.UserError`: one line, exit status 2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import ml_collections

from trainer.cli import UserError

# The keys a resumed run may change, and why that is safe. A key ending in "." covers every key
# under it. Everything else is part of what the run computes.
MAY_CHANGE_ON_RESUME = {
    "num_epochs": "train longer or stop sooner (fixed under a schedule that depends on it)",
    "log_every_steps": "how often scalars are logged",
    "checkpoint_every_steps": "how often mid-epoch checkpoints are taken",
    "keep_checkpoints": "how many checkpoints are kept",
    "progress_bar": "the console",
    "eval_batch_size": "evaluation's batch: the same metrics up to the order of float sums",
    "eval_bootstrap_resamples": "summary.json's intervals, computed at the end",
    "keep_scratch_memory_mapped": "a host-memory setting of the CPU path",
    "model.implementation": "the same network computed by another implementation",
    "data.data_dir": "where the prepared data are (the splits are compared with the checkpoint's)",
    "data.manual_dir": "where the download is (the splits are compared with the checkpoint's)",
    "distributed.": "how many processes run it (the trainer resumes on any layout)",
}
# Learning-rate schedules whose shape depends on num_epochs: under them num_epochs is fixed.
SCHEDULES_OVER_THE_RUN = ("warmup_cosine",)

CHOICES = {
    "data.dataset": ("auto", "kaggle_idc", "idc_sample"),
    "data.split": ("patient", "stratified", "leaky", "published", "random_patch"),
    "data.window": (1, 3, 5, 7),
    "schedule": ("constant", "warmup_cosine"),
    "class_weights": ("none", "balanced"),
    "compute_dtype": ("auto", "float32", "bfloat16", "float16", "float64"),
    "preprocess.resize_method": (
        "nearest",
        "linear",
        "bilinear",
        "trilinear",
        "cubic",
        "bicubic",
        "tricubic",
        "lanczos3",
        "lanczos5",
    ),
}
AT_LEAST_ONE = (
    "global_batch_size",
    "eval_batch_size",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "preprocess.image_size",
)
NOT_NEGATIVE = (
    "num_epochs",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "bn_recalibration_batches",
    "eval_bootstrap_resamples",
    "preprocess.hsv_jitter",
    "preprocess.hed_jitter",
    "preprocess.hed_jitter_od",
)


def _get(config, key: str):
    for part in key.split("."):
        if not hasattr(config, "items") or part not in config:
            return None
        config = config[part]
    return config


def flat(config: Mapping, prefix: str = "") -> dict:
    """{dotted key: value} of the leaves of a (Config)dict."""
    items = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def check(config: ml_collections.ConfigDict) -> None:
    """Refuses values no run can use, all at once, with the choices or bounds."""
    import mobilenets  # noqa: PLC0415 (the networks' registry)

    choices = {
        "model.name": tuple(mobilenets.ARCHITECTURES),
        "model.implementation": tuple(mobilenets.IMPLEMENTATION_CHOICES),
        **CHOICES,
    }
    problems = []
    for key, allowed in choices.items():
        value = _get(config, key)
        if value is not None and value not in allowed:
            problems.append(f"--config.{key}={value!r}: choose one of {', '.join(allowed)}")
    for key in AT_LEAST_ONE:
        value = _get(config, key)
        if value is not None and value < 1:
            problems.append(f"--config.{key}={value}: must be at least 1")
    for key in NOT_NEGATIVE:
        value = _get(config, key)
        if value is not None and value < 0:
            problems.append(f"--config.{key}={value}: must not be negative")
    for key in ("learning_rate", "model.alpha"):
        value = _get(config, key)
        if value is not None and not value > 0:
            problems.append(f"--config.{key}={value}: must be positive")
    if _get(config, "model.name") == "resnet50" and _get(config, "model.alpha") != 1.0:
        problems.append(
            f"--config.model.alpha={_get(config, 'model.alpha')}: ResNet-50 has no width "
            "multiplier, alpha must be 1.0"
        )
    if _get(config, "preprocess.hed_jitter") and _get(config, "preprocess.hed_jitter_od"):
        problems.append(
            "--config.preprocess.hed_jitter and hed_jitter_od: set one (the same jitter, with its "
            "shift in two units)"
        )
    data = config.get("data")
    if data is not None:
        held_out = data.get("validation_fraction", 0.0) + data.get("test_fraction", 0.0)
        if not 0 < held_out < 1:
            problems.append(
                "--config.data.validation_fraction + test_fraction must be between 0 and 1, "
                f"not {held_out:g}"
            )
        test_patients = data.get("test_patients", "")
        if test_patients.strip():
            if data.get("split") != "patient":
                problems.append(
                    f"--config.data.test_patients needs --config.data.split=patient, not "
                    f"{data.get('split')!r}"
                )
            if not all(word.isdigit() for word in test_patients.replace(",", " ").split()):
                problems.append(
                    f"--config.data.test_patients={test_patients!r}: patient ids separated by "
                    "commas"
                )
    if problems:
        raise UserError("; ".join(problems))


def may_change_on_resume(key: str, config: ml_collections.ConfigDict) -> bool:
    if key == "num_epochs" and config.get("schedule") in SCHEDULES_OVER_THE_RUN:
        return False
    return any(
        key == allowed or (allowed.endswith(".") and key.startswith(allowed))
        for allowed in MAY_CHANGE_ON_RESUME
    )


def resume_changes(
    stored: Mapping, config: ml_collections.ConfigDict
) -> tuple[list[str], list[str]]:
    """(changes refused, changes allowed), each 'key: old -> new', between a run's recorded
    config and the one it is resumed with. Keys the record lacks (added to the code since) are
    not compared."""
    current = flat(json.loads(json.dumps(config.to_dict())))  # as config.json holds it
    recorded = flat(stored)
    refused, allowed = [], []
    for key, value in current.items():
        if key not in recorded or recorded[key] == value:
            continue
        change = f"{key}: {recorded[key]!r} -> {value!r}"
        (allowed if may_change_on_resume(key, config) else refused).append(change)
    return refused, allowed


def check_resume(workdir: str, stored: Mapping, config: ml_collections.ConfigDict) -> list[str]:
    """Refuses to resume a run with a config that changes what it computes; returns the allowed
    changes (to be logged)."""
    refused, allowed = resume_changes(stored, config)
    if refused:
        keys = ", ".join(k + "*" if k.endswith(".") else k for k in sorted(MAY_CHANGE_ON_RESUME))
        raise UserError(
            f"{workdir} holds a run with another config ({'; '.join(refused)}): resuming it "
            "would mix two runs. Use a new --workdir, or the run's values (its config.json).\n"
            f"Only these may change on resume: {keys} (trainer/config_checks.py says why)."
        )
    return allowed
