"""Prints the training-loss trajectory of a few steps as JSON (run in a subprocess).

The device count is fixed when JAX starts, so the test runs this once per device count
(XLA_FLAGS=--xla_force_host_platform_device_count=N) and compares the trajectories.
"""

import json
import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from tests.test_train import tiny_trainer  # noqa: E402


def main(data_dir: str, learning_rate: float = 1e-4, num_steps: int = 6) -> None:
    state, step, batches = tiny_trainer(pathlib.Path(data_dir), learning_rate)
    losses = []
    for _, batch in zip(range(num_steps), batches):
        state = step(train.reset_epoch_metrics(state), batch)
        losses.append(float(state.epoch_metrics.compute()["loss"]))
    print(json.dumps({"devices": jax.device_count(), "losses": losses}))


if __name__ == "__main__":
    main(sys.argv[1], *map(float, sys.argv[2:3]))
