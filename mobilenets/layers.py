"""Building blocks shared by MobileNetV1 and MobileNetV2.

Each idea of the two papers that both networks use lives here, in one place:

* `make_divisible`: the channel rounding of MobileNetV2 (Sandler et al. 2018), applied after the
  width multiplier alpha.
* `Conv2D`: a dense k x k convolution without bias (the stem); `Pointwise`: the 1x1 convolution of
  the depthwise-separable factorisation (Howard et al. 2017, Sec. 3.1), written as the matrix
  multiply over channels that it is.
* `DepthwiseConv`: the 3x3 depthwise convolution, one filter per input channel (Howard et al. 2017,
  Sec. 3.1), with interchangeable formulations of identical parameters and results.
* `batch_norm_in_training`: BatchNorm (+ ReLU6) with batch statistics and a hand-written backward
  pass.
* `ConvBN`: convolution + BatchNorm + optional ReLU6, the unit every layer of both networks is made
  of. The activation is optional because the MobileNetV2 projection is *linear* (Sandler et al.
  2018, Sec. 3.2).
* `ClassifierHead`: global average pooling, dropout and the dense classifier.
* `MobileNet`: the skeleton both networks share (stem, blocks, optional last 1x1 conv, head).

Conventions
-----------
Images and activations are NHWC; kernels are HWIO (the layout of `flax.nnx.Conv` and of Keras, so
weights port directly). Padding is TensorFlow's 'SAME' everywhere, see `same_padding`.

Initialisers: every convolution kernel is He (Kaiming) normal with the fan counted as *fan in*,
`variance_scaling(2.0, "fan_in", "truncated_normal")`, the scale that keeps the activation
variance constant through ReLU-type layers (He et al. 2015). Fan *in* matters for the depthwise
kernel. In the HWIO layout of a `feature_group_count` convolution its shape is (3, 3, 1, C), so a
fan-*out* (or fan-average, Glorot) initialiser counts 9 * C as the fan although each output mixes
only 9 inputs, and draws weights about sqrt(C) times too small (torchvision's
`kaiming_normal_(mode="fan_out")` on its (C, 1, 3, 3) weight and Keras' Glorot on its (3, 3, C, 1)
weight both do). The fan in of (3, 3, 1, C) is 9, the true fan of a depthwise filter. BatchNorm
follows each convolution, so only the start of training sees the difference. BatchNorm starts as
the identity (scale 1, bias 0, running mean 0, variance 1). The classifier is Glorot uniform with
zero bias, the Keras default of the applications the paper used.

Mixed precision: parameters are float32; convolutions multiply in the compute `dtype` (e.g.
bfloat16 on GPU) and accumulate into float32; BatchNorm statistics and normalisation, pooling and
the classifier run in float32; activations between layers are stored in the compute dtype.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from mobilenets import cpu_kernels

DepthwiseImpl = Literal["auto", "grouped", "shifted"]
DEPTHWISE_IMPLS: tuple[str, ...] = ("auto", "grouped", "shifted")

# He normal with an explicit fan *in*: see the module docstring for why not fan out on depthwise.
conv_kernel_init = nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
classifier_kernel_init = nnx.initializers.glorot_uniform()


ConvKind = Literal["dense", "depthwise", "pointwise"]


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One convolution + BatchNorm (+ ReLU6) layer, as data.

    The blocks build their `ConvBN` layers from these and `mobilenets.profile` counts parameters and
    multiply-adds from the same specs, so the two cannot drift apart.
    """

    kind: ConvKind
    in_features: int
    out_features: int
    kernel_size: int = 1
    stride: int = 1
    activation: bool = True

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """HWIO shape of the kernel; the input axis is 1 for a depthwise kernel."""
        k = self.kernel_size
        in_per_group = 1 if self.kind == "depthwise" else self.in_features
        return (k, k, in_per_group, self.out_features)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to the nearest multiple of `divisor`, never down by more than 10%.

    The rounding of the reference MobileNetV2 implementations (TF-slim `_make_divisible`, also in
    Keras and torchvision), applied to `channels * alpha`. Multiples of 8 suit vector hardware.

    >>> make_divisible(32 * 0.35), make_divisible(16 * 0.35), make_divisible(1280 * 1.4)
    (16, 8, 1792)
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # Rounding down by more than 10% would thin the layer too much.
        rounded += divisor
    return rounded


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, tuple[int, int]]:
    """TensorFlow 'SAME' padding along one axis: (output size, (pad before, pad after)).

    The output is ceil(size / stride); the padding needed for it is split with the extra pixel,
    if any, *after*. For a 3x3 kernel with stride 2 that is (0, 1) on even sizes and (1, 1) on odd
    sizes, exactly Keras MobileNetV2's `correct_pad`. Keras MobileNetV1 instead always pads (0, 1)
    before its stride-2 'valid' convolutions; that agrees on even sizes but on odd ones yields
    floor(size / 2) instead of ceil: at 50x50 its last feature map is 1x1, here it is 2x2.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return out, (total // 2, total - total // 2)


def _spatial_padding(x_shape, kernel_size: int, stride: int) -> tuple[tuple[int, int], ...]:
    """'SAME' paddings for the two spatial axes of an NHWC array."""
    return tuple(same_padding(size, kernel_size, stride)[1] for size in x_shape[1:3])


def _native_window(x_shape, kernel_size: int, stride: int) -> tuple[tuple[int, int], int, int]:
    """What the native kernels take: the output (height, width) and the top and left padding."""
    (out_h, (top, _)), (out_w, (left, _)) = (
        same_padding(size, kernel_size, stride) for size in x_shape[1:3]
    )
    return (out_h, out_w), top, left


def relu6(x: jax.Array) -> jax.Array:
    """min(max(x, 0), 6): the ReLU of both papers, bounded for robustness in low precision."""
    return jnp.clip(x, 0.0, 6.0)


def depthwise_conv_grouped(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The definition: a convolution with one group per channel (`feature_group_count = C`).

    Like every convolution here it accumulates and returns float32 whatever the input dtype.
    """
    k = kernel.shape[0]
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=_spatial_padding(x.shape, k, stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
        preferred_element_type=jnp.float32,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The same convolution as a sum of k*k shifted, per-channel scaled copies of the input.

    out[n, i, j, c] = sum_{a, b} x_pad[n, stride*i + a, stride*j + b, c] * kernel[a, b, 0, c].
    Each tap is a (strided) slice of the padded input times a channel vector: elementwise work that
    XLA fuses into one loop (`_depthwise_taps`). XLA:CPU has no fast kernel for grouped
    convolutions, whose backward pass dominates a MobileNet train step there. The backward pass is
    written out in `_depthwise_shifted_backward`.

    On the CPU backend (float32) the same loop runs as a native kernel
    (`cpu_kernels.depthwise_conv`): XLA treats the taps as cheap elementwise work and fuses
    them, recomputed, into every consumer of the output (BatchNorm's statistics, its
    normalisation, the backward pass's ReLU6 mask), which the native call rules out.
    """
    out_hw, top, left = _native_window(x.shape, kernel.shape[0], stride)
    return cpu_kernels.on_cpu(
        lambda x, kernel: cpu_kernels.depthwise_conv(x, kernel, out_hw, stride, top, left),
        lambda x, kernel: _depthwise_taps(x, kernel, stride),
        x,
        kernel,
    )


def _depthwise_taps(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    k = kernel.shape[0]
    n, height, width, channels = x.shape
    out_h, _ = same_padding(height, k, stride)
    out_w, _ = same_padding(width, k, stride)
    x_pad = jnp.pad(x, ((0, 0), *_spatial_padding(x.shape, k, stride), (0, 0)))
    out = None
    for a in range(k):
        for b in range(k):
            tap = jax.lax.slice(
                x_pad,
                (0, a, b, 0),
                (n, a + (out_h - 1) * stride + 1, b + (out_w - 1) * stride + 1, channels),
                (1, stride, stride, 1),
            )
            term = tap.astype(jnp.float32) * kernel[a, b, 0].astype(jnp.float32)
            out = term if out is None else out + term
    return out


def _depthwise_shifted_forward(x, kernel, stride):
    return depthwise_conv_shifted(x, kernel, stride), (x, kernel)


def _depthwise_shifted_backward(stride, residuals, grad_out):
    """Adjoint of `depthwise_conv_shifted`: the input gradient and the kernel gradient.

    Input gradient, stride 1: the adjoint of a stride-1 correlation with symmetric padding is the
    same correlation with the kernel flipped in both spatial axes, so it reuses the forward
    function. XLA:CPU runs that 2.5-4x faster than the phase form below, into which it also fuses
    the elementwise BatchNorm backward that produces `grad_out`, re-evaluated for every tap.

    Kernel gradient, and the input gradient at stride 2: the padded input is split into its
    stride x stride phases (space-to-depth: phase (p, q) holds the pixels x_pad[s*i + p, s*j + q]);
    tap (a, b) of the forward pass reads phase (a % s, b % s) at offset (a // s, b // s) with unit
    stride. With `placed` the output gradient padded to that offset in its phase:

        dkernel[a, b] = sum(phase * placed),    dphase += placed * kernel[a, b],

    then the phases are interleaved back and the padding cropped. This is the gradient autodiff
    derives, but autodiff reduces over strided slices and dilated pads, which XLA:CPU runs 5-10x
    slower than these unit-stride pads.

    On the CPU backend (float32, one device) both gradients are native kernels instead
    (`cpu_kernels.depthwise_conv_transpose`, `cpu_kernels.depthwise_kernel_grad`: the same sums).
    The k * k reductions above each read the activations again (17-25% of a train step); the
    native kernel gradient is one pass. The forms above stay as the portable definition (GPU,
    TPU, other dtypes, several devices) and as the reference the native kernels are tested against.
    """
    x, kernel = residuals
    k = kernel.shape[0]
    n, height, width, channels = x.shape
    (top, bottom), (left, right) = _spatial_padding(x.shape, k, stride)
    flip_gives_input_gradient = stride == 1 and top == bottom and left == right
    # Pad up to a multiple of the stride so the phases have equal sizes; the extra row / column
    # is never read by a tap.
    bottom += -(height + top + bottom) % stride
    right += -(width + left + right) % stride
    phase_h, phase_w = (height + top + bottom) // stride, (width + left + right) // stride
    out_h, out_w = grad_out.shape[1:3]
    grad_out = grad_out.astype(jnp.float32)
    x_pad = jnp.pad(x.astype(jnp.float32), ((0, 0), (top, bottom), (left, right), (0, 0)))
    phases = x_pad.reshape(n, phase_h, stride, phase_w, stride, channels).transpose(
        2, 4, 0, 1, 3, 5
    )

    def place(grad, a, b):
        """grad at offset (a // stride, b // stride) of a zero phase-sized array."""
        row, col = a // stride, b // stride
        return jax.lax.pad(
            grad,
            jnp.float32(0),
            (
                (0, 0, 0),
                (row, phase_h - row - out_h, 0),
                (col, phase_w - col - out_w, 0),
                (0, 0, 0),
            ),
        )

    def taps(kernel_grad: bool, input_grad: bool):
        """One pass over the taps: the kernel gradient and / or the input gradient's phases."""
        zeros = jnp.zeros((n, phase_h, phase_w, channels), jnp.float32)
        grad_phases = [[zeros] * stride for _ in range(stride)]
        grad_kernel = []
        for a in range(k):
            for b in range(k):
                placed = place(grad_out, a, b)
                if kernel_grad:
                    phase = phases[a % stride, b % stride]
                    grad_kernel.append(jnp.sum(phase * placed, axis=(0, 1, 2)))
                if input_grad:
                    term = placed * kernel[a, b, 0].astype(jnp.float32)
                    grad_phases[a % stride][b % stride] = grad_phases[a % stride][b % stride] + term
        return (jnp.stack(grad_kernel).reshape(kernel.shape) if kernel_grad else None), grad_phases

    grad_kernel = cpu_kernels.on_cpu(
        lambda x, grad_out: cpu_kernels.depthwise_kernel_grad(x, grad_out, k, stride, top, left),
        lambda x, grad_out: taps(kernel_grad=True, input_grad=False)[0],
        x,
        grad_out,
    )

    def portable_input_grad(grad_out, kernel):
        if flip_gives_input_gradient:
            return _depthwise_taps(grad_out, kernel[::-1, ::-1], 1)
        # The phase form repeats the taps' pads, which XLA merges (CSE) with those of the
        # portable kernel gradient.
        grad_phases = taps(kernel_grad=False, input_grad=True)[1]
        grad_x_pad = (
            jnp.stack([jnp.stack(row) for row in grad_phases])
            .transpose(2, 3, 0, 4, 1, 5)
            .reshape(x_pad.shape)
        )
        return grad_x_pad[:, top : top + height, left : left + width]

    grad_x = cpu_kernels.on_cpu(
        lambda grad_out, kernel: cpu_kernels.depthwise_conv_transpose(
            grad_out, kernel, (height, width), stride, top, left
        ),
        portable_input_grad,
        grad_out,
        kernel.astype(jnp.float32),
    )
    return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


depthwise_conv_shifted.defvjp(_depthwise_shifted_forward, _depthwise_shifted_backward)


def resolve_depthwise_impl(impl: str) -> str:
    """'auto' -> 'shifted' on the CPU backend, 'grouped' elsewhere (cuDNN/TPU are fast at it)."""
    if impl not in DEPTHWISE_IMPLS:
        raise ValueError(f"depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "grouped"
    return impl


_DEPTHWISE_FUNCTIONS: dict[str, Callable[[jax.Array, jax.Array, int], jax.Array]] = {
    "grouped": depthwise_conv_grouped,
    "shifted": depthwise_conv_shifted,
}


class DepthwiseConv(nnx.Module):
    """3x3 depthwise convolution: one spatial filter per channel, no bias (Howard et al. 2017).

    Definition (the "grouped" formulation)::

        lax.conv_general_dilated(x, kernel, stride, 'SAME', ('NHWC', 'HWIO', 'NHWC'),
                                 feature_group_count=C)   # kernel: (3, 3, 1, C)

    i.e. out[..., c] = conv2d(x[..., c], kernel[:, :, 0, c]). Costs 9 * C multiply-adds per output
    pixel instead of 9 * C * C' for a dense 3x3 convolution; the 1x1 `Pointwise` convolution that
    follows it mixes channels.

    `impl` picks a formulation with the same parameter and the same result (the tests check both,
    and their gradients, against a naive loop): "grouped" above, "shifted"
    (`depthwise_conv_shifted`, fast on XLA:CPU), or "auto" (shifted on the CPU backend, grouped
    elsewhere).
    """

    def __init__(
        self,
        channels: int,
        *,
        stride: int = 1,
        kernel_size: int = 3,
        impl: DepthwiseImpl = "auto",
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.channels = channels
        self.stride = stride
        # Resolved once, on the backend the model is built for.
        self.impl = resolve_depthwise_impl(impl)
        self.dtype = dtype
        self.kernel = nnx.Param(
            conv_kernel_init(rngs.params(), (kernel_size, kernel_size, 1, channels), jnp.float32)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        return _DEPTHWISE_FUNCTIONS[self.impl](x.astype(self.dtype), kernel, self.stride)


class Pointwise(nnx.Module):
    """1x1 convolution, no bias: the channel-mixing half of a depthwise-separable convolution.

    A 1x1 convolution with stride 1 *is* a matrix multiply over the channel axis,
    `x @ kernel[0, 0]` on [N, H, W, C_in]; written so, XLA lowers it and both its gradients to
    GEMMs on every backend (on XLA:CPU the 1x1 convolution train step measured up to 2x slower).
    The kernel keeps the HWIO (1, 1, C_in,
    C_out) shape of a convolution so weights port to and from `nnx.Conv` and Keras.
    """

    def __init__(self, in_features: int, out_features: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.kernel = nnx.Param(
            conv_kernel_init(rngs.params(), (1, 1, in_features, out_features), jnp.float32)
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)[0, 0]
        # Flattening the pixels to one GEMM row axis first is ~2x faster on XLA:CPU than a dot
        # on the 4-D array (whose gradients do not lower to plain GEMMs there).
        rows = x.astype(self.dtype).reshape(-1, self.in_features)
        out = jnp.dot(rows, kernel, preferred_element_type=jnp.float32)
        return out.reshape(*x.shape[:-1], self.out_features)


class Conv2D(nnx.Module):
    """Dense k x k convolution with 'SAME' padding and no bias (the stem of both networks)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.stride = stride
        self.dtype = dtype
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(conv_kernel_init(rngs.params(), shape, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        conv = dense_conv_few_inputs if self.in_features <= 4 else dense_conv
        return conv(x.astype(self.dtype), kernel, self.stride)


def dense_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The definition: `lax.conv_general_dilated`, 'SAME' padding, NHWC x HWIO -> float32."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=_spatial_padding(x.shape, kernel.shape[0], stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_conv_few_inputs(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """`dense_conv` for an input of at most 4 channels: the stem, on RGB images.

    On the CPU backend (float32, one device) the forward pass and the kernel gradient run as
    native kernels (`cpu_kernels.small_input_conv` and its kernel gradient): with three input
    channels XLA:CPU's convolution ran at 18 GFLOP/s (14 ms of a 96 px forward pass; native
    5.5 ms, kernel gradient 8.5 -> 5.1 ms). Elsewhere this is `dense_conv` and its autodiff
    gradients.
    """
    out_hw, top, left = _native_window(x.shape, kernel.shape[0], stride)
    return cpu_kernels.on_cpu(
        lambda x, kernel: cpu_kernels.small_input_conv(x, kernel, out_hw, stride, top, left),
        lambda x, kernel: dense_conv(x, kernel, stride),
        x,
        kernel,
    )


def _dense_conv_few_inputs_backward(stride, residuals, grad_out):
    x, kernel = residuals
    # The input gradient is never native: a stem's input needs none (XLA drops this).
    _, input_vjp = jax.vjp(lambda x: dense_conv(x, kernel, stride), x)
    (grad_x,) = input_vjp(grad_out)
    _, top, left = _native_window(x.shape, kernel.shape[0], stride)

    def portable_kernel_grad(x, grad_out):
        _, kernel_vjp = jax.vjp(lambda kernel: dense_conv(x, kernel, stride), kernel)
        return kernel_vjp(grad_out)[0]

    grad_kernel = cpu_kernels.on_cpu(
        lambda x, grad_out: cpu_kernels.small_input_conv_kernel_grad(
            x, grad_out, kernel.shape[0], stride, top, left
        ),
        portable_kernel_grad,
        x,
        grad_out,
    )
    return grad_x, grad_kernel.astype(kernel.dtype)


dense_conv_few_inputs.defvjp(
    lambda x, kernel, stride: (dense_conv_few_inputs(x, kernel, stride), (x, kernel)),
    _dense_conv_few_inputs_backward,
)


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
    run as native kernels (`cpu_kernels.moment_sums`, `cpu_kernels.batch_norm_backward`): one
    pass for the sums, two for the backward, where XLA:CPU makes one pass per reduction and
    writes the masked gradient out (benchmarks/RESULTS.md).
    """
    return _batch_norm_forward(x, scale, bias, epsilon, apply_relu6)[0]


def _normalize(x, mean, inv_std, scale, bias, apply_relu6):
    y = (x - mean) * (scale * inv_std) + bias
    return relu6(y) if apply_relu6 else y


def _batch_norm_forward(x, scale, bias, epsilon, apply_relu6):
    rows = x.shape[0]
    total, total_sq = cpu_kernels.on_cpu(
        cpu_kernels.moment_sums, lambda x: (jnp.sum(x, axis=0), jnp.sum(x * x, axis=0)), x
    )
    mean = total / rows
    var = jnp.maximum(total_sq / rows - mean * mean, 0.0)
    inv_std = jax.lax.rsqrt(var + epsilon)
    y = _normalize(x, mean, inv_std, scale, bias, apply_relu6)
    return (y, mean, var), (x, mean, inv_std, scale, bias)


def _batch_norm_backward(epsilon, apply_relu6, residuals, cotangents):
    del epsilon  # inv_std already holds it
    grad = cotangents[0]  # the statistics' cotangents are ignored: see the docstring
    return cpu_kernels.on_cpu(
        functools.partial(cpu_kernels.batch_norm_backward, relu6=apply_relu6),
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


class ConvBN(nnx.Module):
    """A convolution (no bias: BatchNorm's shift replaces it), BatchNorm, then ReLU6 or nothing.

    `kind` selects the convolution: "dense" (`Conv2D`, k x k), "depthwise" (`DepthwiseConv`) or
    "pointwise" (`Pointwise`, 1x1). `activation=False` gives the *linear* bottleneck projection of
    MobileNetV2: a ReLU on a low-dimensional output would destroy information (Sandler et al. 2018,
    Sec. 3.2). BatchNorm computes its statistics and normalises in float32 whatever the compute
    dtype; the result is cast back to the compute dtype. `norm` is an `nnx.BatchNorm` (its
    parameters, statistics and evaluation mode); in training mode the normalisation and ReLU6 run
    as `batch_norm_in_training`, whose backward pass is written out.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kind: ConvKind,
        kernel_size: int = 3,
        stride: int = 1,
        activation: bool = True,
        depthwise_impl: DepthwiseImpl = "auto",
        bn_momentum: float,
        bn_epsilon: float,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if kind == "dense":
            self.conv = Conv2D(
                in_features,
                out_features,
                kernel_size=kernel_size,
                stride=stride,
                dtype=dtype,
                rngs=rngs,
            )
        elif kind == "depthwise":
            if in_features != out_features:
                raise ValueError("a depthwise convolution keeps the channel count")
            self.conv = DepthwiseConv(
                in_features,
                stride=stride,
                kernel_size=kernel_size,
                impl=depthwise_impl,
                dtype=dtype,
                rngs=rngs,
            )
        elif kind == "pointwise":
            if stride != 1:
                raise ValueError("pointwise convolutions have stride 1 in both networks")
            self.conv = Pointwise(in_features, out_features, dtype=dtype, rngs=rngs)
        else:
            raise ValueError(f"unknown convolution kind {kind!r}")
        self.kind = kind
        self.stride = stride
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.dtype = dtype
        self.norm = nnx.BatchNorm(
            out_features, momentum=bn_momentum, epsilon=bn_epsilon, dtype=jnp.float32, rngs=rngs
        )

    @classmethod
    def from_spec(cls, spec: ConvSpec, **options) -> ConvBN:
        """Builds the layer a `ConvSpec` describes; `options` are the keyword-only settings."""
        return cls(**dataclasses.asdict(spec), **options)

    def __call__(self, x: jax.Array) -> jax.Array:
        conv_out = self.conv(x)  # float32: the convolutions accumulate and return float32
        norm = self.norm
        if norm.use_running_average:
            y = norm(conv_out)
            y = relu6(y) if self.activation else y
        else:
            y, mean, var = batch_norm_in_training(
                conv_out.reshape(-1, self.out_features),
                norm.scale[...],
                norm.bias[...],
                norm.epsilon,
                self.activation,
            )
            y = y.reshape(conv_out.shape)
            # nnx.BatchNorm's running averages, updated as nnx.BatchNorm updates them.
            keep = norm.momentum
            norm.mean[...] = jax.lax.stop_gradient(keep * norm.mean[...] + (1 - keep) * mean)
            norm.var[...] = jax.lax.stop_gradient(keep * norm.var[...] + (1 - keep) * var)
        return y.astype(self.dtype)


class ClassifierHead(nnx.Module):
    """Global average pooling, dropout, dense classifier: all in float32, returns logits.

    Pooling replaces the fully connected layers of older nets (both papers); Keras' MobileNetV1
    applies dropout (1e-3) before its classifier, which is a 1x1 convolution on the pooled
    1x1 map and therefore the same as this dense layer.
    """

    def __init__(self, in_features: int, num_classes: int, *, dropout_rate: float, rngs: nnx.Rngs):
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.classifier = nnx.Linear(
            in_features,
            num_classes,
            kernel_init=classifier_kernel_init,
            bias_init=nnx.initializers.zeros_init(),
            dtype=jnp.float32,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return self.classifier(self.dropout(pooled))


class MobileNet(nnx.Module):
    """The skeleton both networks share: stem convolution, a stack of blocks, an optional last
    1x1 convolution (MobileNetV2's expansion to 1280 channels), and the classifier head.

    Subclasses build it from their architecture tables (see `MobileNetV1`, `MobileNetV2`) and
    give the Keras defaults that `None` arguments stand for.
    """

    DEFAULT_DROPOUT_RATE: float
    DEFAULT_BN_MOMENTUM: float
    DEFAULT_BN_EPSILON: float

    def _build(
        self,
        *,
        stem: ConvSpec,
        make_blocks: Callable[..., list[nnx.Module]],
        last: ConvSpec | None,
        classifier_features: int,
        num_classes: int,
        dropout_rate: float | None,
        dtype,
        depthwise_impl: DepthwiseImpl,
        bn_momentum: float | None,
        bn_epsilon: float | None,
        rngs: nnx.Rngs,
    ) -> None:
        layer_options = dict(
            depthwise_impl=depthwise_impl,
            bn_momentum=self.DEFAULT_BN_MOMENTUM if bn_momentum is None else bn_momentum,
            bn_epsilon=self.DEFAULT_BN_EPSILON if bn_epsilon is None else bn_epsilon,
            dtype=dtype,
            rngs=rngs,
        )
        self.stem = ConvBN.from_spec(stem, **layer_options)
        self.blocks = nnx.List(make_blocks(**layer_options))
        self.last_conv = None if last is None else ConvBN.from_spec(last, **layer_options)
        self.head = ClassifierHead(
            classifier_features,
            num_classes,
            dropout_rate=self.DEFAULT_DROPOUT_RATE if dropout_rate is None else dropout_rate,
            rngs=rngs,
        )

    def features(self, images: jax.Array) -> jax.Array:
        """The last feature map before pooling, [batch, H/32, W/32, channels]."""
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return x if self.last_conv is None else self.last_conv(x)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.head(self.features(images))
