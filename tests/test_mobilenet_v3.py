"""MobileNetV3 Small and Large: sizes against Keras' numbers and an independent count from the
Keras table, feature-map sizes, the bneck block, squeeze-and-excitation against numpy."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mobilenets
from mobilenets import mobilenet_v3
from mobilenets.layers import ConvBN
from mobilenets.mobilenet_v3 import Bneck, SqueezeExcite
from tests.references import abstract_model, counts, traced_shapes

LAYER_OPTIONS = dict(bn_momentum=0.999, bn_epsilon=1e-3)
NAMES = {
    ("small", False): "mobilenet_v3_small",
    ("large", False): "mobilenet_v3_large",
    ("small", True): "mobilenet_v3_small_minimalistic",
    ("large", True): "mobilenet_v3_large_minimalistic",
}


# keras.applications.mobilenet_v3, transcribed from its `stack_fn`s as the arguments of
# `_inverted_res_block`: (expansion, filters, kernel, stride, se, nonlinearity). "K", "SE" and
# "NL" are Keras' variables: 5, 0.25 and hard-swish, or 3, None and ReLU when minimalistic.
KERAS_SMALL = [
    (1, 16, 3, 2, "SE", "RE"),
    (72.0 / 16, 24, 3, 2, None, "RE"),
    (88.0 / 24, 24, 3, 1, None, "RE"),
    (4, 40, "K", 2, "SE", "NL"),
    (6, 40, "K", 1, "SE", "NL"),
    (6, 40, "K", 1, "SE", "NL"),
    (3, 48, "K", 1, "SE", "NL"),
    (3, 48, "K", 1, "SE", "NL"),
    (6, 96, "K", 2, "SE", "NL"),
    (6, 96, "K", 1, "SE", "NL"),
    (6, 96, "K", 1, "SE", "NL"),
]
KERAS_LARGE = [
    (1, 16, 3, 1, None, "RE"),
    (4, 24, 3, 2, None, "RE"),
    (3, 24, 3, 1, None, "RE"),
    (3, 40, "K", 2, "SE", "RE"),
    (3, 40, "K", 1, "SE", "RE"),
    (3, 40, "K", 1, "SE", "RE"),
    (6, 80, 3, 2, None, "NL"),
    (2.5, 80, 3, 1, None, "NL"),
    (2.3, 80, 3, 1, None, "NL"),
    (2.3, 80, 3, 1, None, "NL"),
    (6, 112, 3, 1, "SE", "NL"),
    (6, 112, 3, 1, "SE", "NL"),
    (6, 160, "K", 2, "SE", "NL"),
    (6, 160, "K", 1, "SE", "NL"),
    (6, 160, "K", 1, "SE", "NL"),
]
KERAS = {"small": (KERAS_SMALL, 1024), "large": (KERAS_LARGE, 1280)}


def keras_depth(v, divisor=8):
    """Keras' `_depth`, restated here so the count below does not use the package."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def keras_counts(model_type, alpha, minimalistic, classes):
    """(trainable, non-trainable) numbers of Keras' MobileNetV3, layer by layer from its code."""
    rows, last_point_ch = KERAS[model_type]
    params = stats = 0

    def conv_bn(in_ch, out_ch, kernel=1, depthwise=False):
        nonlocal params, stats
        params += kernel * kernel * (in_ch if depthwise else in_ch * out_ch)
        params += 2 * out_ch  # gamma, beta
        stats += 2 * out_ch  # moving mean, moving variance

    def conv_with_bias(in_ch, out_ch):  # a 1x1 convolution, no BatchNorm
        nonlocal params
        params += in_ch * out_ch + out_ch

    conv_bn(3, 16, 3)  # the stem: 16 filters at every alpha
    infilters = 16
    for block_id, (expansion, filters, kernel, _, se, _) in enumerate(rows):
        kernel = (3 if minimalistic else 5) if kernel == "K" else kernel
        filters, expanded = keras_depth(filters * alpha), keras_depth(infilters * expansion)
        if block_id:
            conv_bn(infilters, expanded)
        conv_bn(expanded, expanded, kernel, depthwise=True)
        if se == "SE" and not minimalistic:
            squeezed = keras_depth(expanded * 0.25)
            conv_with_bias(expanded, squeezed)
            conv_with_bias(squeezed, expanded)
        conv_bn(expanded, filters)
        infilters = filters
    last_conv_ch = keras_depth(infilters * 6)
    conv_bn(infilters, last_conv_ch)
    if alpha > 1.0:
        last_point_ch = keras_depth(last_point_ch * alpha)
    conv_with_bias(last_conv_ch, last_point_ch)
    conv_with_bias(last_point_ch, classes)  # the 'logits' 1x1 convolution
    return params, stats


@pytest.mark.parametrize(
    "name, params, batch_stats",
    # The Keras application's trainable / non-trainable counts (alpha 1, 1000 classes).
    [("mobilenet_v3_small", 2_542_856, 12_112), ("mobilenet_v3_large", 5_483_032, 24_400)],
)
def test_keras_parameter_counts(name, params, batch_stats):
    model = abstract_model(name, num_classes=1000)
    assert counts(model) == (params, batch_stats)
    profile = mobilenets.profile(name, alpha=1.0, num_classes=1000)
    assert (profile.params, profile.batch_stats) == (params, batch_stats)


def test_independent_count_reproduces_the_keras_numbers():
    assert keras_counts("small", 1.0, False, 1000) == (2_542_856, 12_112)
    assert keras_counts("large", 1.0, False, 1000) == (5_483_032, 24_400)


@pytest.mark.parametrize("model_type", ["small", "large"])
@pytest.mark.parametrize("minimalistic", [False, True])
@pytest.mark.parametrize("alpha, classes", [(1.0, 1000), (0.75, 1000), (0.5, 2), (1.3, 2)])
def test_counts_equal_the_keras_layer_by_layer_count(model_type, minimalistic, alpha, classes):
    name = NAMES[model_type, minimalistic]
    model = abstract_model(name, alpha=alpha, num_classes=classes)
    expected = keras_counts(model_type, alpha, minimalistic, classes)
    assert counts(model) == expected


def test_two_classes_at_96_pixels():
    # The study's setting: the counts do not depend on the image size; the final map is 3x3.
    for (model_type, minimalistic), name in NAMES.items():
        profile = mobilenets.profile(name, alpha=1.0, image_size=96, num_classes=2)
        expected = keras_counts(model_type, 1.0, minimalistic, 2)
        assert (profile.params, profile.batch_stats, profile.feature_size) == (*expected, 3)
    assert keras_counts("small", 1.0, False, 2) == (1_519_906, 12_112)
    assert keras_counts("large", 1.0, False, 2) == (4_204_594, 24_400)


@pytest.mark.parametrize("model_type", ["small", "large"])
def test_block_widths_kernels_nonlinearities_and_se_follow_the_tables(model_type):
    rows, last_point_ch = KERAS[model_type]
    model = abstract_model(NAMES[model_type, False], alpha=0.75)
    assert model.stem.out_features == 16 and model.stem.activation == "hard_swish"
    infilters = 16
    for block, (expansion, filters, kernel, stride, se, nonlinearity) in zip(model.blocks, rows):
        expanded = keras_depth(infilters * expansion)
        assert block.depthwise.out_features == expanded
        kernel = 5 if kernel == "K" else kernel
        assert block.depthwise.conv.kernel_size == (kernel, kernel)
        assert block.depthwise.stride == stride
        assert block.depthwise.activation == ("relu" if nonlinearity == "RE" else "hard_swish")
        assert (block.squeeze_excite is not None) == (se == "SE")
        if se == "SE":
            assert block.squeeze_excite.squeeze.out_features == keras_depth(expanded * 0.25)
        assert block.project.activation is None  # the linear bottleneck
        assert block.project.out_features == keras_depth(filters * 0.75)
        infilters = block.project.out_features
    assert model.last_conv.out_features == keras_depth(infilters * 6)
    assert model.last_conv.activation == model.head.hidden_activation == "hard_swish"
    assert model.head.hidden.out_features == last_point_ch  # not thinned below alpha 1
    assert model.head.dropout.rate == 0.2 and model.stem.norm.momentum == 0.999
    wide = abstract_model(NAMES[model_type, False], alpha=1.3)
    assert wide.head.hidden.out_features == keras_depth(last_point_ch * 1.3)  # widened above


@pytest.mark.parametrize("model_type", ["small", "large"])
def test_minimalistic_has_3x3_kernels_relu_and_no_se(model_type):
    model = abstract_model(NAMES[model_type, True])
    assert all(unit.activation in ("relu", None) for unit in model.units())
    assert all(
        unit.conv.kernel_size == (3, 3) for unit in model.units() if unit.kind != "pointwise"
    )
    assert all(block.squeeze_excite is None for block in model.blocks)
    assert model.head.hidden_activation == "relu"


@pytest.mark.parametrize("model_type", ["small", "large"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.3])
def test_expansion_and_shortcut_rules(model_type, alpha):
    model = abstract_model(NAMES[model_type, False], alpha=alpha)
    # Keras' `if block_id:` expands every block but the first.
    assert [block.expand is None for block in model.blocks] == [True] + [False] * (
        len(model.blocks) - 1
    )
    # Keras adds the input where stride == 1 and filters == infilters.
    rows, _ = KERAS[model_type]
    infilters = 16
    for (_, filters, _, stride, _, _), block in zip(rows, model.blocks):
        filters = keras_depth(filters * alpha)
        assert block.use_shortcut == (stride == 1 and infilters == filters)
        infilters = filters
    if alpha == 1.0:  # Keras' `expanded_conv_*_add` layers at alpha 1
        expected = {"small": [2, 4, 5, 7, 9, 10], "large": [0, 2, 4, 5, 7, 8, 9, 11, 13, 14]}
        assert [i for i, b in enumerate(model.blocks) if b.use_shortcut] == expected[model_type]


@pytest.mark.parametrize("size, final", [(224, 7), (96, 3), (50, 2), (32, 1)])
def test_final_feature_map_size(size, final):
    for name, channels in (("mobilenet_v3_small", 288), ("mobilenet_v3_large", 480)):
        features = traced_shapes(name, size, lambda model, x: model.features(x), alpha=0.5)
        assert features.shape == (1, final, final, channels)  # 6 x the last block's 48 / 80
        assert mobilenets.profile(name, alpha=0.5, image_size=size).feature_size == final


def _exact_uniform(rng, shape, low, high, step):
    """Random multiples of `step` (a power of two) in [low, high]: exact in float32."""
    return (rng.integers(round(low / step), round(high / step) + 1, shape) * step).astype(
        np.float32
    )


def test_squeeze_excite_equals_numpy():
    rng = np.random.default_rng(0)
    module = SqueezeExcite(8, 4, rngs=nnx.Rngs(0))
    # Weights and inputs on coarse binary grids: the pooling (16 pixels) and both dense layers
    # are exact in float32, so only the hard sigmoid's 1/6, its product and the final product
    # round: three roundings of at most 2^-24 relative each.
    w1, b1 = _exact_uniform(rng, (8, 4), -1, 1, 0.25), _exact_uniform(rng, 4, -1, 1, 0.25)
    w2, b2 = _exact_uniform(rng, (4, 8), -1, 1, 0.25), _exact_uniform(rng, 8, -2, 2, 0.25)
    module.squeeze.kernel[...], module.squeeze.bias[...] = w1, b1
    module.excite.kernel[...], module.excite.bias[...] = w2, b2
    x = _exact_uniform(rng, (3, 4, 4, 8), -4, 4, 0.5)
    got = np.asarray(module(jnp.asarray(x)))

    x64 = x.astype(np.float64)
    squeezed = np.maximum(x64.mean(axis=(1, 2)) @ w1 + b1, 0)
    weights = np.clip(squeezed @ w2 + b2 + 3, 0, 6) / 6
    assert 0.2 < np.mean((weights > 0) & (weights < 1))  # the linear piece is exercised
    np.testing.assert_allclose(got, x64 * weights[:, None, None, :], rtol=2.0**-22, atol=0)


@pytest.mark.parametrize(
    "in_features, out_features, stride, shortcut",
    [(16, 16, 1, True), (16, 24, 1, False), (16, 16, 2, False)],
)
def test_bneck_shortcut_adds_the_input(in_features, out_features, stride, shortcut):
    block = Bneck(
        in_features,
        out_features,
        stride,
        3,
        kernel_size=5,
        activation="hard_swish",
        squeeze_excite=True,
        rngs=nnx.Rngs(0),
        **LAYER_OPTIONS,
    )
    # Zero the projection's BatchNorm: the residual branch outputs 0, leaving only the shortcut.
    block.project.norm.scale[...] = jnp.zeros(out_features)
    block.project.norm.bias[...] = jnp.zeros(out_features)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, in_features)), jnp.float32)
    y = np.asarray(block(x))
    np.testing.assert_array_equal(y, x if shortcut else np.zeros_like(y))


def test_bneck_runs_expand_depthwise_se_project_in_order():
    block = Bneck(
        16,
        24,
        2,
        6,
        kernel_size=5,
        activation="hard_swish",
        squeeze_excite=True,
        rngs=nnx.Rngs(0),
        **LAYER_OPTIONS,
    )
    block.eval()
    params = nnx.state(block, nnx.Param)
    assert params["expand"]["conv"]["kernel"].shape == (1, 1, 16, 96)
    assert params["depthwise"]["conv"]["kernel"].shape == (5, 5, 1, 96)
    assert params["squeeze_excite"]["squeeze"]["kernel"].shape == (96, 24)
    assert params["project"]["conv"]["kernel"].shape == (1, 1, 96, 24)
    assert [type(u) for u in block.units()] == [ConvBN] * 3  # SE has no BatchNorm
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 10, 10, 16)), jnp.float32)
    # The same computation from the block's parts, in the order of Fig. 4.
    expected = block.project(block.squeeze_excite(block.depthwise(block.expand(x))))
    np.testing.assert_array_equal(block(x), expected)
    assert block(x).shape == (2, 5, 5, 24)


def test_registry_builds_every_variant():
    for (model_type, minimalistic), name in NAMES.items():
        model = abstract_model(name)
        expected = getattr(
            mobilenet_v3, model_type.upper() + ("_MINIMALISTIC" if minimalistic else "")
        )
        assert isinstance(model, mobilenets.MobileNet) and model.architecture is expected
        assert model.head.classifier.out_features == 2
