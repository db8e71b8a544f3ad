"""Layer-level tests of mobilenets.layers against independent numpy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobilenets import layers
from mobilenets.layers import ConvBN, DepthwiseConv, make_divisible


def naive_depthwise(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """Per-channel 3x3 correlation with TensorFlow 'SAME' padding, written as plain loops."""
    n, h, w, c = x.shape
    k = kernel.shape[0]
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + k - h, 0)
    pad_w = max((out_w - 1) * stride + k - w, 0)
    top, left = pad_h // 2, pad_w // 2
    out = np.zeros((n, out_h, out_w, c), np.float64)
    for b, i, j, ch in itertools.product(range(n), range(out_h), range(out_w), range(c)):
        total = 0.0
        for a, d in itertools.product(range(k), range(k)):
            row, col = i * stride + a - top, j * stride + d - left
            if 0 <= row < h and 0 <= col < w:
                total += x[b, row, col, ch] * kernel[a, d, 0, ch]
        out[b, i, j, ch] = total
    return out


def naive_dense_conv(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """Dense k x k correlation, 'SAME' padding, as loops over output pixels."""
    n, h, w, _ = x.shape
    k = kernel.shape[0]
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + k - h, 0)
    pad_w = max((out_w - 1) * stride + k - w, 0)
    padded = np.pad(
        x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    )
    out = np.zeros((n, out_h, out_w, kernel.shape[-1]))
    for i, j in itertools.product(range(out_h), range(out_w)):
        patch = padded[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
        out[:, i, j, :] = np.einsum("nabi,abio->no", patch, kernel)
    return out


def test_make_divisible_matches_reference_rounding():
    # Values of the TF-slim / Keras `_make_divisible` as they appear in MobileNetV2 0.35 and 1.4.
    assert make_divisible(32 * 0.35) == 16  # 11.2 rounds to 8, < 90% of 11.2: bumped to 16
    assert make_divisible(16 * 0.35) == 8
    assert make_divisible(24 * 0.35) == 8
    assert make_divisible(64 * 0.35) == 24
    assert make_divisible(96 * 0.35) == 32
    assert make_divisible(160 * 0.35) == 56
    assert make_divisible(320 * 1.4) == 448
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(3) == 8  # never below the divisor


@pytest.mark.parametrize(
    "size, stride, expected",
    [
        (8, 2, (4, (0, 1))),
        (7, 2, (4, (1, 1))),
        (50, 2, (25, (0, 1))),
        (25, 2, (13, (1, 1))),
        (13, 1, (13, (1, 1))),
    ],
)
def test_same_padding_is_tensorflow_same(size, stride, expected):
    assert layers.same_padding(size, 3, stride) == expected


@pytest.fixture(scope="module")
def depthwise_case():
    rng = np.random.default_rng(0)
    channels = 5
    kernel = rng.normal(size=(3, 3, 1, channels)).astype(np.float32)
    return rng, channels, kernel


@pytest.mark.parametrize("impl", ["grouped", "shifted", "auto"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("height, width", [(7, 7), (8, 8), (7, 8)])
def test_depthwise_equals_naive_loop(depthwise_case, impl, stride, height, width):
    rng, channels, kernel = depthwise_case
    x = rng.normal(size=(2, height, width, channels)).astype(np.float32)
    conv = DepthwiseConv(channels, stride=stride, impl=impl, rngs=nnx.Rngs(0))
    conv.kernel[...] = jnp.asarray(kernel)
    got = np.asarray(conv(jnp.asarray(x)))
    np.testing.assert_allclose(got, naive_depthwise(x, kernel, stride), rtol=1e-5, atol=1e-5)


def test_auto_depthwise_is_shifted_on_cpu():
    assert jax.default_backend() == "cpu"
    assert DepthwiseConv(4, impl="auto", rngs=nnx.Rngs(0)).impl == "shifted"
    with pytest.raises(ValueError):
        DepthwiseConv(4, impl="fft", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel_size", [3, 2])  # 2: asymmetric 'SAME' padding at stride 1
def test_depthwise_impls_have_identical_parameters_values_and_gradients(stride, kernel_size):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 9, 10, 6)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(2, 5, 5, 6) if stride == 2 else (2, 9, 10, 6)))
    results = {}
    for impl in ("grouped", "shifted"):
        conv = DepthwiseConv(6, stride=stride, kernel_size=kernel_size, impl=impl, rngs=nnx.Rngs(7))
        params = nnx.state(conv, nnx.Param)

        def loss(kernel, x, impl=impl):
            return jnp.sum(layers._DEPTHWISE_FUNCTIONS[impl](x, kernel, stride) * cotangent)

        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(conv.kernel[...], x)
        results[impl] = (jax.tree.map(np.asarray, params), value, grads)
    (p_g, v_g, g_g), (p_s, v_s, g_s) = results["grouped"], results["shifted"]
    jax.tree.map(np.testing.assert_array_equal, p_g, p_s)  # same shapes, same initial values
    np.testing.assert_allclose(v_g, v_s, rtol=1e-5)
    for a, b in zip(g_g, g_s):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_depthwise_initialiser_uses_fan_in_of_nine():
    # He normal with fan in 9: std sqrt(2/9) whatever the channel count. A fan-out initialiser
    # would count 9 * C and give sqrt(2 / (9 * 512)), 22x smaller.
    kernel = DepthwiseConv(512, rngs=nnx.Rngs(0)).kernel[...]
    assert kernel.shape == (3, 3, 1, 512)
    np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / 9), rtol=0.05)


def test_pointwise_is_a_1x1_convolution():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    conv = layers.Pointwise(7, 3, rngs=nnx.Rngs(0))
    kernel = np.asarray(conv.kernel[...])
    assert kernel.shape == (1, 1, 7, 3)
    expected = naive_dense_conv(x, kernel, stride=1)
    np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x))), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [7, 8])
def test_dense_stem_conv_equals_naive_loop(size):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    conv = layers.Conv2D(3, 4, kernel_size=3, stride=2, rngs=nnx.Rngs(0))
    expected = naive_dense_conv(x, np.asarray(conv.kernel[...]), stride=2)
    np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x))), expected, rtol=1e-5, atol=1e-5)


def _conv_bn(**kwargs):
    options = dict(kind="pointwise", bn_momentum=0.9, bn_epsilon=1e-3, rngs=nnx.Rngs(0))
    return ConvBN(4, 6, **(options | kwargs))


def test_batchnorm_train_updates_running_stats_and_eval_uses_them():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(3, 5, 5, 4)) + 1.0, jnp.float32)
    layer = _conv_bn(activation=False)
    pre_bn = np.einsum("nhwi,io->nhwo", np.asarray(x), np.asarray(layer.conv.kernel[0, 0]))

    layer.train()
    y_train = np.asarray(layer(x))
    batch_mean, batch_var = pre_bn.mean((0, 1, 2)), pre_bn.var((0, 1, 2))
    np.testing.assert_allclose(layer.norm.mean[...], 0.1 * batch_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.norm.var[...], 0.9 + 0.1 * batch_var, rtol=1e-4)
    np.testing.assert_allclose(
        y_train, (pre_bn - batch_mean) / np.sqrt(batch_var + 1e-3), rtol=1e-4, atol=1e-4
    )

    layer.eval()
    mean, var = np.asarray(layer.norm.mean[...]), np.asarray(layer.norm.var[...])
    y_eval = np.asarray(layer(x))
    np.testing.assert_array_equal(layer.norm.mean[...], mean)  # eval leaves the stats alone
    np.testing.assert_array_equal(layer.norm.var[...], var)
    np.testing.assert_allclose(y_eval, (pre_bn - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-4)
    # Running statistics make each sample's output independent of the rest of the batch.
    np.testing.assert_allclose(np.asarray(layer(x[:1])), y_eval[:1], rtol=1e-6)


@pytest.mark.parametrize("apply_relu6", [False, True])
def test_batch_norm_in_training_matches_autodiff_of_nnx_batchnorm(apply_relu6):
    rng = np.random.default_rng(9)
    # An offset mean and a wide spread: ReLU6 clips at both ends, fast variance is exercised.
    x = jnp.asarray(rng.normal(size=(300, 5)) * 3.0 + 2.0, jnp.float32)
    scale = jnp.asarray(rng.uniform(1.0, 4.0, 5), jnp.float32)
    bias = jnp.asarray(rng.normal(size=5), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(300, 5)), jnp.float32)

    def reference(x, scale, bias):
        norm = nnx.BatchNorm(5, epsilon=1e-3, use_running_average=False, rngs=nnx.Rngs(0))
        norm.scale[...], norm.bias[...] = scale, bias
        y = norm(x)
        return layers.relu6(y) if apply_relu6 else y

    def custom(x, scale, bias):
        return layers.batch_norm_in_training(x, scale, bias, 1e-3, apply_relu6)[0]

    want_y, want_vjp = jax.vjp(reference, x, scale, bias)
    got_y, got_vjp = jax.vjp(custom, x, scale, bias)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
    if apply_relu6:
        assert 0 < np.mean(np.asarray(got_y) == 0.0) < 0.9 and np.any(np.asarray(got_y) == 6.0)
    for got, want in zip(got_vjp(cotangent), want_vjp(cotangent)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    _, mean, var = layers.batch_norm_in_training(x, scale, bias, 1e-3, apply_relu6)
    np.testing.assert_allclose(mean, np.asarray(x).mean(0), rtol=1e-5)
    np.testing.assert_allclose(var, np.asarray(x, np.float64).var(0), rtol=1e-4)


def test_relu6_bounds_activation_and_linear_layer_does_not():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 4, 4, 4)) * 50, jnp.float32)
    activated_layer, linear_layer = _conv_bn(activation=True), _conv_bn(activation=False)
    activated_layer.eval()  # initial running stats: BatchNorm keeps the large scale
    linear_layer.eval()
    activated, linear = np.asarray(activated_layer(x)), np.asarray(linear_layer(x))
    assert activated.min() == 0.0 and activated.max() == 6.0
    assert linear.min() < 0.0 and linear.max() > 6.0
    np.testing.assert_allclose(activated, np.clip(linear, 0, 6), rtol=1e-6)


def test_bfloat16_compute_keeps_batchnorm_in_float32():
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 6, 6, 4)), jnp.float32)
    layer = ConvBN(
        4,
        4,
        kind="depthwise",
        stride=2,
        bn_momentum=0.9,
        bn_epsilon=1e-3,
        dtype=jnp.bfloat16,
        rngs=nnx.Rngs(0),
    )
    y = layer(x)
    assert y.dtype == jnp.bfloat16
    for variable in jax.tree.leaves(nnx.state(layer)):
        assert variable.dtype == jnp.float32


@pytest.mark.parametrize("stride", [1, 2])
def test_shifted_depthwise_gradients_in_bfloat16_keep_input_dtypes(stride):
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(2, 8, 7, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.float32)

    def loss(x, kernel, impl):
        out = layers._DEPTHWISE_FUNCTIONS[impl](x, kernel, stride)
        assert out.dtype == jnp.float32  # accumulated in float32 whatever the input dtype
        return jnp.sum(out * out)

    reference = jax.grad(loss, argnums=(0, 1))(x, kernel, "grouped")
    grads = jax.grad(loss, argnums=(0, 1))(x.astype(jnp.bfloat16), kernel, "shifted")
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32
    for got, want in zip(grads, reference):
        got, want = np.asarray(got, np.float32), np.asarray(want)
        assert np.linalg.norm(got - want) < 0.02 * np.linalg.norm(want)
