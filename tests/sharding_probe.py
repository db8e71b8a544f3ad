"""The numbers of a few training steps on several device layouts (run as a subprocess).

    python tests/sharding_probe.py DATA_DIR OUT.npz
        One process, with JAX_NUM_CPU_DEVICES=8: it computes on meshes of 1, 2 and 8 of its
        devices, and on one device again with the rows of every batch permuted (the null: the
        same mathematics with the float sums in another order).
    python tests/sharding_probe.py DATA_DIR OUT.npz COORDINATOR NUM_PROCESSES PROCESS_ID
        One of several processes (jax.distributed, one CPU device each); every process feeds
        its own rows of each global batch, process 0 writes the numbers.

Per layout, in float64 (JAX_ENABLE_X64=1): the forward loss and the gradients of the first
batch, the parameter update of one Adam step from the initial state, and the losses of
`NUM_STEPS` steps; in float32, the forward loss of the first batch. tests/test_sharding.py
compares them. The device count is fixed when JAX starts, hence a subprocess.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import input_pipeline  # noqa: E402
from input_pipeline.sharding import Sharding, replicated_to_host  # noqa: E402
from tests.test_train import tiny_config  # noqa: E402
from trainer import compiled, startup, steps  # noqa: E402
from trainer import state as state_lib  # noqa: E402

NUM_STEPS = 3
BATCH_SIZE = 16
NUM_NULLS = 2


def probe_config(data_dir: str, compute_dtype: str):
    # Dropout draws a mask per row, so permuting the rows would change which examples it
    # drops, which is not a change of summation order: the probe trains without it.
    config = tiny_config(pathlib.Path(data_dir), learning_rate=1e-4, compute_dtype=compute_dtype)
    config.unlock()
    config.model.dropout_rate = 0.0
    config.model.implementation = "reference"  # compiles fastest; test_cpu_path.py covers "cpu"
    config.lock()
    return config


def global_batches(config) -> list[dict[str, np.ndarray]]:
    dataset = input_pipeline.load_dataset(config.data)
    batches = input_pipeline.iterate_batches(
        dataset.train, global_batch_size=BATCH_SIZE, seed=0, epoch=0, shuffle=True
    )
    return [{k: b[k] for k in steps.BATCH_KEYS} for _, b in zip(range(NUM_STEPS), batches)]


def flat(tree) -> np.ndarray:
    leaves = jax.tree.leaves(replicated_to_host(tree))
    return np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves])


class Layout:
    """The given state, put on one mesh, and the jitted functions of one config on that mesh."""

    def __init__(self, config, mesh: Sharding, rows_of_this_process, initial_state):
        self.mesh, self.rows = mesh, rows_of_this_process
        training = compiled.build(config, mesh, state=initial_state)
        self.state, self.train_step = training.state, training.train_step
        loss_options = dict(
            graphdef=training.train_graph,
            preprocess_config=config.preprocess,
            label_smoothing=config.label_smoothing,
            weights_per_class=np.ones(2, np.float32),
            augment_seed=config.seed,
        )
        self.loss_and_gradients = jax.jit(
            lambda state, batch: steps.loss_and_gradients(state, batch, **loss_options)[:2],
            in_shardings=(mesh.replicated, mesh.batch),
            out_shardings=mesh.replicated,
        )
        # jit compiles on first call: a layout compiles only the functions it is asked for.
        self.loss = jax.jit(
            lambda state, batch: steps.loss_and_gradients(state, batch, **loss_options)[0],
            in_shardings=(mesh.replicated, mesh.batch),
            out_shardings=mesh.replicated,
        )

    def put(self, batch):
        return self.mesh.put_batch({k: self.rows(v) for k, v in batch.items()})

    def forward_loss(self, batch) -> float:
        return float(replicated_to_host(self.loss(self.state, self.put(batch))))

    def trajectory(self, batches) -> dict:
        state = jax.tree.map(lambda x: x.copy(), self.state)
        loss, grads = self.loss_and_gradients(state, self.put(batches[0]))
        result = dict(loss=float(replicated_to_host(loss)), gradients=flat(grads))
        initial_params, losses = flat(state.params), []
        for i, batch in enumerate(batches):
            loss, _ = self.loss_and_gradients(state, self.put(batch))
            losses.append(float(replicated_to_host(loss)))
            state = self.train_step(state, self.put(batch))
            if i == 0:
                result["update"] = flat(state.params) - initial_params
        result["losses"] = np.array(losses)
        return result


def permuted(batches, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for batch in batches:
        order = rng.permutation(BATCH_SIZE)
        out.append({k: v[order] for k, v in batch.items()})
    return out


def main(data_dir: str, output: str, *process_settings: str) -> None:
    config64, config32 = probe_config(data_dir, "float64"), probe_config(data_dir, "float32")
    if process_settings:
        coordinator, num_processes, process_id = process_settings
        settings = config64.distributed.copy_and_resolve_references()
        settings.coordinator_address = coordinator
        settings.num_processes, settings.process_id = int(num_processes), int(process_id)
        startup.initialize(settings)
        # A first collective right away, while both processes are in step: gloo sets up its
        # context then (it allows 30 s between the processes' arrival).
        multihost_utils.sync_global_devices("probe start")
        share = BATCH_SIZE // jax.process_count()
        start = jax.process_index() * share
        rows = lambda array: array[start : start + share]
        meshes = {f"{jax.process_count()}_processes": Sharding.over_all_devices()}
    else:
        if jax.device_count() != 8:
            raise SystemExit(f"needs 8 CPU devices (JAX_NUM_CPU_DEVICES=8): {jax.device_count()}")
        rows = lambda array: array
        meshes = {
            f"{n}_device{'s' * (n > 1)}": Sharding.over_devices(jax.devices()[:n])
            for n in (1, 2, 8)
        }
    batches = global_batches(config64)
    # One initial state for every layout: compiling the initialisation (about 10 s here) once
    # instead of once per layout and dtype. The float32 state is the float64 one rounded; what
    # is compared is the same state on different layouts, so any fixed state serves.
    first_mesh = next(iter(meshes.values()))
    tx = state_lib.create_optimizer(config64, steps_per_epoch=1)
    state64, _, _ = state_lib.create_train_state(config64, tx, first_mesh.replicated)
    state32 = jax.tree.map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, state64
    )
    results = {}
    for name, mesh in meshes.items():
        layout64 = Layout(config64, mesh, rows, state64)
        layout32 = Layout(config32, mesh, rows, state32)
        results[name] = layout64.trajectory(batches)
        results[name]["loss32"] = layout32.forward_loss(batches[0])
        if name == "1_device":  # the same compiled functions on the permuted batches
            for seed in range(1, NUM_NULLS + 1):
                null_batches = permuted(batches, seed)
                results[f"null_{seed}"] = layout64.trajectory(null_batches)
                results[f"null_{seed}"]["loss32"] = layout32.forward_loss(null_batches[0])
    if jax.process_index() == 0:
        np.savez(output, **{f"{n}/{k}": v for n, r in results.items() for k, v in r.items()})


if __name__ == "__main__":
    main(*sys.argv[1:])
