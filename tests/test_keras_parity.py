"""The networks against the Keras applications themselves: random weights and statistics set in a
Keras model (`weights=None`, nothing downloaded), copied layer by layer into ours, and the
eval-mode logits compared.

Heavy (opt in with `-m heavy`): Keras builds and runs each model in tens of seconds on 2 cores.
Both sides compute in float32 and differ only in the order of their sums; over about 50 layers
that leaves relative differences near 1e-6, and the bound 1e-4 is far above that and far below
any difference of layout (a shifted window, a missing bias or activation changes the logits by
tens of percent: Keras' MobileNetV3 built without `input_shape` pads odd sizes otherwise and is
24% off at 50 px).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mobilenets

pytestmark = pytest.mark.heavy
keras = pytest.importorskip("keras")


def randomize(keras_model, rng):
    """Draws every Keras weight: He-scaled kernels, biases, BatchNorm scales and statistics."""
    for weight in keras_model.weights:
        shape, path = tuple(weight.shape), weight.path
        if "moving_variance" in path or "gamma" in path:
            value = rng.uniform(0.5, 2.0, shape)
        elif "moving_mean" in path or "beta" in path or "bias" in path:
            value = rng.normal(0, 0.2, shape)
        else:  # kernels; a depthwise kernel's fan in is its window
            fan_in = np.prod(shape[:2] if "depthwise" in path else shape[:-1])
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        weight.assign(value.astype(np.float32))


def value(weight) -> jnp.ndarray:
    """A Keras weight's value (any backend) as a JAX array."""
    return jnp.asarray(keras.ops.convert_to_numpy(weight))


def copy_conv_bn(unit, conv, norm):
    kernel = value(conv.kernel)
    if unit.kind == "depthwise":  # Keras (k, k, C, 1), ours (k, k, 1, C)
        kernel = kernel.transpose(0, 1, 3, 2)
    unit.conv.kernel[...] = kernel
    if unit.conv.use_bias:
        unit.conv.bias[...] = value(conv.bias)
    unit.norm.scale[...], unit.norm.bias[...] = value(norm.gamma), value(norm.beta)
    unit.norm.mean[...], unit.norm.var[...] = value(norm.moving_mean), value(norm.moving_variance)


def copy_dense(dense, layer):
    """A Keras 1x1 convolution on a 1x1 map (or a Dense layer) into our dense layer."""
    kernel = value(layer.kernel)
    dense.kernel[...] = kernel.reshape(-1, kernel.shape[-1])
    dense.bias[...] = value(layer.bias)


def copy_mobilenet_v3(ours, keras_model):
    layer = keras_model.get_layer
    copy_conv_bn(ours.stem, layer("conv"), layer("conv_bn"))
    for i, block in enumerate(ours.blocks):
        prefix = f"expanded_conv_{i}_" if i else "expanded_conv_"
        if block.expand is not None:
            copy_conv_bn(block.expand, layer(prefix + "expand"), layer(prefix + "expand_bn"))
        copy_conv_bn(block.depthwise, layer(prefix + "depthwise"), layer(prefix + "depthwise_bn"))
        if block.squeeze_excite is not None:
            copy_dense(block.squeeze_excite.squeeze, layer(prefix + "squeeze_excite_conv"))
            copy_dense(block.squeeze_excite.excite, layer(prefix + "squeeze_excite_conv_1"))
        copy_conv_bn(block.project, layer(prefix + "project"), layer(prefix + "project_bn"))
    copy_conv_bn(ours.last_conv, layer("conv_1"), layer("conv_1_bn"))
    copy_dense(ours.head.hidden, layer("conv_2"))
    copy_dense(ours.head.classifier, layer("logits"))


def copy_resnet50(ours, keras_model):
    layer = keras_model.get_layer
    copy_conv_bn(ours.stem, layer("conv1_conv"), layer("conv1_bn"))
    names = [(s, b) for s, n in ((2, 3), (3, 4), (4, 6), (5, 3)) for b in range(1, n + 1)]
    for block, (stage, index) in zip(ours.blocks, names, strict=True):
        prefix = f"conv{stage}_block{index}_"
        units = {"0": block.projection, "1": block.reduce, "2": block.spatial, "3": block.restore}
        for number, unit in units.items():
            if unit is not None:
                copy_conv_bn(unit, layer(prefix + number + "_conv"), layer(prefix + number + "_bn"))
    copy_dense(ours.head.classifier, layer("predictions"))


@pytest.mark.parametrize(
    "name, alpha, size",
    [
        ("mobilenet_v3_small", 0.75, 96),
        ("mobilenet_v3_small", 1.0, 50),  # odd sizes from the second stride on
        ("mobilenet_v3_large", 1.0, 64),
        ("mobilenet_v3_small_minimalistic", 1.0, 64),
        ("mobilenet_v3_large_minimalistic", 0.5, 64),
        ("resnet50", 1.0, 64),  # even: Keras' stem padding (3, 3), not 'SAME''s (2, 3)
        ("resnet50", 1.0, 50),
    ],
)
def test_logits_equal_the_keras_application(name, alpha, size):
    rng = np.random.default_rng(size)
    shape = (size, size, 3)
    if name == "resnet50":
        keras_model = keras.applications.ResNet50(
            weights=None, input_shape=shape, classes=5, classifier_activation=None
        )
    else:
        constructor = "MobileNetV3Large" if "large" in name else "MobileNetV3Small"
        keras_model = getattr(keras.applications, constructor)(
            weights=None,
            input_shape=shape,  # Keras pads its stride-2 layers for this size
            alpha=alpha,
            minimalistic="minimalistic" in name,
            classes=5,
            classifier_activation=None,
            include_preprocessing=False,  # ours takes images already in [-1, 1]
        )
    randomize(keras_model, rng)
    ours = mobilenets.create(
        name, num_classes=5, alpha=alpha, implementation="reference", rngs=nnx.Rngs(0)
    )
    (copy_resnet50 if name == "resnet50" else copy_mobilenet_v3)(ours, keras_model)
    ours.eval()
    images = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(keras_model(images, training=False))
    got = np.asarray(ours(jnp.asarray(images)))
    assert np.linalg.norm(got - expected) <= 1e-4 * np.linalg.norm(expected)
