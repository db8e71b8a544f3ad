"""ResNet-50: sizes against Keras' numbers and an independent count, the stem and max pooling's
shapes, the bottleneck block against a float64 numpy computation, projection shortcuts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mobilenets
from mobilenets.resnet import Bottleneck, MaxPool
from tests.references import abstract_model, counts, naive_dense_conv, traced_shapes

LAYER_OPTIONS = dict(bn_momentum=0.99, bn_epsilon=1.001e-5)


def keras_resnet50_counts(classes):
    """(trainable, non-trainable) numbers of keras.applications.ResNet50, from its code: every
    Conv2D has a bias; every BatchNormalization 2 trainable and 2 non-trainable per channel."""
    params = stats = 0

    def conv_bn(in_ch, out_ch, kernel):
        nonlocal params, stats
        params += kernel * kernel * in_ch * out_ch + out_ch + 2 * out_ch
        stats += 2 * out_ch

    conv_bn(3, 64, 7)  # conv1
    in_ch = 64
    for filters, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):  # stack_residual_blocks_v1
        for block in range(blocks):
            if block == 0:
                conv_bn(in_ch, 4 * filters, 1)  # the conv_shortcut
            conv_bn(in_ch, filters, 1)
            conv_bn(filters, filters, 3)
            conv_bn(filters, 4 * filters, 1)
            in_ch = 4 * filters
    params += in_ch * classes + classes  # predictions
    return params, stats


@pytest.mark.parametrize(
    "classes, params, batch_stats",
    # Keras' ResNet50(weights=None): 25,636,712 weights, of which 53,120 non-trainable; the
    # 2-class count is the independent count above.
    [(1000, 25_583_592, 53_120), (2, keras_resnet50_counts(2)[0], 53_120)],
)
def test_parameter_counts(classes, params, batch_stats):
    assert keras_resnet50_counts(classes) == (params, batch_stats)
    model = abstract_model("resnet50", num_classes=classes)
    assert counts(model) == (params, batch_stats)
    profile = mobilenets.profile("resnet50", image_size=96, num_classes=classes)
    assert (profile.params, profile.batch_stats) == (params, batch_stats)
    assert keras_resnet50_counts(2) == (23_538_690, 53_120)


def test_structure_follows_table_1():
    model = abstract_model("resnet50")
    assert model.stem.conv.kernel_size == (7, 7) and model.stem.stride == 2
    assert model.stem.conv.use_bias and model.stem.activation == "relu"
    assert model.stem.norm.epsilon == 1.001e-5 and model.stem.norm.momentum == 0.99
    assert len(model.blocks) == 3 + 4 + 6 + 3
    widths = [block.spatial.out_features for block in model.blocks]
    assert widths == [64] * 3 + [128] * 4 + [256] * 6 + [512] * 3
    assert [block.restore.out_features for block in model.blocks] == [4 * w for w in widths]
    # Keras v1: the stride on the first 1x1 convolution of a stage's first block (and its
    # projection); a projection shortcut exactly on the first block of each stage.
    first = [0, 3, 7, 13]
    assert [i for i, b in enumerate(model.blocks) if b.projection is not None] == first
    assert [b.reduce.stride for b in model.blocks] == [
        2 if i in first[1:] else 1 for i in range(16)
    ]
    for block in model.blocks:
        assert block.spatial.stride == 1 and block.spatial.conv.kernel_size == (3, 3)
        if block.projection is not None:
            assert block.projection.stride == block.reduce.stride
            assert block.projection.activation is None
        assert block.restore.activation is None  # ReLU after the sum, not before
        assert all(unit.conv.use_bias for unit in block.units())
    assert model.head.dropout.rate == 0.0 and model.head.hidden is None


def test_alpha_other_than_one_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        mobilenets.create("resnet50", alpha=0.5, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "size, after_pool, final", [(224, 56, 7), (96, 24, 3), (64, 16, 2), (50, 13, 2), (32, 8, 1)]
)
def test_feature_map_sizes_match_keras(size, after_pool, final):
    # Keras: pad 3 + 'valid' 7x7 stride 2, then pad 1 + 'valid' 3x3 stride 2 pooling.
    stem = (size + 6 - 7) // 2 + 1
    assert (stem + 2 - 3) // 2 + 1 == after_pool
    pooled, features = traced_shapes(
        "resnet50", size, lambda model, x: (model.pool(model.stem(x)), model.features(x))
    )
    assert pooled.shape == (1, after_pool, after_pool, 64)
    assert features.shape == (1, final, final, 2048)
    assert mobilenets.profile("resnet50", image_size=size).feature_size == final


@pytest.mark.parametrize("size", [8, 7])
def test_max_pool_equals_numpy(size):
    x = np.random.default_rng(0).uniform(0, 1, (2, size, size, 3)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # Keras' ZeroPadding2D
    out = (size + 2 - 3) // 2 + 1
    expected = np.empty((2, out, out, 3), np.float32)
    for i in range(out):
        for j in range(out):
            expected[:, i, j] = padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
    pool = MaxPool(window=3, stride=2, padding=1)
    assert pool.output_size(size) == out
    np.testing.assert_array_equal(pool(jnp.asarray(x)), expected)


def _numpy_conv_bn(x, unit, relu):
    """One train-mode unit in float64 numpy: convolution + bias, BatchNorm with the batch's
    statistics, ReLU."""
    y = naive_dense_conv(x, np.asarray(unit.conv.kernel[...]), unit.stride)
    y = y + np.asarray(unit.conv.bias[...])
    y = (y - y.mean(axis=(0, 1, 2))) / np.sqrt(y.var(axis=(0, 1, 2)) + unit.norm.epsilon)
    y = y * np.asarray(unit.norm.scale[...]) + np.asarray(unit.norm.bias[...])
    return np.maximum(y, 0) if relu else y


@pytest.mark.parametrize(
    "in_features, out_features, stride, size",
    [(8, 16, 2, 7), (8, 16, 1, 6), (16, 16, 1, 5)],  # projections with and without stride; identity
)
def test_bottleneck_equals_numpy(in_features, out_features, stride, size):
    """The block in float64 against numpy loops: rounding at 2^-53 over a few hundred terms,
    so 1e-10 is far below any difference of formulation. Train mode: nnx.BatchNorm keeps its
    running statistics in float32, which would round eval mode at 2^-24."""
    with jax.enable_x64(True):
        block = Bottleneck(
            in_features,
            out_features,
            stride,
            4,
            dtype=jnp.float64,
            param_dtype=jnp.float64,
            rngs=nnx.Rngs(0),
            **LAYER_OPTIONS,
        )
        rng = np.random.default_rng(size)
        for unit in block.units():
            channels = unit.out_features
            unit.conv.bias[...] = jnp.asarray(rng.normal(size=channels))
            unit.norm.scale[...] = jnp.asarray(rng.uniform(0.5, 2, channels))
            unit.norm.bias[...] = jnp.asarray(rng.normal(size=channels))
        block.train()
        x = rng.normal(size=(2, size, size, in_features))
        got = np.asarray(block(jnp.asarray(x)))

    assert (block.projection is not None) == (in_features != out_features or stride != 1)
    assert block.reduce.out_features == block.spatial.out_features == out_features // 4
    y = _numpy_conv_bn(x, block.reduce, relu=True)
    y = _numpy_conv_bn(y, block.spatial, relu=True)
    y = _numpy_conv_bn(y, block.restore, relu=False)
    shortcut = x if block.projection is None else _numpy_conv_bn(x, block.projection, relu=False)
    expected = np.maximum(shortcut + y, 0)
    assert got.shape == (2, -(-size // stride), -(-size // stride), out_features)
    assert 0.2 < np.mean(expected == 0) < 0.8  # the final ReLU cuts
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_conv_bias_ahead_of_train_mode_batchnorm_gets_no_gradient():
    """Keras' biases ahead of BatchNorm: the batch mean absorbs them in training, so their
    gradient is zero (float64: rounding ~1e-16 against the kernel's gradient of order 1)."""
    with jax.enable_x64(True):
        block = Bottleneck(
            8,
            16,
            2,
            4,
            dtype=jnp.float64,
            param_dtype=jnp.float64,
            rngs=nnx.Rngs(0),
            **LAYER_OPTIONS,
        )
        block.train()
        x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6, 6, 8)))
        grads = nnx.grad(lambda block: jnp.sum(jnp.sin(block(x))))(block)
    for name in ("projection", "reduce", "spatial", "restore"):
        conv = grads[name]["conv"]
        kernel_scale = np.max(np.abs(conv["kernel"][...]))
        assert kernel_scale > 1e-3
        assert np.max(np.abs(conv["bias"][...])) < 1e-12 * max(kernel_scale, 1.0), name
