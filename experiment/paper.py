"""The paper's experiment and its extensions: which runs, where they live, how they are read.

"Study for Performance of MobileNetV1 and MobileNetV2 Based on Breast Cancer" trains MobileNetV1
and V2 from scratch (Adam 1e-4, 5 epochs, cross-entropy) on the Kaggle IDC patches, split at
random patch by patch, and reports train / validation accuracy (its Table 1: V1 0.849 / 0.857,
V2 0.819 / 0.743) and the accuracy curves of each model (its Figures 2 and 3).

`plan` lists the runs of an experiment, each a run directory of main.py's kind under the
experiment's workdir:
- paper: MobileNetV1 and V2 under the paper's random patch split and under the patient split,
  with the base config (configs/v1.py by default): `<model>_<split>`;
- comparison: further models (the paper's future work: MobileNetV3, ResNet-50) under the patient
  split: `<model>_patient`;
- seed: the paper's models under the patient split again with seeds 1 .. n-1:
  `<model>_patient_seed<k>`;
- best: a recipe with a config file of its own (configs/v1_best.py) under the patient split,
  with seeds 0 .. n-1: `best_seed<k>`;
- ablation: the candidates for the best recipe (configs/ablations.py), each the base config with
  a few keys changed, chosen on the validation patients: `ablation_<name>`.
`reproduce.py` trains what `plan` lists; `experiment/report.py` renders report.md from the runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from trainer.rundir import Run, RunDirectory

PAPER_MODELS = ("mobilenet_v1", "mobilenet_v2")
SPLITS = ("random_patch", "patient")  # the paper's protocol first
MODEL_TITLES = {
    "mobilenet_v1": "MobileNetV1",
    "mobilenet_v2": "MobileNetV2",
    "mobilenet_v3_small": "MobileNetV3-Small",
    "mobilenet_v3_large": "MobileNetV3-Large",
    "mobilenet_v3_small_minimalistic": "MobileNetV3-Small (minimalistic)",
    "mobilenet_v3_large_minimalistic": "MobileNetV3-Large (minimalistic)",
    "resnet50": "ResNet-50",
}
SPLIT_TITLES = {"random_patch": "random patch (paper)", "patient": "patient-level"}
# Table 1 of the paper (patch-level random split, 5 epochs).
PAPER_ACCURACY = {
    "mobilenet_v1": {"train": 0.849, "validation": 0.857},
    "mobilenet_v2": {"train": 0.819, "validation": 0.743},
}
PAPER_EPOCHS = 5
# What a run with a config file of its own takes from the experiment's base config: where the
# data are and how to run, not what to train.
RUNTIME_KEYS = (
    "data",
    "compute_dtype",
    "keep_scratch_memory_mapped",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "progress_bar",
    "distributed",
)


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of an experiment: its directory name, its group and what sets it apart."""

    name: str
    group: str  # "paper" | "comparison" | "seed" | "best" | "ablation"
    model: str = ""  # "" keeps the model of the config
    split: str = "patient"
    seed: int = 0
    config_file: str = ""  # "" is the experiment's base config
    overrides: tuple[tuple[str, Any], ...] = ()  # (dotted config key, value)
    change: str = ""  # an ablation: what it changes, in words
    decision: str = ""  # an ablation: what was decided on its validation figures

    @property
    def title(self) -> str:
        return MODEL_TITLES.get(self.model, self.model) if self.model else self.name


def plan(
    models: Sequence[str] = PAPER_MODELS,
    *,
    num_seeds: int = 1,
    best_config: str = "",
    ablations: Sequence[Mapping] = (),
) -> tuple[PlannedRun, ...]:
    """Every run of the experiment, in the order `reproduce.py` trains them."""
    runs = [
        PlannedRun(f"{model}_{split}", "paper", model, split)
        for model in PAPER_MODELS
        for split in SPLITS
    ]
    patient_models = list(dict.fromkeys([*PAPER_MODELS, *models]))
    runs += [
        PlannedRun(f"{model}_patient", "comparison", model)
        for model in patient_models
        if model not in PAPER_MODELS
    ]
    runs += [
        PlannedRun(f"{model}_patient_seed{seed}", "seed", model, seed=seed)
        for seed in range(1, num_seeds)
        for model in PAPER_MODELS
    ]
    if best_config:
        runs += [
            PlannedRun(f"best_seed{seed}", "best", seed=seed, config_file=best_config)
            for seed in range(num_seeds)
        ]
    runs += [
        PlannedRun(
            f"ablation_{ablation['name']}",
            "ablation",
            "mobilenet_v1",
            overrides=tuple(ablation["overrides"].items()),
            change=ablation["change"],
            decision=ablation.get("decision", ""),
        )
        for ablation in ablations
    ]
    return tuple(runs)


def load_config_file(path: str | pathlib.Path) -> ml_collections.ConfigDict:
    """`get_config()` of a config file such as configs/v1_best.py."""
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no config file at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def run_config(base: ml_collections.ConfigDict, run: PlannedRun) -> ml_collections.ConfigDict:
    """The config of one planned run, locked.

    The base config (or the run's config file, which takes the base's `RUNTIME_KEYS`), then the
    run's model, split, seed and overrides. The base config itself is not modified.
    """
    if run.config_file:
        config = load_config_file(run.config_file)
        config.unlock()
        for key in RUNTIME_KEYS:
            value = base[key]
            config[key] = (
                value.copy_and_resolve_references()
                if isinstance(value, ml_collections.ConfigDict)
                else value
            )
    else:
        config = base.copy_and_resolve_references()
        config.unlock()
    if run.model:
        config.model.name = run.model
    config.data.split = run.split
    config.seed = run.seed
    for key, value in run.overrides:
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        if leaf not in node:
            raise KeyError(f"{run.name}: the config has no key {key!r}")
        node[leaf] = value
    config.lock()
    return config


def run_directory(workdir: str | pathlib.Path, run: PlannedRun) -> pathlib.Path:
    return pathlib.Path(workdir) / run.name


def load_runs(workdir: str | pathlib.Path, planned: Sequence[PlannedRun]) -> dict[str, Run]:
    """The planned runs, finished, by name; an error names any that is missing or mislabelled."""
    runs, missing = {}, []
    for run in planned:
        directory = RunDirectory(run_directory(workdir, run))
        if not directory.finished():
            missing.append(directory.path)
            continue
        record = directory.read()
        if run.model and record.summary.get("model") != run.model:
            raise ValueError(
                f"{directory.summary_file} is a run of {record.summary.get('model')!r}, "
                f"not {run.model!r}"
            )
        if record.config.data.split != run.split:
            raise ValueError(
                f"{directory.path} was trained with the {record.config.data.split!r} split, "
                f"not {run.split!r}"
            )
        runs[run.name] = record
    if missing:
        names = ", ".join(str(d) for d in missing)
        raise FileNotFoundError(
            f"unfinished runs (no summary.json): {names}; run without --report_only to train them"
        )
    return runs
