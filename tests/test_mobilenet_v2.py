"""MobileNetV2: sizes against the published Keras numbers, feature-map sizes, inverted residuals."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mobilenets
from mobilenets import mobilenet_v2
from mobilenets.mobilenet_v2 import InvertedResidual
from tests.references import abstract_model, counts, traced_shapes

LAYER_OPTIONS = dict(bn_momentum=0.999, bn_epsilon=1e-3)


@pytest.mark.parametrize(
    "alpha, params, batch_stats",
    # tf.keras.applications.MobileNetV2(alpha=..., weights=None).summary().
    [(1.0, 3_504_872, 34_112), (0.35, 1_677_128, 14_080), (1.4, 6_108_776, 47_936)],
)
def test_published_parameter_counts(alpha, params, batch_stats):
    model = abstract_model("mobilenet_v2", alpha=alpha, num_classes=1000)
    assert counts(model) == (params, batch_stats)
    profile = mobilenets.profile("mobilenet_v2", alpha=alpha, num_classes=1000)
    assert (profile.params, profile.batch_stats) == (params, batch_stats)


def test_channel_rounding_and_last_conv():
    model = abstract_model("mobilenet_v2", alpha=0.35)
    assert model.stem.out_features == 16
    outs = [block.project.out_features for block in model.blocks]
    assert outs == [8] + [8] * 2 + [16] * 3 + [24] * 4 + [32] * 3 + [56] * 3 + [112]
    assert model.last_conv.out_features == 1280  # not thinned for alpha < 1
    wide = abstract_model("mobilenet_v2", alpha=1.4)
    assert wide.last_conv.out_features == 1792  # widened for alpha > 1
    assert model.blocks[0].expand is None  # t = 1: no expansion layer
    assert model.blocks[1].expand.out_features == 6 * 8


@pytest.mark.parametrize(
    "size, final", [(224, 7), (192, 6), (160, 5), (128, 4), (96, 3), (50, 2), (32, 1)]
)
def test_final_feature_map_size(size, final):
    features = traced_shapes("mobilenet_v2", size, lambda model, x: model.features(x), alpha=0.35)
    assert features.shape == (1, final, final, 1280)
    assert mobilenets.profile("mobilenet_v2", alpha=0.35, image_size=size).feature_size == final


def test_shortcut_exactly_where_stride_1_and_equal_channels():
    model = abstract_model("mobilenet_v2", alpha=1.0)
    # Keras block_2, 4, 5, 7, 8, 9, 11, 12, 14, 15 end in an Add layer (expanded_conv is block 0).
    assert [i for i, b in enumerate(model.blocks) if b.use_shortcut] == [
        2,
        4,
        5,
        7,
        8,
        9,
        11,
        12,
        14,
        15,
    ]
    for (in_f, out_f, stride, _), block in zip(
        mobilenet_v2.ARCHITECTURE.block_configs(1.0), model.blocks
    ):
        assert block.use_shortcut == (stride == 1 and in_f == out_f)


@pytest.mark.parametrize(
    "in_features, out_features, stride, shortcut",
    [(8, 8, 1, True), (8, 16, 1, False), (8, 8, 2, False)],
)
def test_shortcut_adds_the_input(in_features, out_features, stride, shortcut):
    block = InvertedResidual(
        in_features, out_features, stride, 6, rngs=nnx.Rngs(0), **LAYER_OPTIONS
    )
    # Zero the projection's BatchNorm: the residual branch outputs 0, leaving only the shortcut.
    block.project.norm.scale[...] = jnp.zeros(out_features)
    block.project.norm.bias[...] = jnp.zeros(out_features)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, in_features)), jnp.float32)
    y = np.asarray(block(x))
    if shortcut:
        np.testing.assert_array_equal(y, x)
    else:
        np.testing.assert_array_equal(y, np.zeros_like(y))


def test_linear_bottleneck_projection_takes_negative_values():
    block = InvertedResidual(8, 16, 2, 6, rngs=nnx.Rngs(0), **LAYER_OPTIONS)
    assert block.expand.activation == block.depthwise.activation == "relu6"
    assert block.project.activation is None
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 8)), jnp.float32)
    y = np.asarray(block(x))  # no shortcut here: y is the projection's output
    assert y.shape == (2, 4, 4, 16)
    assert (y < 0).mean() > 0.25  # train-mode BatchNorm centres it; no ReLU removes the negatives
    assert y.max() > 0


def test_expansion_factor_sets_hidden_width():
    block = InvertedResidual(8, 16, 1, 6, rngs=nnx.Rngs(0), **LAYER_OPTIONS)
    params = nnx.state(block, nnx.Param)
    assert params["expand"]["conv"]["kernel"].shape == (1, 1, 8, 48)
    assert params["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 48)
    assert params["project"]["conv"]["kernel"].shape == (1, 1, 48, 16)
