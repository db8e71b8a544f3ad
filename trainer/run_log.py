"""What a training run tells the console as it starts: the data and why, the network, devices."""

from __future__ import annotations

import jax
from absl import logging

import input_pipeline
from trainer import state as state_lib
from trainer.rundir import RunDirectory


def dataset_description(dataset) -> dict:
    info = dataset.info.to_dict()
    return {
        "dataset": info["name"],
        "data_source": info["source"],
        "data_selection": info["selection"],
        "split": info["split_protocol"],
        "info": info,
    }


def log_data_banner(dataset) -> None:
    if dataset.info.name == "idc_sample":
        counts = dataset.info.counts
        patients = sum(part["patients"] for part in counts.values())
        logging.warning(
            "this trains on the real sample shipped in data/idc_sample (%d patients), not the "
            "Kaggle set (%s patches of %d patients): its figures are a quickstart's.\n"
            "README, 'Using the real Kaggle data', says how to train on the full set.",
            patients,
            f"{input_pipeline.KAGGLE_PATCHES:,}",
            input_pipeline.KAGGLE_PATIENTS,
        )
    for note in dataset.info.notes:
        logging.warning("data: %s", note)


def _devices() -> str:
    """'1 cpu device', '8 gpu devices (NVIDIA H100) in 2 processes'."""
    kinds = sorted({device.device_kind for device in jax.devices()})
    count = jax.device_count()
    text = f"{count} {jax.default_backend()} device{'s' if count > 1 else ''}"
    if kinds and kinds != ["cpu"]:
        text += f" ({', '.join(kinds)})"
    if jax.process_count() > 1:
        text += f" in {jax.process_count()} processes"
    return text


def log_run_start(config, rundir: RunDirectory, steps_per_epoch: int) -> None:
    """The network, its costs, the devices and the length of the run, in two lines."""
    profile = state_lib.model_profile(config)
    logging.info(
        "model: %s alpha=%s at %d px, %s parameters (%s), %.1f M multiply-adds per image; %s, %s",
        config.model.name,
        config.model.alpha,
        config.preprocess.image_size,
        f"{profile.params:,}",
        rundir.parameters_file.name,
        profile.macs / 1e6,
        _devices(),
        jax.numpy.dtype(state_lib.compute_dtype(config)).name,
    )
    logging.info(
        "training: %d epoch%s of %s steps of %d images; config.json and checkpoints/ in %s",
        config.num_epochs,
        "" if config.num_epochs == 1 else "s",
        f"{steps_per_epoch:,}",
        config.global_batch_size,
        rundir.path,
    )
