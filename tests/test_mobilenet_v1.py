"""MobileNetV1: sizes against the published Keras numbers, feature-map sizes, block structure."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mobilenets
from mobilenets import mobilenet_v1
from mobilenets.mobilenet_v1 import DepthwiseSeparable
from tests.references import abstract_model, counts, traced_shapes


@pytest.mark.parametrize(
    "alpha, params, batch_stats",
    # tf.keras.applications.MobileNet(alpha=..., weights=None).summary(): trainable / non-trainable.
    [(1.0, 4_231_976, 21_888), (0.5, 1_331_592, 10_944), (0.25, 470_072, 5_472)],
)
def test_published_parameter_counts(alpha, params, batch_stats):
    model = abstract_model("mobilenet_v1", alpha=alpha, num_classes=1000)  # allocates nothing
    assert counts(model) == (params, batch_stats)
    profile = mobilenets.profile("mobilenet_v1", alpha=alpha, num_classes=1000)
    assert (profile.params, profile.batch_stats) == (params, batch_stats)


def test_layer_widths_follow_table_1_with_truncation():
    model = abstract_model("mobilenet_v1", alpha=0.75)
    assert model.stem.out_features == 24
    widths = [block.pointwise.out_features for block in model.blocks]
    assert widths == [48, 96, 96, 192, 192, 384, 384, 384, 384, 384, 384, 768, 768]
    strides = [block.depthwise.stride for block in model.blocks]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    # Keras truncates: int(64 * 0.3) = 19 (V2 would round to a multiple of 8).
    assert mobilenet_v1.ARCHITECTURE.width(64 * 0.3) == 19


@pytest.mark.parametrize("size, final", [(224, 7), (192, 6), (160, 5), (128, 4), (50, 2), (32, 1)])
def test_final_feature_map_size(size, final):
    features = traced_shapes("mobilenet_v1", size, lambda model, x: model.features(x), alpha=0.25)
    assert features.shape == (1, final, final, 256)
    assert mobilenets.profile("mobilenet_v1", alpha=0.25, image_size=size).feature_size == final


def test_separable_block_is_depthwise_then_pointwise_each_with_relu6():
    block = DepthwiseSeparable(4, 8, 2, bn_momentum=0.99, bn_epsilon=1e-3, rngs=nnx.Rngs(0))
    assert block.depthwise.kind == "depthwise" and block.depthwise.stride == 2
    assert block.pointwise.kind == "pointwise"
    assert block.depthwise.activation == block.pointwise.activation == "relu6"
    assert nnx.state(block, nnx.Param)["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 4)
    assert nnx.state(block, nnx.Param)["pointwise"]["conv"]["kernel"].shape == (1, 1, 4, 8)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 7, 4)) * 10, jnp.float32)
    y = np.asarray(block(x))
    assert y.shape == (2, 4, 4, 8)
    assert y.min() == 0.0 and y.max() <= 6.0  # ReLU6 after the pointwise convolution


def test_units_list_the_built_model_in_order():
    model = abstract_model("mobilenet_v1", alpha=1.0)
    units = model.units()
    assert len(units) == 1 + 2 * 13 and model.architecture.feature_channels(1.0) == 1024
    assert [u.kind for u in units[:3]] == ["dense", "depthwise", "pointwise"]
    assert units[-1].out_features == model.head.classifier.in_features == 1024
