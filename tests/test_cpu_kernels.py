"""The native CPU kernels (XLA FFI) against naive numpy loops and the portable jnp code."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenets import cpu_kernels, layers
from tests.test_layers import naive_dense_conv, naive_depthwise


@pytest.fixture(scope="module")
def native():
    if not cpu_kernels.load():
        pytest.skip("native CPU kernels unavailable (no C++ compiler, or turned off)")


def naive_kernel_grad(x, grad_out, kernel_size, stride, top, left):
    """dk[a, b, c] = sum over n, i, j of grad_out[n, i, j, c] * x[n, s*i+a-top, s*j+b-left, c]."""
    _, height, width, channels = x.shape
    out = np.zeros((kernel_size, kernel_size, 1, channels), np.float64)
    for a, b in itertools.product(range(kernel_size), repeat=2):
        for i, j in itertools.product(range(grad_out.shape[1]), range(grad_out.shape[2])):
            row, col = stride * i + a - top, stride * j + b - left
            if 0 <= row < height and 0 <= col < width:
                out[a, b, 0] += np.sum(grad_out[:, i, j, :] * x[:, row, col, :], axis=0)
    return out


def naive_input_grad(grad_out, kernel, in_shape, stride, top, left):
    """The adjoint of the depthwise convolution: scatter grad_out * kernel[a, b] back."""
    grad_x = np.zeros(in_shape, np.float64)
    k = kernel.shape[0]
    for a, b in itertools.product(range(k), repeat=2):
        for i, j in itertools.product(range(grad_out.shape[1]), range(grad_out.shape[2])):
            row, col = stride * i + a - top, stride * j + b - left
            if 0 <= row < in_shape[1] and 0 <= col < in_shape[2]:
                grad_x[:, row, col, :] += grad_out[:, i, j, :] * kernel[a, b, 0]
    return grad_x


CASES = [
    (3, 7, 7, 5, 3, 1),
    (11, 8, 9, 17, 3, 2),  # 11 images: not a multiple of the kernel gradient's 8 batch slices
    (2, 9, 8, 16, 3, 2),
    (1, 5, 6, 3, 2, 1),  # asymmetric 'SAME' padding (0, 1)
    (9, 1, 1, 33, 3, 1),  # 1x1 map: only the centre tap sees the image
]


def _case(batch, height, width, channels, kernel_size, stride):
    rng = np.random.default_rng(height * width + channels)
    x = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
    kernel = rng.normal(size=(kernel_size, kernel_size, 1, channels)).astype(np.float32)
    out_h, (top, _) = layers.same_padding(height, kernel_size, stride)
    out_w, (left, _) = layers.same_padding(width, kernel_size, stride)
    grad_out = rng.normal(size=(batch, out_h, out_w, channels)).astype(np.float32)
    return x, kernel, grad_out, (out_h, out_w), top, left


@pytest.mark.parametrize("batch, height, width, channels, kernel_size, stride", CASES)
def test_depthwise_conv_and_its_transpose_equal_naive_loops(
    native, batch, height, width, channels, kernel_size, stride
):
    x, kernel, grad_out, out_hw, top, left = _case(
        batch, height, width, channels, kernel_size, stride
    )
    conv = jax.jit(cpu_kernels.depthwise_conv, static_argnums=(2, 3, 4, 5))
    got = conv(x, kernel, out_hw, stride, top, left)
    np.testing.assert_allclose(
        np.asarray(got), naive_depthwise(x, kernel, stride), rtol=1e-5, atol=1e-5
    )
    transpose = jax.jit(cpu_kernels.depthwise_conv_transpose, static_argnums=(2, 3, 4, 5))
    got = transpose(grad_out, kernel, (height, width), stride, top, left)
    expected = naive_input_grad(grad_out, kernel, x.shape, stride, top, left)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch, height, width, channels, kernel_size, stride", CASES)
def test_depthwise_kernel_grad_equals_naive_loop(
    native, batch, height, width, channels, kernel_size, stride
):
    x, _, grad_out, _, top, left = _case(batch, height, width, channels, kernel_size, stride)
    got = jax.jit(cpu_kernels.depthwise_kernel_grad, static_argnums=(2, 3, 4, 5))(
        x, grad_out, kernel_size, stride, top, left
    )
    expected = naive_kernel_grad(x, grad_out, kernel_size, stride, top, left)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


def _shifted_grads(x, kernel, cotangent, stride):
    def loss(kernel, x):
        return jnp.sum(layers.depthwise_conv_shifted(x, kernel, stride) * cotangent)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(kernel, x)


@pytest.mark.parametrize("stride", [1, 2])
def test_native_and_portable_depthwise_gradients_agree_and_native_is_deterministic(
    native, monkeypatch, stride
):
    rng = np.random.default_rng(stride)
    x = jnp.asarray(rng.normal(size=(16, 12, 12, 24)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 24)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(16, 12 // stride, 12 // stride, 24)), jnp.float32)
    native_grads = _shifted_grads(x, kernel, cotangent, stride)  # forward, both gradients
    again = _shifted_grads(x, kernel, cotangent, stride)
    for first, second in zip(native_grads, again):
        np.testing.assert_array_equal(first, second)  # fixed batch slices: same sums every call
    monkeypatch.setattr(cpu_kernels, "load", lambda: False)
    xla_grads = _shifted_grads(x, kernel, cotangent, stride)
    for native_grad, xla_grad in zip(native_grads, xla_grads):
        np.testing.assert_allclose(native_grad, xla_grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "batch, height, width, in_channels, out_channels, stride",
    # 32 and 16 output channels: the 16-lane register path; 5, 8, 17: the plain loops.
    [
        (3, 9, 9, 3, 32, 2),
        (4, 7, 6, 2, 16, 1),
        (10, 8, 7, 3, 5, 2),
        (2, 6, 6, 1, 8, 1),
        (9, 5, 4, 4, 17, 1),
    ],
)
def test_small_input_conv_and_kernel_grad_equal_naive_loops(
    native, batch, height, width, in_channels, out_channels, stride
):
    rng = np.random.default_rng(in_channels * out_channels + stride)
    x = rng.normal(size=(batch, height, width, in_channels)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, in_channels, out_channels)).astype(np.float32)
    out_h, (top, _) = layers.same_padding(height, 3, stride)
    out_w, (left, _) = layers.same_padding(width, 3, stride)
    conv = jax.jit(cpu_kernels.small_input_conv, static_argnums=(2, 3, 4, 5))
    got = conv(x, kernel, (out_h, out_w), stride, top, left)
    np.testing.assert_allclose(
        np.asarray(got), naive_dense_conv(x, kernel, stride), rtol=1e-5, atol=1e-5
    )
    # dkernel[a, b, ci, co] = sum over n, i, j of x[n, s*i+a-top, s*j+b-left, ci] * g[n, i, j, co]
    grad_out = rng.normal(size=(batch, out_h, out_w, out_channels)).astype(np.float32)
    expected = np.zeros(kernel.shape)
    for a, b in itertools.product(range(3), repeat=2):
        for i, j in itertools.product(range(out_h), range(out_w)):
            row, col = stride * i + a - top, stride * j + b - left
            if 0 <= row < height and 0 <= col < width:
                expected[a, b] += x[:, row, col, :].T.astype(np.float64) @ grad_out[:, i, j, :]
    kernel_grad = jax.jit(cpu_kernels.small_input_conv_kernel_grad, static_argnums=(2, 3, 4, 5))
    got = kernel_grad(x, grad_out, 3, stride, top, left)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-4)


def test_stem_convolution_gradients_equal_autodiff_of_the_definition(native):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(6, 11, 10, 3)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 16)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(6, 6, 5, 16)), jnp.float32)

    def loss(conv):
        return lambda x, kernel: jnp.sum(conv(x, kernel, 2) * cotangent)

    native_grads = jax.jit(jax.grad(loss(layers.dense_conv_few_inputs), argnums=(0, 1)))(x, kernel)
    reference = jax.grad(loss(layers.dense_conv), argnums=(0, 1))(x, kernel)
    for got, expected in zip(native_grads, reference):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_moment_sums_equal_float64_sums(native):
    rng = np.random.default_rng(3)
    # 5000 rows (several slices and a partial row block), an offset that makes E[x^2] - E[x]^2
    # cancel: float32 sums in one stream would lose digits.
    x = (rng.normal(size=(5000, 19)) + 30.0).astype(np.float32)
    total, total_sq = jax.jit(cpu_kernels.moment_sums)(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(total), x64.sum(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(total_sq), (x64 * x64).sum(0), rtol=1e-6)


@pytest.mark.parametrize("relu6", [True, False])
def test_batch_norm_backward_equals_portable_formula(native, relu6):
    rng = np.random.default_rng(4)
    rows, channels = 3000, 21
    x = rng.normal(size=(rows, channels)).astype(np.float32) * 2.0
    grad = rng.normal(size=(rows, channels)).astype(np.float32)
    mean = x.mean(0)
    inv_std = (1.0 / np.sqrt(x.var(0) + 1e-3)).astype(np.float32)
    scale = rng.uniform(0.5, 3.0, channels).astype(np.float32)
    bias = rng.uniform(-1.0, 4.0, channels).astype(np.float32)  # both clips of ReLU6 active
    args = (grad, x, mean, inv_std, scale, bias)
    got = jax.jit(functools.partial(cpu_kernels.batch_norm_backward, relu6=relu6))(*args)
    portable = jax.jit(functools.partial(layers._batch_norm_backward_portable, relu6))(*args)
    for name, a, b in zip(("dx", "dscale", "dbias"), got, portable):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-4, err_msg=name)
    if relu6:  # the mask really cut: a plain BatchNorm gradient would differ
        plain = layers._batch_norm_backward_portable(False, *args)
        assert not np.allclose(np.asarray(got[2]), np.asarray(plain[2]), rtol=1e-2)


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("MOBILENETS_CPU_KERNELS", "0")
    cpu_kernels.load.cache_clear()
    try:
        assert cpu_kernels.load() is False
    finally:
        cpu_kernels.load.cache_clear()


def test_failing_compiler_falls_back_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CXX", "false")  # exists, fails on every call
    monkeypatch.setenv("MOBILENETS_CACHE_DIR", str(tmp_path))
    cpu_kernels.load.cache_clear()
    try:
        assert cpu_kernels.load() is False
    finally:
        cpu_kernels.load.cache_clear()
    assert "native CPU kernels unavailable" in caplog.text
    assert not list(tmp_path.glob("*.so"))
