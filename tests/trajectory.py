"""Prints the training-loss trajectory of a few steps as JSON (run in a subprocess).

The device count is fixed when JAX starts, so the test runs this once per device count
(XLA_FLAGS=--xla_force_host_platform_device_count=N) and compares the trajectories.
"""

import json
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import input_pipeline  # noqa: E402
import train  # noqa: E402
from tests.test_train import tiny_config  # noqa: E402


def main(data_dir: str, learning_rate: float = 1e-4, num_steps: int = 6) -> None:
    config = tiny_config(pathlib.Path(data_dir), learning_rate=learning_rate)
    dataset = input_pipeline.load_dataset(config.data)
    tx = train.create_optimizer(config, steps_per_epoch=1)
    sharding = train.Sharding.over_all_devices()
    state, train_graph, eval_graph = train.create_train_state(config, tx, sharding)
    step, _ = train.compile_steps(
        config,
        train_graph=train_graph,
        eval_graph=eval_graph,
        tx=tx,
        weights_per_class=np.ones(2, np.float32),
        sharding=sharding,
    )
    losses = []
    batches = input_pipeline.iterate_batches(
        dataset.train, global_batch_size=16, seed=0, epoch=0, shuffle=True, drop_remainder=True
    )
    for _, batch in zip(range(num_steps), batches):
        state = train.reset_epoch_metrics(state)
        state = step(state, sharding.put_batch({k: batch[k] for k in train.TRAIN_BATCH_KEYS}))
        losses.append(float(state.epoch_metrics.compute()["loss"]))
    print(json.dumps({"devices": jax.device_count(), "losses": losses}))


if __name__ == "__main__":
    main(sys.argv[1], *map(float, sys.argv[2:3]))
