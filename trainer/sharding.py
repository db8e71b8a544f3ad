"""Where a run computes: one `data` mesh over every device of every process.

The batch is sharded over a 1-D `data` mesh and the state is replicated, so the same jitted code
runs on one CPU, eight GPUs or many hosts: XLA inserts the cross-device reductions (BatchNorm
statistics, gradients, metric sums) that the global-batch maths implies.

Multi-process start-up goes through JAX's own runtime, `jax.distributed`: one process per host
(or per GPU) runs the same program, `initialize` connects them through a coordinator, after which
`jax.devices()` lists the devices of every process. With no explicit settings it reads the cluster
environment (SLURM, Open MPI, Kubernetes, Cloud TPU).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mobilenets.cpu import host_memory


@dataclasses.dataclass(frozen=True)
class Sharding:
    """A 1-D `data` mesh: the batch is split along it, everything else replicated."""

    mesh: Mesh

    @classmethod
    def over_devices(cls, devices: Sequence[jax.Device]) -> Sharding:
        # Auto axes: shardings are given at the jit boundary and XLA propagates them inside.
        mesh = Mesh(np.asarray(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        return cls(mesh)

    @classmethod
    def over_all_devices(cls) -> Sharding:
        return cls.over_devices(jax.devices())

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def put_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global arrays assembled from each process's own rows of the batch."""
        return {
            key: jax.make_array_from_process_local_data(self.batch, value)
            for key, value in local_batch.items()
        }

    def check_batch_size(self, global_batch_size: int, name: str) -> None:
        devices = self.mesh.size
        if global_batch_size % devices:
            raise ValueError(
                f"{name}={global_batch_size} must be divisible by the number of devices "
                f"({devices}) so that every device gets the same share."
            )


def to_host(array: jax.Array) -> np.ndarray:
    """The whole (global) array of a batch-sharded result on every host."""
    if array.is_fully_addressable:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def replicated_to_host(tree):
    """NumPy copies of replicated arrays: every process holds them whole, no communication."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def start(config: ml_collections.ConfigDict) -> bool:
    """A training program's start-up, before JAX's first operation; True for a multi-process run.

    Connects the processes of a multi-process run (`initialize`); a single-process run gets
    `host_memory`'s CPU settings instead when `config.keep_scratch_memory_mapped` (multi-process
    runs keep JAX's defaults: host_memory.py says why).
    """
    multi_process = initialize(config.distributed)
    if config.keep_scratch_memory_mapped and not multi_process:
        host_memory.keep_scratch_memory_mapped()
    return multi_process


_CLUSTER_ENVIRONMENT_VARIABLES = (
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
    "JAX_COORDINATOR_ADDRESS",
    "TPU_WORKER_HOSTNAMES",
)


def initialize(config: ml_collections.ConfigDict) -> bool:
    """Connects the processes of a multi-process run; returns whether it is one.

    An explicit `coordinator_address` in the config wins; otherwise a recognised cluster
    environment triggers auto-detection; otherwise this is a single-process run.
    """
    explicit = bool(config.coordinator_address)
    in_cluster = any(os.environ.get(name) for name in _CLUSTER_ENVIRONMENT_VARIABLES)
    if not (explicit or in_cluster):
        return False
    # Cross-process collectives of the CPU backend (CPU clusters, the tests); GPUs use NCCL.
    # Set before initialize: asking for the backend here would start it single-process.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if explicit:
        kwargs = dict(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
    jax.distributed.initialize(
        initialization_timeout=config.initialization_timeout_s,
        heartbeat_timeout_seconds=config.heartbeat_timeout_s,
        **kwargs,
    )
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
