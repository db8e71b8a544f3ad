"""Convolutions of the CPU path: the same results as `nnx.Conv`, in forms XLA:CPU runs fast.

* `depthwise_conv_shifted`: the depthwise convolution as k * k shifted, per-channel scaled copies
  of the input, with its backward pass written out (`_depthwise_shifted_backward`). XLA:CPU has no
  fast kernel for grouped convolutions, whose backward pass dominates a MobileNet train step.
* `pointwise_conv`: the 1x1 convolution as the matrix multiply over channels that it is.
* `dense_conv_few_inputs`: the RGB stem, with a native forward pass and kernel gradient.
* `dense_conv_as_gemm`: a dense convolution on a feature map smaller than its kernel (ResNet-50's
  last stage at 50 px: 3x3 kernels on 2x2 maps) as one GEMM over the stacked windows (im2col).

Where the native kernels (`kernels.py`) are active (float32, one CPU device) the inner loops run
there; elsewhere the jnp forms below run, which are also the references the kernels are tested
against. All accumulate in at least float32, whatever the input dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mobilenets.cpu import kernels
from mobilenets.layers import accumulation_dtype, same_padding


def _spatial_padding(x_shape, kernel_size: int, stride: int) -> tuple[tuple[int, int], ...]:
    """'SAME' paddings for the two spatial axes of an NHWC array."""
    return tuple(same_padding(size, kernel_size, stride)[1] for size in x_shape[1:3])


def _native_window(x_shape, kernel_size: int, stride: int) -> tuple[tuple[int, int], int, int]:
    """What the native kernels take: the output (height, width) and the top and left padding."""
    (out_h, (top, _)), (out_w, (left, _)) = (
        same_padding(size, kernel_size, stride) for size in x_shape[1:3]
    )
    return (out_h, out_w), top, left


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The same convolution as a sum of k*k shifted, per-channel scaled copies of the input.

    out[n, i, j, c] = sum_{a, b} x_pad[n, stride*i + a, stride*j + b, c] * kernel[a, b, 0, c].
    Each tap is a (strided) slice of the padded input times a channel vector: elementwise work that
    XLA fuses into one loop (`_depthwise_taps`). XLA:CPU has no fast kernel for grouped
    convolutions, whose backward pass dominates a MobileNet train step there. The backward pass is
    written out in `_depthwise_shifted_backward`.

    On the CPU backend (float32) the same loop runs as a native kernel
    (`kernels.depthwise_conv`): XLA treats the taps as cheap elementwise work and fuses
    them, recomputed, into every consumer of the output (BatchNorm's statistics, its
    normalisation, the backward pass's ReLU6 mask), which the native call rules out.
    """
    out_hw, top, left = _native_window(x.shape, kernel.shape[0], stride)
    return kernels.on_cpu(
        lambda x, kernel: kernels.depthwise_conv(x, kernel, out_hw, stride, top, left),
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
    acc = accumulation_dtype(x.dtype)
    out = None
    for a in range(k):
        for b in range(k):
            tap = jax.lax.slice(
                x_pad,
                (0, a, b, 0),
                (n, a + (out_h - 1) * stride + 1, b + (out_w - 1) * stride + 1, channels),
                (1, stride, stride, 1),
            )
            term = tap.astype(acc) * kernel[a, b, 0].astype(acc)
            out = term if out is None else out + term
    return out


def _depthwise_shifted_forward(x, kernel, stride):
    return depthwise_conv_shifted(x, kernel, stride), (x, kernel)


def _depthwise_shifted_backward(stride, residuals, grad_out):
    """Adjoint of `depthwise_conv_shifted`: the input gradient and the kernel gradient.

    Input gradient, stride 1: the adjoint of a stride-1 correlation with symmetric padding is the
    same correlation with the kernel flipped in both spatial axes, so it reuses the forward
    function. XLA:CPU runs that faster than the phase form below, into which it also fuses the
    elementwise BatchNorm backward that produces `grad_out`, re-evaluated for every tap.

    Kernel gradient, and the input gradient at stride 2: the padded input is split into its
    stride x stride phases (space-to-depth: phase (p, q) holds the pixels x_pad[s*i + p, s*j + q]);
    tap (a, b) of the forward pass reads phase (a % s, b % s) at offset (a // s, b // s) with unit
    stride. With `placed` the output gradient padded to that offset in its phase:

        dkernel[a, b] = sum(phase * placed),    dphase += placed * kernel[a, b],

    then the phases are interleaved back and the padding cropped. This is the gradient autodiff
    derives, but autodiff reduces over strided slices and dilated pads, which XLA:CPU runs several
    times slower than these unit-stride pads.

    On the CPU backend (float32, one device) both gradients are native kernels instead
    (`kernels.depthwise_conv_transpose`, `kernels.depthwise_kernel_grad`: the same sums).
    The k * k reductions above each read the activations again; the native kernel gradient is
    one pass (benchmarks/RESULTS.md has the share of a train step). The forms above stay as the
    portable definition (GPU, TPU, other dtypes, several devices) and as the reference the
    native kernels are tested against.
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
    acc = accumulation_dtype(x.dtype)
    grad_out = grad_out.astype(acc)
    x_pad = jnp.pad(x.astype(acc), ((0, 0), (top, bottom), (left, right), (0, 0)))
    phases = x_pad.reshape(n, phase_h, stride, phase_w, stride, channels).transpose(
        2, 4, 0, 1, 3, 5
    )

    def place(grad, a, b):
        """grad at offset (a // stride, b // stride) of a zero phase-sized array."""
        row, col = a // stride, b // stride
        return jax.lax.pad(
            grad,
            jnp.zeros((), acc),
            (
                (0, 0, 0),
                (row, phase_h - row - out_h, 0),
                (col, phase_w - col - out_w, 0),
                (0, 0, 0),
            ),
        )

    def taps(kernel_grad: bool, input_grad: bool):
        """One pass over the taps: the kernel gradient and / or the input gradient's phases."""
        zeros = jnp.zeros((n, phase_h, phase_w, channels), acc)
        grad_phases = [[zeros] * stride for _ in range(stride)]
        grad_kernel = []
        for a in range(k):
            for b in range(k):
                placed = place(grad_out, a, b)
                if kernel_grad:
                    phase = phases[a % stride, b % stride]
                    grad_kernel.append(jnp.sum(phase * placed, axis=(0, 1, 2)))
                if input_grad:
                    term = placed * kernel[a, b, 0].astype(acc)
                    grad_phases[a % stride][b % stride] = grad_phases[a % stride][b % stride] + term
        return (jnp.stack(grad_kernel).reshape(kernel.shape) if kernel_grad else None), grad_phases

    grad_kernel = kernels.on_cpu(
        lambda x, grad_out: kernels.depthwise_kernel_grad(x, grad_out, k, stride, top, left),
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

    grad_x = kernels.on_cpu(
        lambda grad_out, kernel: kernels.depthwise_conv_transpose(
            grad_out, kernel, (height, width), stride, top, left
        ),
        portable_input_grad,
        grad_out,
        kernel.astype(acc),
    )
    return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


depthwise_conv_shifted.defvjp(_depthwise_shifted_forward, _depthwise_shifted_backward)


def dense_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """`lax.conv_general_dilated`, 'SAME' padding, NHWC x HWIO, accumulated in >= float32."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=_spatial_padding(x.shape, kernel.shape[0], stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=accumulation_dtype(x.dtype),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense_conv_few_inputs(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """`dense_conv` for an input of at most 4 channels: the stem, on RGB images.

    On the CPU backend (float32, one device) the forward pass and the kernel gradient run as
    native kernels (`kernels.small_input_conv` and its kernel gradient): XLA:CPU's convolution
    uses its vector units poorly with three input channels (benchmarks/RESULTS.md). Elsewhere
    this is `dense_conv` and its autodiff gradients.
    """
    out_hw, top, left = _native_window(x.shape, kernel.shape[0], stride)
    return kernels.on_cpu(
        lambda x, kernel: kernels.small_input_conv(x, kernel, out_hw, stride, top, left),
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

    grad_kernel = kernels.on_cpu(
        lambda x, grad_out: kernels.small_input_conv_kernel_grad(
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


def dense_conv_as_gemm(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """`dense_conv` as one GEMM: the k * k shifted windows stacked along channels (im2col).

    XLA:CPU runs a convolution whose feature map is smaller than its kernel, and its input
    gradient, far slower than this GEMM of the same products; on larger maps its own convolution
    is as fast, and reads k * k times less memory (benchmarks/RESULTS.md, section "MobileNetV3
    and ResNet-50 against PyTorch on the CPU", has the figures of `dense_conv_shapes.py`).
    """
    size = kernel.shape[0]
    batch, _, _, channels = x.shape
    (out_h, pad_h), (out_w, pad_w) = (same_padding(side, size, stride) for side in x.shape[1:3])
    padded = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    rows_span, cols_span = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
    windows = [
        padded[:, i : i + rows_span : stride, j : j + cols_span : stride]
        for i in range(size)
        for j in range(size)
    ]
    # (i, j, channel) is the order of the HWIO kernel's first three axes, flattened.
    rows = jnp.concatenate(windows, axis=-1).reshape(-1, size * size * channels)
    out = jnp.dot(
        rows,
        kernel.reshape(size * size * channels, -1),
        preferred_element_type=accumulation_dtype(x.dtype),
    )
    return out.reshape(batch, out_h, out_w, kernel.shape[-1])


def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The 1x1 convolution as `rows @ kernel[0, 0]` over the pixels flattened to GEMM rows.

    XLA:CPU lowers a dot on the 4-D array, and its gradients, to slower code than plain GEMMs.
    """
    rows = x.reshape(-1, x.shape[-1])
    out = jnp.dot(rows, kernel[0, 0], preferred_element_type=accumulation_dtype(x.dtype))
    return out.reshape(*x.shape[:-1], kernel.shape[-1])
