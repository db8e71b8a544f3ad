"""The reference layers of mobilenets.layers against independent numpy references.

Tolerances: the references are float64 loops; the layers compute in float32. Each comparison is
bounded by the float32 error of its sums (`references.float32_sum_bound`), computed from the same
loops on absolute values, so it holds whatever order a machine sums in.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mobilenets
from mobilenets import layers
from mobilenets.layers import ConvBN, make_divisible
from tests.references import float32_sum_bound, naive_dense_conv, naive_depthwise


def unit_options(seed: int = 0) -> dict:
    """ConvBN's keyword options, with a fresh random stream (so equal seeds give equal layers)."""
    return dict(bn_momentum=0.9, bn_epsilon=1e-3, rngs=nnx.Rngs(seed))


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


def assert_close_to_loop(got, expected, abs_expected, num_terms):
    bound = float32_sum_bound(abs_expected, num_terms)
    np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - expected), bound + 1e-30)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("height, width", [(7, 7), (8, 8), (7, 8)])
def test_depthwise_convolution_equals_naive_loop(stride, height, width):
    rng = np.random.default_rng(height * width + stride)
    channels = 5
    x = rng.normal(size=(2, height, width, channels)).astype(np.float32)
    unit = ConvBN(
        channels, channels, kernel_size=3, stride=stride, groups=channels, **unit_options()
    )
    assert unit.kind == "depthwise"
    kernel = np.asarray(unit.conv.kernel[...])
    got = unit.conv(jnp.asarray(x))
    expected = naive_depthwise(x, kernel, stride)
    assert_close_to_loop(got, expected, naive_depthwise(np.abs(x), np.abs(kernel), stride), 9)


def test_depthwise_initialiser_uses_fan_in_of_nine():
    # He normal with fan in 9: std sqrt(2/9) whatever the channel count. A fan-out initialiser
    # would count 9 * C and give sqrt(2 / (9 * 512)), 22x smaller.
    kernel = ConvBN(512, 512, kernel_size=3, groups=512, **unit_options()).conv.kernel[...]
    assert kernel.shape == (3, 3, 1, 512)
    np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / 9), rtol=0.05)


def test_pointwise_is_a_1x1_convolution():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    unit = ConvBN(7, 3, **unit_options())
    assert unit.kind == "pointwise"
    kernel = np.asarray(unit.conv.kernel[...])
    assert kernel.shape == (1, 1, 7, 3)
    expected = naive_dense_conv(x, kernel, stride=1)
    abs_expected = naive_dense_conv(np.abs(x), np.abs(kernel), stride=1)
    assert_close_to_loop(unit.conv(jnp.asarray(x)), expected, abs_expected, 7)


@pytest.mark.parametrize("size", [7, 8])
def test_dense_stem_conv_equals_naive_loop(size):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    unit = ConvBN(3, 4, kernel_size=3, stride=2, **unit_options())
    assert unit.kind == "dense"
    kernel = np.asarray(unit.conv.kernel[...])
    expected = naive_dense_conv(x, kernel, stride=2)
    abs_expected = naive_dense_conv(np.abs(x), np.abs(kernel), stride=2)
    assert_close_to_loop(unit.conv(jnp.asarray(x)), expected, abs_expected, 27)


@pytest.mark.parametrize("implementation", ["reference", "cpu"])
def test_batchnorm_train_updates_running_stats_and_eval_uses_them(implementation):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(3, 5, 5, 4)) + 1.0, jnp.float32)
    layer = ConvBN(4, 6, activation=None, implementation=implementation, **unit_options())
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


def test_relu6_bounds_activation_and_linear_layer_does_not():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 4, 4, 4)) * 50, jnp.float32)
    activated_layer = ConvBN(4, 6, activation="relu6", **unit_options())
    linear_layer = ConvBN(4, 6, activation=None, **unit_options())
    activated_layer.eval()  # initial running stats: BatchNorm keeps the large scale
    linear_layer.eval()
    activated, linear = np.asarray(activated_layer(x)), np.asarray(linear_layer(x))
    assert activated.min() == 0.0 and activated.max() == 6.0
    assert linear.min() < 0.0 and linear.max() > 6.0
    np.testing.assert_allclose(activated, np.clip(linear, 0, 6), rtol=1e-6)


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("implementation", ["reference", "cpu"])
def test_explicit_padding_is_zero_padding_then_valid(size, implementation):
    # ResNet's Keras stem: 3 zeros on every side, then a 'valid' 7x7 stride-2 convolution. On
    # even sizes 'SAME' would pad (2, 3): the same output size, windows one pixel off.
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    unit = ConvBN(
        3,
        4,
        kernel_size=7,
        stride=2,
        padding=3,
        use_bias=True,
        activation=None,
        implementation=implementation,
        **unit_options(),
    )
    unit.conv.bias[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
    assert unit.output_size(size) == -(-size // 2)
    kernel = np.asarray(unit.conv.kernel[...])
    expected = naive_dense_conv(x, kernel, 2, padding=3) + np.asarray(unit.conv.bias[...])
    abs_expected = naive_dense_conv(np.abs(x), np.abs(kernel), 2, padding=3)
    abs_expected += np.abs(np.asarray(unit.conv.bias[...]))
    if implementation == "reference":
        assert_close_to_loop(unit.conv(jnp.asarray(x)), expected, abs_expected, 7 * 7 * 3 + 1)
    # The whole unit: train-mode BatchNorm of that convolution, in both implementations.
    unit.train()
    mean, var = expected.mean((0, 1, 2)), expected.var((0, 1, 2))
    np.testing.assert_allclose(
        unit(jnp.asarray(x)), (expected - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="padding"):
        ConvBN(3, 4, padding="VALID", **unit_options())


def test_hard_sigmoid_and_hard_swish_are_their_formulas():
    # Every float32 from -8 to 8 in steps of 2^-7 (exact), and the kinks at -3 and 3.
    x = np.arange(-8, 8, 2.0**-7).astype(np.float32)
    x64 = x.astype(np.float64)
    relu6_of_shifted = np.minimum(np.maximum(x64 + 3, 0), 6)
    sigmoid, swish = layers.hard_sigmoid(jnp.asarray(x)), layers.hard_swish(jnp.asarray(x))
    assert layers.ACTIVATIONS["hard_swish"] is layers.hard_swish
    # x + 3 is exact here; 1/6, the product and the division each round once (2^-24 relative).
    np.testing.assert_allclose(sigmoid, relu6_of_shifted / 6, rtol=2.0**-22, atol=0)
    np.testing.assert_allclose(swish, x64 * relu6_of_shifted / 6, rtol=2.0**-22, atol=0)
    # The pieces: 0 below -3; x (and 1) from 3 on, exactly.
    low, high = x <= -3, x >= 3
    assert np.all(np.asarray(sigmoid)[low] == 0) and np.all(np.asarray(swish)[low] == 0)
    assert np.all(np.asarray(sigmoid)[high] == 1)
    np.testing.assert_array_equal(np.asarray(swish)[high], x[high])


@pytest.mark.parametrize("implementation", ["reference", "cpu"])
def test_hard_swish_unit_applies_it_after_batchnorm(implementation):
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 5, 5, 4)) * 3, jnp.float32)
    unit = ConvBN(4, 6, activation="hard_swish", implementation=implementation, **unit_options())
    linear = ConvBN(4, 6, activation=None, **unit_options())  # same seed: same weights
    for layer in (unit, linear):
        layer.train()
        layer.norm.scale[...] = jnp.full(6, 4.0)  # normalised values, spread over [-12, 12]
    got, pre_activation = np.asarray(unit(x)), np.asarray(linear(x))
    assert (pre_activation < -3).any() and (pre_activation > 3).any()  # all three pieces used
    np.testing.assert_allclose(got, layers.hard_swish(pre_activation), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("implementation", ["reference", "cpu"])
def test_bfloat16_compute_keeps_batchnorm_in_float32(implementation):
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 6, 6, 4)), jnp.float32)
    layer = ConvBN(
        4,
        4,
        kernel_size=3,
        stride=2,
        groups=4,
        dtype=jnp.bfloat16,
        implementation=implementation,
        **unit_options(),
    )
    y = layer(x)
    assert y.dtype == jnp.bfloat16
    for variable in jax.tree.leaves(nnx.state(layer)):
        assert variable.dtype == jnp.float32


def test_implementation_auto_is_the_cpu_path_on_the_cpu_and_unknown_ones_are_refused():
    assert jax.default_backend() == "cpu"
    assert mobilenets.resolve_implementation("auto") == "cpu"
    with pytest.raises(ValueError, match="implementation"):
        mobilenets.resolve_implementation("fft")
    with pytest.raises(ValueError, match="implementation"):
        ConvBN(4, 4, implementation="fft", **unit_options())
