"""The network a run's config names: `mobilenets.create`'s arguments from its `model` section.

One place for the reading, shared by training (`trainer.state.create_model`) and by inference
weights (`idc_inference.weights`), which must build exactly the network that was trained.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def compute_dtype(config) -> jnp.dtype:
    """config.compute_dtype; "auto": bfloat16 on accelerators, float32 on the CPU."""
    if config.compute_dtype == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(config.compute_dtype)


def network_kwargs(config, *, num_classes: int, implementation: str | None = None, dtype=None):
    """`mobilenets.create`'s keyword arguments, but the RNG streams, for `config.model`.

    Parameters are float32, or float64 when the network computes in float64; `implementation`
    and `dtype` override the config's.
    """
    dtype = jnp.dtype(dtype) if dtype is not None else compute_dtype(config)
    return dict(
        num_classes=num_classes,
        alpha=config.model.alpha,
        dropout_rate=config.model.dropout_rate,
        bn_momentum=config.model.bn_momentum,
        bn_epsilon=config.model.bn_epsilon,
        implementation=implementation or config.model.implementation,
        dtype=dtype,
        param_dtype=jnp.promote_types(dtype, jnp.float32),
    )
