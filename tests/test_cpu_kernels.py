"""The native CPU kernels (XLA FFI) against naive numpy loops and the portable jnp code.

Tolerances are float32 rounding bounds: for a sum of n products, gamma_n times the sum of their
absolute values (`references.float32_sum_bound`), computed by the same loops on |x|. They hold
for any summation order, so for any machine's vector width and thread split.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenets import layers
from mobilenets.cpu import batch_norm
from mobilenets.cpu import kernels as cpu_kernels
from tests.references import float32_sum_bound, naive_dense_conv, naive_depthwise


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


def assert_within(got, expected, bound):
    error = np.abs(np.asarray(got, np.float64) - expected)
    assert np.all(error <= bound), f"max excess over the float32 bound: {np.max(error - bound)}"


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
    taps = kernel_size * kernel_size
    abs_sums = naive_depthwise(np.abs(x), np.abs(kernel), stride)
    assert_within(got, naive_depthwise(x, kernel, stride), float32_sum_bound(abs_sums, taps))
    transpose = jax.jit(cpu_kernels.depthwise_conv_transpose, static_argnums=(2, 3, 4, 5))
    got = transpose(grad_out, kernel, (height, width), stride, top, left)
    expected = naive_input_grad(grad_out, kernel, x.shape, stride, top, left)
    abs_sums = naive_input_grad(np.abs(grad_out), np.abs(kernel), x.shape, stride, top, left)
    assert_within(got, expected, float32_sum_bound(abs_sums, taps))


@pytest.mark.parametrize("batch, height, width, channels, kernel_size, stride", CASES)
def test_depthwise_kernel_grad_equals_naive_loop(
    native, batch, height, width, channels, kernel_size, stride
):
    x, _, grad_out, _, top, left = _case(batch, height, width, channels, kernel_size, stride)
    got = jax.jit(cpu_kernels.depthwise_kernel_grad, static_argnums=(2, 3, 4, 5))(
        x, grad_out, kernel_size, stride, top, left
    )
    expected = naive_kernel_grad(x, grad_out, kernel_size, stride, top, left)
    abs_sums = naive_kernel_grad(np.abs(x), np.abs(grad_out), kernel_size, stride, top, left)
    terms = batch * grad_out.shape[1] * grad_out.shape[2]
    assert_within(got, expected, float32_sum_bound(abs_sums, terms))


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
    abs_sums = naive_dense_conv(np.abs(x), np.abs(kernel), stride)
    bound = float32_sum_bound(abs_sums, 9 * in_channels)
    assert_within(got, naive_dense_conv(x, kernel, stride), bound)
    # dkernel[a, b, ci, co] = sum over n, i, j of x[n, s*i+a-top, s*j+b-left, ci] * g[n, i, j, co]
    grad_out = rng.normal(size=(batch, out_h, out_w, out_channels)).astype(np.float32)

    def naive_kernel_grad(x, grad_out):
        expected = np.zeros(kernel.shape)
        for a, b in itertools.product(range(3), repeat=2):
            for i, j in itertools.product(range(out_h), range(out_w)):
                row, col = stride * i + a - top, stride * j + b - left
                if 0 <= row < height and 0 <= col < width:
                    expected[a, b] += x[:, row, col, :].T.astype(np.float64) @ grad_out[:, i, j, :]
        return expected

    kernel_grad = jax.jit(cpu_kernels.small_input_conv_kernel_grad, static_argnums=(2, 3, 4, 5))
    got = kernel_grad(x, grad_out, 3, stride, top, left)
    bound = float32_sum_bound(naive_kernel_grad(np.abs(x), np.abs(grad_out)), batch * out_h * out_w)
    assert_within(got, naive_kernel_grad(x, grad_out), bound)


def test_moment_sums_equal_float64_sums(native):
    rng = np.random.default_rng(3)
    # 5000 rows (several slices and a partial row block), an offset that makes E[x^2] - E[x]^2
    # cancel: float32 sums in one stream would lose digits.
    x = (rng.normal(size=(5000, 19)) + 30.0).astype(np.float32)
    total, total_sq = jax.jit(cpu_kernels.moment_sums)(x)
    x64 = x.astype(np.float64)
    # Blocks of 64 rows summed in float32 (gamma_64), the blocks in double, one final rounding.
    unit_roundoff = 2.0**-24
    block_bound = lambda abs_sum: float32_sum_bound(abs_sum, 64) + unit_roundoff * abs_sum
    assert_within(total, x64.sum(0), block_bound(np.abs(x64).sum(0)))
    assert_within(total_sq, (x64 * x64).sum(0), block_bound((x64 * x64).sum(0)))
    # Summed in one float32 stream, n = 5000 rows could lose up to gamma_5000 ~ 3e-4 relative.
    assert np.all(block_bound(np.abs(x64).sum(0)) < 1e-5 * np.abs(x64).sum(0))


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
    portable_formula = functools.partial(batch_norm._batch_norm_backward_portable, relu6)
    portable = jax.jit(portable_formula)(*args)
    with jax.enable_x64(True):
        exact = portable_formula(*[jnp.asarray(np.asarray(a, np.float64)) for a in args])
        exact = [np.asarray(e) for e in exact]
    # The float32 error of the portable formula, measured here, bounds the native one's up to a
    # factor: both compute the same sums and products in float32, in other orders.
    for name, a, b, e in zip(("dx", "dscale", "dbias"), got, portable, exact):
        null = np.max(np.abs(np.asarray(b, np.float64) - e))
        error = np.max(np.abs(np.asarray(a, np.float64) - e))
        assert error <= 8 * null + 4 * 2.0**-24 * np.max(np.abs(e)), (name, error, null)
    if relu6:  # the mask really cut: a plain BatchNorm gradient would differ
        plain = batch_norm._batch_norm_backward_portable(False, *args)
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
