"""The CPU path: `layers.ConvBN`'s computation in forms that XLA:CPU runs fast.

Nothing here changes what the network computes; tests/test_cpu_path.py checks values and
gradients against the reference (`ConvBN` with implementation "reference") layer by layer and
for whole models. What it changes is how (benchmarks/RESULTS.md has the figures):

* convolutions.py  the depthwise convolution as shifted taps with a written-out backward pass, the
                   1x1 convolution as a GEMM, the RGB stem with a native kernel, a dense
                   convolution on a map smaller than its kernel as a GEMM over its windows
* batch_norm.py    BatchNorm + ReLU6 in training with a written-out backward pass
* kernels.py, .cc  native kernels called through XLA's FFI (float32, one CPU device), built on
                   first use with the host's C++ compiler; portable jnp everywhere else
* host_memory.py   process settings that keep XLA:CPU's per-step scratch buffer mapped

Importing this package registers `conv_bn` as `layers.IMPLEMENTATIONS["cpu"]`.
"""

from __future__ import annotations

import jax

from mobilenets import layers
from mobilenets.cpu.batch_norm import batch_norm_in_training
from mobilenets.cpu.convolutions import (
    dense_conv,
    dense_conv_as_gemm,
    dense_conv_few_inputs,
    depthwise_conv_shifted,
    pointwise_conv,
)


def convolve(unit: layers.ConvBN, x: jax.Array) -> jax.Array:
    """`unit.conv(x)`, in the form that suits the kind of convolution."""
    conv = unit.conv
    if unit.padding != "SAME":  # explicit padding (ResNet's stem, once per step): as it is
        return conv(x)
    x = x.astype(unit.dtype)
    kernel = conv.kernel[...].astype(unit.dtype)
    if unit.kind == "depthwise" and conv.feature_group_count == unit.in_features:
        out = depthwise_conv_shifted(x, kernel, unit.stride)
    elif unit.kind == "pointwise" and unit.stride == 1:
        out = pointwise_conv(x, kernel)
    elif unit.in_features <= 4:
        out = dense_conv_few_inputs(x, kernel, unit.stride)
    elif unit.kind == "dense" and min(x.shape[1:3]) < kernel.shape[0]:
        out = dense_conv_as_gemm(x, kernel, unit.stride)
    else:
        out = dense_conv(x, kernel, unit.stride)
    return out + conv.bias[...].astype(out.dtype) if conv.use_bias else out


def conv_bn(unit: layers.ConvBN, x: jax.Array) -> jax.Array:
    """What `unit(x)` computes in the reference, including the update of running statistics."""
    conv_out = convolve(unit, x)
    norm = unit.norm
    if norm.use_running_average or unit.activation not in ("relu6", None):
        # Evaluation, and activations without a written-out backward pass: nnx.BatchNorm itself.
        y = norm(conv_out)
        y = layers.ACTIVATIONS[unit.activation](y) if unit.activation is not None else y
    else:
        y, mean, var = batch_norm_in_training(
            conv_out.reshape(-1, unit.out_features),
            norm.scale[...],
            norm.bias[...],
            norm.epsilon,
            unit.activation == "relu6",
        )
        y = y.reshape(conv_out.shape)
        # nnx.BatchNorm's running averages, updated as nnx.BatchNorm updates them.
        keep = norm.momentum
        for running, batch in ((norm.mean, mean), (norm.var, var)):
            updated = keep * running[...] + (1 - keep) * batch
            running[...] = jax.lax.stop_gradient(updated).astype(running.dtype)
    return y.astype(unit.dtype)


layers.IMPLEMENTATIONS["cpu"] = conv_bn
