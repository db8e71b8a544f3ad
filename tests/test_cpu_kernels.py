"""The native CPU kernel (depthwise kernel gradient via XLA's FFI) against numpy and XLA."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenets import cpu_kernels, layers


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


@pytest.mark.parametrize(
    "batch, height, width, channels, kernel_size, stride",
    [
        (3, 7, 7, 5, 3, 1),
        (11, 8, 9, 17, 3, 2),  # 11 images: not a multiple of the kernel's 8 batch slices
        (2, 9, 8, 16, 3, 2),
        (1, 5, 6, 3, 2, 1),  # asymmetric 'SAME' padding (0, 1)
        (9, 1, 1, 33, 3, 1),  # 1x1 map: only the centre tap sees the image
    ],
)
def test_depthwise_kernel_grad_equals_naive_loop(
    native, batch, height, width, channels, kernel_size, stride
):
    rng = np.random.default_rng(height * width + channels)
    x = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
    out_h, (top, _) = layers.same_padding(height, kernel_size, stride)
    out_w, (left, _) = layers.same_padding(width, kernel_size, stride)
    grad_out = rng.normal(size=(batch, out_h, out_w, channels)).astype(np.float32)
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
def test_native_and_xla_backward_agree_and_native_is_deterministic(native, monkeypatch, stride):
    rng = np.random.default_rng(stride)
    x = jnp.asarray(rng.normal(size=(16, 12, 12, 24)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 24)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(16, 12 // stride, 12 // stride, 24)), jnp.float32)
    native_grads = _shifted_grads(x, kernel, cotangent, stride)
    again = _shifted_grads(x, kernel, cotangent, stride)
    for first, second in zip(native_grads, again):
        np.testing.assert_array_equal(first, second)  # fixed batch slices: same sums every call
    monkeypatch.setattr(cpu_kernels, "load", lambda: False)
    xla_grads = _shifted_grads(x, kernel, cotangent, stride)
    np.testing.assert_array_equal(native_grads[1], xla_grads[1])  # input gradient: same XLA code
    np.testing.assert_allclose(native_grads[0], xla_grads[0], rtol=1e-5, atol=1e-4)


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
