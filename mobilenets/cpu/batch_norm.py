"""BatchNorm (+ ReLU6) in training mode with a hand-written backward pass, for the CPU path."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mobilenets.cpu import kernels
from mobilenets.layers import relu6


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_in_training(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, apply_relu6: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BatchNorm with the statistics of this batch (+ ReLU6), with a hand-written backward pass.

    x: [rows, channels], float32. Returns (y, batch mean, batch variance); the statistics only feed
    the running averages and are treated as constants (their cotangents are ignored, as if they
    went through `stop_gradient`). The forward pass is `nnx.BatchNorm`'s (fast variance
    E[x^2] - E[x]^2); `apply_relu6` adds the activation. The backward pass is the textbook one,
    with xhat = (x - mean) / sqrt(var + epsilon) and g the output gradient (masked by ReLU6):

        dbias = sum(g),   dscale = sum(g * xhat),
        dx = scale / sqrt(var + epsilon) * (g - dbias / rows - xhat * dscale / rows),

    two per-channel reductions and one elementwise pass, recomputing the ReLU6 mask from x
    instead of storing it. Autodiff of the same forward pass yields more reductions and passes.
    On the CPU backend (float32, one device) the statistics' two sums and the whole backward pass
    run as native kernels (`kernels.moment_sums`, `kernels.batch_norm_backward`): one
    pass for the sums, two for the backward, where XLA:CPU makes one pass per reduction and
    writes the masked gradient out (benchmarks/RESULTS.md).
    """
    return _batch_norm_forward(x, scale, bias, epsilon, apply_relu6)[0]


def _normalize(x, mean, inv_std, scale, bias, apply_relu6):
    y = (x - mean) * (scale * inv_std) + bias
    return relu6(y) if apply_relu6 else y


def _batch_norm_forward(x, scale, bias, epsilon, apply_relu6):
    rows = x.shape[0]
    total, total_sq = kernels.on_cpu(
        kernels.moment_sums, lambda x: (jnp.sum(x, axis=0), jnp.sum(x * x, axis=0)), x
    )
    mean = total / rows
    var = jnp.maximum(total_sq / rows - mean * mean, 0.0)
    inv_std = jax.lax.rsqrt(var + epsilon)
    y = _normalize(x, mean, inv_std, scale, bias, apply_relu6)
    return (y, mean, var), (x, mean, inv_std, scale, bias)


def _batch_norm_backward(epsilon, apply_relu6, residuals, cotangents):
    del epsilon  # inv_std already holds it
    grad = cotangents[0]  # the statistics' cotangents are ignored: see the docstring
    return kernels.on_cpu(
        functools.partial(kernels.batch_norm_backward, relu6=apply_relu6),
        functools.partial(_batch_norm_backward_portable, apply_relu6),
        grad,
        *residuals,
    )


def _batch_norm_backward_portable(apply_relu6, grad, x, mean, inv_std, scale, bias):
    rows = x.shape[0]
    gain = scale * inv_std
    if apply_relu6:
        pre_activation = (x - mean) * gain + bias  # as `_normalize` computes it, to the last bit
        grad = jnp.where((pre_activation > 0.0) & (pre_activation < 6.0), grad, 0.0)
    grad_bias = jnp.sum(grad, axis=0)
    # sum(grad * (x - mean)) without materialising x - mean, which XLA:CPU would write out for
    # its reduction kernel: one pass over the activations fewer.
    grad_scale = (jnp.sum(grad * x, axis=0) - mean * grad_bias) * inv_std
    grad_x = gain * (grad - grad_bias / rows) - (x - mean) * (gain * inv_std * grad_scale / rows)
    return grad_x, grad_scale, grad_bias


batch_norm_in_training.defvjp(
    lambda *args: (batch_norm_in_training(*args), _batch_norm_forward(*args)[1]),
    _batch_norm_backward,
)
