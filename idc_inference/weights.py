"""Inference weights: a trained network's parameters and BatchNorm statistics, without orbax.

    record = run_records.export_workdir("/tmp/idc_v1", "v1.safetensors")   # from a run (orbax)
    weights = read_weights("v1.safetensors")                   # reads v1.safetensors + v1.json
    model = weights.network()                                  # the eval-mode NNX network

A weights file is two files side by side:

  <name>.safetensors  one float32 tensor per variable: `params/<module path>` (the trained
                      parameters) and `batch_stats/<module path>` (BatchNorm's running mean and
                      variance), e.g. `params/blocks/0/depthwise/conv/kernel`. No optimiser state,
                      no dropout RNG streams, no training metrics: 12.9 MB for MobileNetV1.
  <name>.json         the record: format and version, the run's resolved config, checkpoint step,
                      the threshold tuned on validation and the evaluation's TTA setting, the
                      SHA-256 of the .safetensors, the patients of each split, the run's
                      summary.json (test metrics with patient-bootstrap intervals, calibration),
                      and the code version that exported it.

Why safetensors (https://github.com/huggingface/safetensors): a JSON header of names, dtypes,
shapes and byte offsets followed by raw little-endian buffers, so reading one executes no code
from the file (unlike pickle, `torch.load` or `np.load(allow_pickle=True)`), checks that every
offset lies inside the file (a truncated file is refused), needs only the small `safetensors`
package and numpy (no orbax, TensorFlow or JAX), and is read by PyTorch, Rust, JavaScript and C++
alike. The JSON sidecar keeps the record readable and diffable in git. The SHA-256 in it catches
what the format alone cannot: a byte changed inside a tensor.

Every way a file can be unreadable (missing, truncated, corrupted, another format, a network that
does not match the config) raises `WeightsError`, one line naming the file.

This module imports neither `trainer` nor orbax: the ONNX export runs in a venv of its own
(requirements-export.txt), with another orbax version. Only `idc_inference.training_runs`
(reading a training run's orbax checkpoint) reaches `trainer`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from idc_inference.errors import WeightsError

FORMAT = "idc-inference-weights"
FORMAT_VERSION = 1
NUM_CLASSES = 2  # negative, IDC (trainer.state.NUM_CLASSES)
COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


# ----------------------------------------------------------------------------- the network


def network_kwargs(
    config: ml_collections.ConfigDict, *, implementation: str | None = None, dtype=None
) -> dict:
    """`mobilenets.create`'s arguments for the config's network, as training builds them
    (`mobilenets.configured`), without its RNG streams."""
    from mobilenets import (
        configured,  # noqa: PLC0415 (registers the CPU path; jax configured first)
    )

    return configured.network_kwargs(
        config, num_classes=NUM_CLASSES, implementation=implementation, dtype=dtype
    )


def abstract_network(config: ml_collections.ConfigDict, **kwargs) -> nnx.Module:
    """The network's structure, shapes and dtypes only (nothing is initialised or compiled)."""
    import mobilenets  # noqa: PLC0415 (registers the CPU path; jax must be configured first)

    arguments = network_kwargs(config, **kwargs)
    return nnx.eval_shape(
        lambda: mobilenets.create(
            config.model.name, **arguments, rngs=nnx.Rngs(params=0, dropout=1)
        )
    )


def tensor_names(state: nnx.State, collection: str) -> dict[str, nnx.Variable]:
    """`<collection>/<module path>` -> variable, for every variable of an NNX state."""
    return {
        "/".join([collection, *map(str, path)]): variable
        for path, variable in nnx.to_flat_state(state)
    }


def _concrete(leaf):
    """A placeholder for a dropout RNG stream: unused in eval mode, but the graph holds one."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key(0)
    return jnp.zeros(leaf.shape, leaf.dtype)


def build_network(
    config: ml_collections.ConfigDict,
    tensors: Mapping[str, np.ndarray],
    *,
    source: str = "the weights",
    implementation: str | None = None,
    dtype=None,
) -> nnx.Module:
    """The config's network in eval mode, its parameters and statistics taken from `tensors`.

    Every variable of the network must have a tensor of its shape, and every tensor a variable;
    parameters are cast to the network's parameter dtype (float32 unless the run computed in
    float64). `implementation` ("reference" | "cpu") and `dtype` override the config's (the
    ONNX export needs the reference layers in float32).
    """
    abstract = abstract_network(config, implementation=implementation, dtype=dtype)
    graphdef, params, batch_stats, rest = nnx.split(abstract, nnx.Param, nnx.BatchStat, ...)
    expected = {**tensor_names(params, "params"), **tensor_names(batch_stats, "batch_stats")}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise WeightsError(
            f"{source} do not fit a {config.model.name} of alpha {config.model.alpha}: "
            f"{len(missing)} tensors missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]})"
        )
    filled = {}
    for collection, state in (("params", params), ("batch_stats", batch_stats)):
        items = []
        for path, variable in nnx.to_flat_state(state):
            name = "/".join([collection, *map(str, path)])
            spec = variable.get_value()
            array = np.asarray(tensors[name])
            if array.shape != tuple(spec.shape):
                raise WeightsError(
                    f"{source}: tensor {name} has shape {array.shape}, the network expects "
                    f"{tuple(spec.shape)}"
                )
            items.append((path, variable.replace(jnp.asarray(array, spec.dtype))))
        filled[collection] = nnx.from_flat_state(items)
    model = nnx.merge(
        graphdef, filled["params"], filled["batch_stats"], jax.tree.map(_concrete, rest)
    )
    model.eval()
    return model


def network_tensors(model: nnx.Module) -> dict[str, np.ndarray]:
    """The parameters and BatchNorm statistics of an NNX network, by tensor name, on the host."""
    _, params, batch_stats, _ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    return {
        name: np.asarray(jax.device_get(variable.get_value()))
        for collection, state in (("params", params), ("batch_stats", batch_stats))
        for name, variable in tensor_names(state, collection).items()
    }


# ----------------------------------------------------------------------------- the files


def sidecar_path(path: str | os.PathLike) -> pathlib.Path:
    """The JSON record beside a .safetensors file."""
    return pathlib.Path(path).with_suffix(".json")


def tensors_path(path: str | os.PathLike) -> pathlib.Path:
    """The .safetensors file of a weights path given as either of its two files."""
    return pathlib.Path(path).with_suffix(".safetensors")


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(functools.partial(f.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class InferenceWeights:
    """A weights file, read and checked: its record (the JSON) and its tensors."""

    path: pathlib.Path  # the .safetensors file
    record: dict
    tensors: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def config(self) -> ml_collections.ConfigDict:
        config = ml_collections.ConfigDict(self.record["config"])
        config.lock()
        return config

    @property
    def step(self) -> int:
        return int(self.record["step"])

    @property
    def threshold(self) -> float:
        return float(self.record["threshold"]["value"])

    @property
    def tta(self) -> bool:
        return bool(self.record["tta"])

    def network(self, **kwargs) -> nnx.Module:
        """The eval-mode network (`build_network`'s keyword arguments)."""
        return build_network(self.config, self.tensors, source=str(self.path), **kwargs)


def read_weights(path: str | os.PathLike) -> InferenceWeights:
    """Reads and checks a weights file (either of its two files may be named).

    No pickle, no code from the file: safetensors parses a JSON header and copies buffers.
    """
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.numpy import load_file  # noqa: PLC0415

    tensors_file = tensors_path(path)
    record_file = sidecar_path(tensors_file)
    for file in (tensors_file, record_file):
        if not file.is_file():
            raise WeightsError(
                f"{file} not found: an inference-weights file is a .safetensors with its .json "
                "beside it (export_model.py writes both)"
            )
    try:
        record = json.loads(record_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{record_file} is not a readable weights record: {error}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise WeightsError(f"{record_file} is not an {FORMAT} record (no 'format': '{FORMAT}')")
    if record.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{record_file} has format version {record.get('format_version')}; this code reads "
            f"version {FORMAT_VERSION}: upgrade the package or re-export the weights"
        )
    expected_hash = record.get("tensors_sha256")
    if expected_hash is not None and sha256(tensors_file) != expected_hash:
        raise WeightsError(
            f"{tensors_file} is corrupted or was changed: its SHA-256 differs from the one in "
            f"{record_file.name}; download or export it again"
        )
    try:
        tensors = load_file(tensors_file)
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(
            f"{tensors_file} is truncated or not a safetensors file ({error}); download or export "
            "it again"
        ) from None
    return InferenceWeights(tensors_file, record, tensors)


def write_weights(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], record: Mapping[str, Any]
) -> dict:
    """Writes `<path>.safetensors` and its `.json`; returns the record as written."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    tensors_file = tensors_path(path)
    tensors_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: np.ascontiguousarray(array) for name, array in sorted(tensors.items())},
        str(tensors_file),
        metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)},
    )
    umask = os.umask(0)
    os.umask(umask)
    tensors_file.chmod(0o666 & ~umask)  # safetensors creates the file readable by its owner only
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **record,
        "tensors_sha256": sha256(tensors_file),
    }
    sidecar_path(tensors_file).write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    return record
