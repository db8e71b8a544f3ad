"""The numbers of a few training steps on several device layouts (run as a subprocess).

    python tests/sharding_probe.py DATA_DIR OUT.npz
        One process. With XLA_FLAGS=--xla_force_host_platform_device_count=8 it computes on
        meshes of 1, 2 and 8 of its devices, and on one device again with the rows of every batch
        permuted (twice): the null, the same mathematics with the float sums in another order.
    python tests/sharding_probe.py DATA_DIR OUT.npz COORDINATOR NUM_PROCESSES PROCESS_ID
        One of several processes (jax.distributed, one CPU device each); every process feeds
        its own rows of each global batch, process 0 writes the numbers.

For each layout: the forward loss and the gradients of the first batch, the parameter update of
one Adam step from the initial state, and the losses of `NUM_STEPS` steps. tests/test_sharding.py
compares them. The device count is fixed when JAX starts, hence a subprocess.
"""

import pathlib
import sys

import jax
import numpy as np
from jax.sharding import Mesh

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import distributed  # noqa: E402
import input_pipeline  # noqa: E402
import train  # noqa: E402
from tests.test_train import tiny_config  # noqa: E402

NUM_STEPS = 6
BATCH_SIZE = 16
# Dropout draws a mask per row, so permuting the rows would change which examples it drops,
# which is not a change of summation order: the probe trains without it.
PROBE_OVERRIDES = dict(learning_rate=1e-4)


def probe_config(data_dir: str):
    config = tiny_config(pathlib.Path(data_dir), **PROBE_OVERRIDES)
    config.unlock()
    config.model.dropout_rate = 0.0
    config.lock()
    return config


def global_batches(config) -> list[dict[str, np.ndarray]]:
    dataset = input_pipeline.load_dataset(config.data)
    batches = input_pipeline.iterate_batches(
        dataset.train,
        global_batch_size=BATCH_SIZE,
        seed=0,
        epoch=0,
        shuffle=True,
        drop_remainder=True,
    )
    return [{k: b[k] for k in train.TRAIN_BATCH_KEYS} for _, b in zip(range(NUM_STEPS), batches)]


def flat(tree) -> np.ndarray:
    leaves = jax.tree.leaves(train.replicated_to_host(tree))
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves])


def run_layout(config, sharding: train.Sharding, batches, rows_of_this_process) -> dict:
    """The numbers of one layout; `rows_of_this_process` picks this process's rows of a batch."""
    tx = train.create_optimizer(config, steps_per_epoch=1)
    state, train_graph, eval_graph = train.create_train_state(config, tx, sharding)
    loss_options = dict(
        graphdef=train_graph,
        preprocess_config=config.preprocess,
        label_smoothing=config.label_smoothing,
        weights_per_class=np.ones(2, np.float32),
        augment_seed=config.seed,
    )
    jit_loss_and_gradients = jax.jit(
        lambda state, batch: train.loss_and_gradients(state, batch, **loss_options)[:2],
        in_shardings=(sharding.replicated, sharding.batch),
        out_shardings=sharding.replicated,
    )
    step, _ = train.compile_steps(
        config,
        train_graph=train_graph,
        eval_graph=eval_graph,
        tx=tx,
        weights_per_class=np.ones(2, np.float32),
        sharding=sharding,
    )
    device_batches = [
        sharding.put_batch({k: rows_of_this_process(v) for k, v in b.items()}) for b in batches
    ]
    loss, grads = jit_loss_and_gradients(state, device_batches[0])
    initial_params = flat(state.params)
    losses = []
    for i, batch in enumerate(device_batches):
        state = step(train.reset_epoch_metrics(state), batch)
        losses.append(float(train.epoch_metrics_on_host(state)["loss"]))
        if i == 0:
            update = flat(state.params) - initial_params
    return dict(loss=float(loss), gradients=flat(grads), update=update, losses=np.array(losses))


def permuted(batches, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for batch in batches:
        order = rng.permutation(BATCH_SIZE)
        out.append({k: v[order] for k, v in batch.items()})
    return out


def sub_mesh(num_devices: int) -> train.Sharding:
    devices = np.array(jax.devices()[:num_devices])
    return train.Sharding(Mesh(devices, ("data",), axis_types=(jax.sharding.AxisType.Auto,)))


def main(data_dir: str, output: str, *process_settings: str) -> None:
    config = probe_config(data_dir)
    results = {}
    if process_settings:
        coordinator, num_processes, process_id = process_settings
        distributed.initialize(
            _distributed_settings(config, coordinator, int(num_processes), int(process_id))
        )
        batches = global_batches(config)
        share = BATCH_SIZE // jax.process_count()
        start = jax.process_index() * share
        layout = f"{jax.process_count()}_processes"
        results[layout] = run_layout(
            config,
            train.Sharding.over_all_devices(),
            batches,
            lambda rows: rows[start : start + share],
        )
    else:
        batches = global_batches(config)
        whole = lambda rows: rows
        results["1_device"] = run_layout(config, sub_mesh(1), batches, whole)
        for seed in (1, 2):
            results[f"null_{seed}"] = run_layout(
                config, sub_mesh(1), permuted(batches, seed), whole
            )
        for count in (2, 8):
            if jax.device_count() >= count:
                results[f"{count}_devices"] = run_layout(config, sub_mesh(count), batches, whole)
    if jax.process_index() == 0:
        np.savez(
            output,
            **{
                f"{layout}/{key}": value
                for layout, r in results.items()
                for key, value in r.items()
            },
        )


def _distributed_settings(config, coordinator: str, num_processes: int, process_id: int):
    settings = config.distributed.copy_and_resolve_references()
    settings.coordinator_address = coordinator
    settings.num_processes = num_processes
    settings.process_id = process_id
    return settings


if __name__ == "__main__":
    main(*sys.argv[1:])
