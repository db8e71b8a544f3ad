"""A training program's start-up, before JAX's first operation: processes and host memory.

Multi-process start-up goes through JAX's own runtime, `jax.distributed`: one process per host
(or per GPU) runs the same program, `initialize` connects them through a coordinator, after which
`jax.devices()` lists the devices of every process (`input_pipeline.sharding` builds the mesh
over them).
With no explicit settings it reads the cluster environment (SLURM, Open MPI, Kubernetes, Cloud
TPU). A single-process CPU run gets the host-memory settings of the CPU path instead.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging

from mobilenets.cpu import host_memory


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
