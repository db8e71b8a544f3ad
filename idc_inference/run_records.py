"""What a weights file records about the run that made it, and exporting it from a run.

    record = export_workdir("/tmp/idc_v1", "v1.safetensors")   # from a training run (orbax)

The record (the JSON beside the tensors, `idc_inference.weights`) says where the network came
from: the run's config and checkpoint step, the threshold tuned on validation and the TTA of its
evaluation, the patients of each split, its summary.json with machine paths cut, and the code
version that exported it. Only `export_workdir` reads an orbax checkpoint, through
`idc_inference.training_runs`.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import subprocess
from collections.abc import Mapping

import ml_collections
import numpy as np

from idc_inference.calibration import Calibration
from idc_inference.context_stage import ContextStage
from idc_inference.weights import WeightsError, network_tensors, tensors_path, write_weights
from input_pipeline import KAGGLE_PATCH_MPP, windows
from input_pipeline.patches import PATCH_SIZE

PACKAGE = "mobilenets-idc"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- code version


def code_version() -> dict:
    """The package version, and the git commit when the code runs from a clone."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = _version_from_pyproject()
    commit = None
    if (REPO_ROOT / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            commit = out.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"package": PACKAGE, "version": version, "git_commit": commit}


def _version_from_pyproject() -> str | None:
    import tomllib  # noqa: PLC0415

    try:
        return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None


# ----------------------------------------------------------------------------- from a run


def without_machine_paths(value):
    """Absolute paths (of the machine that trained) reduced to their last component."""
    if isinstance(value, dict):
        return {k: without_machine_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_machine_paths(v) for v in value]
    if isinstance(value, str) and value.startswith("/") and len(value) > 1:
        return pathlib.PurePosixPath(value).name
    return value


def split_patients(config: ml_collections.ConfigDict) -> dict[str, list[int]]:
    """The patient ids of each split of the run, recomputed from its data config.

    The split is a pure function of the data set and the seed (`input_pipeline.splits`), so this
    is the run's split, provided the data set is the one the run saw (the caller checks counts).
    """
    import input_pipeline  # noqa: PLC0415

    dataset = input_pipeline.load_dataset(config.data)
    return {
        name: sorted(int(p) for p in np.unique(getattr(dataset, name).patient))
        for name in ("train", "validation", "test")
    }


def export_workdir(
    workdir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    checkpoint: str = "latest",
    with_patients: bool = True,
    context_stage: ContextStage | None = None,
    calibration: tuple[Calibration, float] | None = None,
) -> dict:
    """Writes the inference weights of a checkpoint of a training run; returns the record.

    `context_stage`, fitted on the run's validation patients, goes into the record for
    map_slide.py --context. `calibration`: (the patch network's calibration, the threshold on
    its scale), both fitted on held-out patients (export_model.py); the threshold replaces the
    run's own.

    The threshold is the one tuned on validation at that checkpoint (summary.json's for the final
    one), the TTA setting the run's `eval_tta`. With `with_patients` the split is recomputed from
    the run's data config to list its patients (the counts must equal summary.json's).
    """
    from idc_inference import training_runs  # noqa: PLC0415 (orbax)

    rundir = training_runs.run_directory(workdir)
    config, model, step = rundir.restore_model(checkpoint)
    summary = rundir.summary()
    threshold, threshold_source = run_threshold(rundir, step)
    if calibration is not None:
        threshold = calibration[1]
        threshold_source = (
            f"maximum balanced accuracy of the calibrated P(IDC) on {calibration[0].fitted_on}"
        )
    patients, patients_note = None, None
    if with_patients:
        patients = split_patients(config)
        counts = (summary.get("data_info") or {}).get("counts")
        if counts:
            for name, ids in patients.items():
                if counts[name]["patients"] != len(ids):
                    raise WeightsError(
                        f"the {name} split recomputed from {workdir}'s data config has "
                        f"{len(ids)} patients, summary.json says {counts[name]['patients']}: "
                        "is the data set the one the run trained on?"
                    )
            patients_note = "recomputed from the run's data config; counts equal summary.json's"
    config_dict = without_machine_paths(config.to_dict())
    record = {
        "name": tensors_path(output).stem,
        "model": config.model.name,
        "alpha": config.model.alpha,
        "image_size": config.preprocess.image_size,
        "input": input_record(config),
        "step": step,
        "checkpoint": checkpoint,
        "threshold": {"value": threshold, "source": threshold_source},
        "tta": bool(config.get("eval_tta", False)),
        "trained_on": trained_on(summary),
        "source_run": pathlib.Path(workdir).name,
        "config": config_dict,
        "patients": patients,
        "patients_note": patients_note,
        "summary": without_machine_paths(summary) if summary else None,
        "context_stage": None if context_stage is None else context_stage.to_record(),
        "calibration": None if calibration is None else calibration[0].to_record(),
        "exported_by": code_version(),
    }
    return write_weights(output, network_tensors(model), record)


def input_record(config: ml_collections.ConfigDict) -> dict:
    """What the network takes: uint8 RGB NHWC at the Kaggle scale, a patch or a window of them."""
    window = windows.window_size(config)
    size = PATCH_SIZE * window
    seen = (
        "one patch"
        if window == 1
        else f"a window of {window} x {window} patches centred on the patch judged, white where "
        "there is no tissue or slide"
    )
    return {
        "patch_size": PATCH_SIZE,
        "window": window,
        "size": size,
        "layout": "NHWC",
        "channels": "RGB",
        "dtype": "uint8",
        "scale": f"the Kaggle IDC patches': about {KAGGLE_PATCH_MPP} micrometres per pixel; "
        f"{size}x{size} pixels, {seen}: {int(size * KAGGLE_PATCH_MPP)} x "
        f"{int(size * KAGGLE_PATCH_MPP)} micrometres (MODEL_CARD.md)",
    }


def run_threshold(rundir, step: int) -> tuple[float, str]:
    """(threshold, where it comes from): tuned on validation at `step`, else 0.5."""
    try:
        threshold = rundir.validation_threshold(step)
    except (FileNotFoundError, ValueError):
        return 0.5, f"0.5: no validation threshold was recorded for step {step}"
    return float(threshold), (
        f"tuned on the validation patients at step {step} (maximum balanced accuracy)"
    )


DATASET_NAMES = {
    "kaggle_idc": "the Kaggle breast histopathology (IDC) set",
    "idc_sample": "the repository's sample of it",
}


def trained_on(summary: Mapping) -> str:
    """One line: the data and split a run trained on, from its summary.json."""
    info = summary.get("data_info") or {}
    counts = info.get("counts")
    if not counts:
        return "unknown data (the run has not finished)"
    train, val, test = (counts[k] for k in ("train", "validation", "test"))
    name = DATASET_NAMES.get(info.get("name"), info.get("name"))
    return (
        f"{train['patients']} patients, {train['patches']:,} patches of {name}; validated on "
        f"{val['patients']} and tested on {test['patients']} other patients "
        f"({info.get('split_protocol')} split, seed {info.get('split_seed')})"
    )
