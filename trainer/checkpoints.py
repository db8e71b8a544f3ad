"""Orbax checkpoints of a training run: the last k, plus the best by validation balanced accuracy.

A checkpoint holds the whole `TrainState` (parameters, BatchNorm statistics, optimiser state,
dropout RNG streams, the running sums of the epoch's training metrics) and a JSON record of the
run so far (per-epoch history, data set description). Both are written with orbax's standard
(tensorstore) and JSON handlers: restoring runs no pickle. Orbax writes each checkpoint to a
temporary directory and renames it when complete, so a run killed at any moment leaves only
whole checkpoints behind; rerunning the command resumes from the newest.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

BEST_METRIC = "val_balanced_accuracy"


def _is_prng_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
    # Typed PRNG keys (the dropout streams of NNX modules) are stored as their raw uint32 data.
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_prng_key(x) else x, tree)


def _abstract_keys_to_data(tree):
    def convert(x):
        if not _is_prng_key(x):
            return x
        data = jax.eval_shape(jax.random.key_data, x)
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(convert, tree)


def _key_impl(key) -> jax.random.PRNGImpl:
    """The PRNG implementation of a concrete or abstract (ShapeDtypeStruct) key."""
    impls = []
    jax.eval_shape(lambda k: impls.append(jax.random.key_impl(k)), key)
    return impls[0]


def _data_to_keys(restored, like):
    return jax.tree.map(
        lambda r, t: jax.random.wrap_key_data(r, impl=_key_impl(t)) if _is_prng_key(t) else r,
        restored,
        like,
    )


class Checkpointer:
    """`CheckpointManager` keeping the latest `keep` checkpoints and the best by `BEST_METRIC`."""

    def __init__(self, directory: pathlib.Path, *, keep: int = 3, read_only: bool = False):
        policy = preservation_policy.AnyPreservationPolicy(
            [
                preservation_policy.LatestN(n=keep),
                preservation_policy.BestN(
                    get_metric_fn=lambda metrics: metrics[BEST_METRIC],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=lambda metrics: metrics[BEST_METRIC],
            best_mode="max",
            keep_checkpoints_without_metrics=True,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        )
        self.directory = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def save(
        self,
        step: int,
        state: Any,
        meta: Mapping,
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_keys_to_data(state)),
                meta=ocp.args.JsonSave(dict(meta)),
            ),
            metrics=dict(metrics) if metrics is not None else None,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores the state onto the shardings of `abstract_state` (ShapeDtypeStructs)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract_keys_to_data(abstract_state)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return _data_to_keys(restored["state"], abstract_state), dict(restored["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
