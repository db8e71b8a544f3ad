"""Test-time views: P(IDC) averaged over the 8 symmetries of the square, for training's
evaluation and for inference alike (`trainer.evaluate`, `idc_inference.predictor`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import input_pipeline

NUM_DIHEDRAL_VIEWS = 8
ALL_VIEWS = tuple(range(NUM_DIHEDRAL_VIEWS))


def mean_log_probabilities(
    model: nnx.Module,
    images: jax.Array,
    preprocess_config: ml_collections.ConfigDict,
    views: tuple[int, ...] = (0,),
) -> jax.Array:
    """log of the mean class probabilities over the dihedral `views` of uint8 patches, [B, 2].

    Test-time augmentation: tissue has no preferred orientation, so the 8 symmetries of the
    square (4 rotations x mirror, `input_pipeline.dihedral_view`) are equally valid inputs and
    their mean probability is a lower-variance estimate than any one view's. The model must be
    in eval mode (running BatchNorm statistics), so that an image's output does not depend on its
    batch-mates. Each view is taken of the raw patch and then preprocessed, as a user would feed
    a rotated file. The views go through the network one after the other (`lax.map`), not as
    one batch of len(views) * B images: that would hold len(views) times the activations at once
    (benchmarks/eval_memory.py measures both).
    """

    def view_log_probs(view: jax.Array) -> jax.Array:
        logits = model(input_pipeline.preprocess(view, preprocess_config, train=False, rng=None))
        return jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))

    stacked = jnp.stack([input_pipeline.dihedral_view(images, k) for k in views])
    per_view = jax.lax.map(view_log_probs, stacked)
    return jax.nn.logsumexp(per_view, axis=0) - jnp.log(len(views))
