"""Independent references for the model tests: convolutions written as plain loops (float64),
float32 rounding bounds, and abstract (shape-only) models to count."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import mobilenets
from mobilenets.counting import count


def same_padding_before(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """(output size, padding before) of TensorFlow 'SAME', from its definition."""
    out = -(-size // stride)
    return out, max((out - 1) * stride + kernel_size - size, 0) // 2


def naive_depthwise(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """Per-channel k x k correlation with TensorFlow 'SAME' padding, written as plain loops."""
    n, h, w, c = x.shape
    k = kernel.shape[0]
    (out_h, top), (out_w, left) = (same_padding_before(s, k, stride) for s in (h, w))
    out = np.zeros((n, out_h, out_w, c), np.float64)
    for b, i, j, ch in itertools.product(range(n), range(out_h), range(out_w), range(c)):
        total = 0.0
        for a, d in itertools.product(range(k), range(k)):
            row, col = i * stride + a - top, j * stride + d - left
            if 0 <= row < h and 0 <= col < w:
                total += x[b, row, col, ch] * kernel[a, d, 0, ch]
        out[b, i, j, ch] = total
    return out


def naive_dense_conv(
    x: np.ndarray, kernel: np.ndarray, stride: int, padding: int | None = None
) -> np.ndarray:
    """Dense k x k correlation as loops over output pixels: 'SAME' padding, or with `padding`
    zeros on every side and then 'valid' (Keras' `ZeroPadding2D` + `Conv2D`)."""
    n, h, w, _ = x.shape
    k = kernel.shape[0]
    if padding is None:
        out_h, out_w = -(-h // stride), -(-w // stride)
        pad_h = max((out_h - 1) * stride + k - h, 0)
        pad_w = max((out_w - 1) * stride + k - w, 0)
        pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
    else:
        out_h, out_w = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
        pads = ((padding, padding), (padding, padding))
    padded = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))
    out = np.zeros((n, out_h, out_w, kernel.shape[-1]))
    for i, j in itertools.product(range(out_h), range(out_w)):
        patch = padded[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
        out[:, i, j, :] = np.einsum("nabi,abio->no", patch, kernel)
    return out


def float32_sum_bound(abs_sum: np.ndarray, num_terms: int) -> np.ndarray:
    """A bound on the float32 rounding error of sums of `num_terms` products, any order.

    A float32 sum of n products p_i, accumulated in any order (with or without fused
    multiply-adds), is within gamma_n * sum |p_i| of the exact sum, gamma_n = n u / (1 - n u),
    u = 2^-24 (Higham, "Accuracy and Stability of Numerical Algorithms", Sec. 3.1); plus the
    rounding of the inputs themselves (one more u each). `abs_sum` is sum |p_i|, computed by
    the same loops on absolute values.
    """
    unit_roundoff = 2.0**-24
    n = num_terms + 2
    return n * unit_roundoff / (1 - n * unit_roundoff) * abs_sum


def abstract_model(name: str, **kwargs) -> nnx.Module:
    """`mobilenets.create(name, **kwargs)` with shapes only: nothing allocated or computed."""
    return nnx.eval_shape(lambda: mobilenets.create(name, rngs=nnx.Rngs(0), **kwargs))


@functools.cache
def _abstract_split(name: str, frozen_kwargs: tuple) -> tuple:
    return nnx.split(abstract_model(name, **dict(frozen_kwargs)))


def traced_shapes(name: str, size: int, function, **kwargs):
    """Shapes of `function(model, images)` for one size x size image, traced only.

    The model is abstract and built once per (name, kwargs): no initialiser runs and nothing
    compiles, so a shape check costs the trace of the forward pass alone.
    """
    graphdef, state = _abstract_split(name, tuple(sorted(kwargs.items())))
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda state, x: function(nnx.merge(graphdef, state), x), state, images)


def counts(model: nnx.Module) -> tuple[int, int]:
    """(trainable parameters, BatchNorm statistics) of a model."""
    return count(model, nnx.Param), count(model, nnx.BatchStat)
