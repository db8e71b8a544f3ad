"""Where a run computes: one `data` mesh over every device of every process.

The batch is sharded over a 1-D `data` mesh and the state is replicated, so the same jitted code
runs on one CPU, eight GPUs or many hosts: XLA inserts the cross-device reductions (BatchNorm
statistics, gradients, metric sums) that the global-batch maths implies.

With several processes (`trainer.startup` connects them), `jax.devices()` lists the devices of
every process and the mesh spans them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


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
