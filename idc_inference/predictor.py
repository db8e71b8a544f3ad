"""The predictor: P(IDC) of uint8 patches by a trained network, in one compiled function.

    predictor, config, step = Predictor.from_workdir("/tmp/idc_v1", tta=True)
    p_idc = predictor(patches)      # uint8 [N, 50, 50, 3] -> float32 [N]
    predictor.window                # 3 for a neighbourhood network: inputs [N, 150, 150, 3]

`idc_inference.patch_files` feeds it PNG files; `idc_inference.mosaic` paints what it says.

* Preprocessing is training's own: PNGs are decoded and border patches padded with white by
  `input_pipeline.patches.decode_patch` (as the TFDS builder does), then resized and scaled by
  `input_pipeline.preprocess` inside the jitted function, as the validation loop saw them.
* `Predictor` runs the network in eval mode (BatchNorm with its running statistics, no dropout) in
  one jitted function of a fixed batch size, compiled ahead of time; the last batch is padded, so a
  single compilation serves any number of files. Batches are sharded over every device.
* Test-time augmentation averages P(IDC) over the 8 symmetries of the square, as the trainer's
  evaluation does with `config.eval_tta` (`evaluation.views.mean_log_probabilities`).
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from evaluation import views as views_lib
from input_pipeline import windows
from input_pipeline.patches import (
    PATCH_SIZE,
    WHITE,
)
from input_pipeline.sharding import Sharding, to_host


def predict_probabilities(
    state: nnx.State,
    images: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    preprocess_config: ml_collections.ConfigDict,
    views: tuple[int, ...],
) -> jax.Array:
    """Mean P(IDC) over the dihedral `views` of uint8 patches [B, 50, 50, 3] -> [B], as the
    evaluation of training computes it (`evaluation.views.mean_log_probabilities`)."""
    model = nnx.merge(graphdef, state)
    log_probs = views_lib.mean_log_probabilities(model, images, preprocess_config, views)
    return jnp.exp(log_probs[:, 1])


class Predictor:
    """P(IDC) of uint8 patches by a trained model, through one ahead-of-time compiled function.

    `batch_size` is rounded up to a multiple of the device count; every call is cut into batches of
    exactly that size (the last one padded with white patches whose outputs are dropped), so the
    compiled function is the only one ever run. `window`: patches a side of the network's input
    (its run's `data.window`): inputs are uint8 [N, 50 window, 50 window, 3].
    """

    def __init__(
        self,
        model: nnx.Module,
        preprocess_config: ml_collections.ConfigDict,
        *,
        batch_size: int = 256,
        tta: bool = False,
        window: int = 1,
    ):
        self.window = window
        self.input_size = PATCH_SIZE * window
        self.sharding = Sharding.over_all_devices()
        devices = jax.device_count()
        self.batch_size = max(devices, -(-batch_size // devices) * devices)
        self.tta = tta
        self.views = views_lib.ALL_VIEWS if tta else (0,)
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, self.sharding.replicated)
        jitted = jax.jit(
            functools.partial(
                predict_probabilities,
                graphdef=graphdef,
                preprocess_config=preprocess_config,
                views=self.views,
            ),
            in_shardings=(self.sharding.replicated, self.sharding.batch),
            out_shardings=self.sharding.batch,
        )
        batch_shape = jax.ShapeDtypeStruct(
            (self.batch_size, self.input_size, self.input_size, 3),
            jnp.uint8,
            sharding=self.sharding.batch,
        )
        start = time.perf_counter()
        self._compiled = jitted.lower(self._state, batch_shape).compile()
        self.compile_seconds = time.perf_counter() - start

    @classmethod
    def from_workdir(
        cls, workdir: str | os.PathLike, which: str = "latest", **kwargs
    ) -> tuple[Predictor, ml_collections.ConfigDict, int]:
        """(predictor, run config, checkpoint step) for the `which` checkpoint of a training run."""
        # orbax only for a training run's checkpoints: the shipped weights never need it.
        from idc_inference import training_runs  # noqa: PLC0415

        config, model, step = training_runs.run_directory(workdir).restore_model(which)
        window = windows.window_size(config)
        return cls(model, config.preprocess, window=window, **kwargs), config, step

    def dispatch(self, images: np.ndarray) -> jax.Array:
        """Starts one batch (at most `batch_size` patches) and returns its P(IDC) without waiting.

        JAX runs the computation asynchronously, so the caller can decode the next batch meanwhile.
        The result has `batch_size` rows; those past len(images) belong to the padding.
        """
        if len(images) > self.batch_size:
            raise ValueError(f"{len(images)} images exceed the batch size {self.batch_size}")
        size = self.input_size
        padded = np.full((self.batch_size, size, size, 3), WHITE, np.uint8)
        padded[: len(images)] = images
        return self._compiled(self._state, self.sharding.put_batch({"image": padded})["image"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """P(IDC), float32 [N], of uint8 patches [N, 50, 50, 3] (windows: [N, 50 k, 50 k, 3])."""
        pending = [
            self.dispatch(images[start : start + self.batch_size])
            for start in range(0, len(images), self.batch_size)
        ]
        outputs = [to_host(p) for p in pending]
        return np.concatenate(outputs)[: len(images)] if outputs else np.zeros(0, np.float32)
