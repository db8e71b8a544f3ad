"""The units every network of the package is built from, each written once.

* `make_divisible`: MobileNetV2's (and V3's) channel rounding after the width multiplier.
* `relu6`, `hard_swish`, `hard_sigmoid`: the nonlinearities, by name in `ACTIVATIONS`.
* `ConvBN`: convolution, BatchNorm, then an activation or nothing: the unit every layer of the
  networks is made of. With `groups` equal to the channel count it is the depthwise convolution of
  the depthwise-separable factorisation (Howard et al. 2017, Sec. 3.1): one k x k filter per
  channel. With a 1x1 kernel it is the pointwise convolution that mixes the channels. Without the
  activation it is MobileNetV2's *linear* bottleneck projection (Sandler et al. 2018, Sec. 3.2).
* `ClassifierHead`: global average pooling, an optional dense layer (MobileNetV3's), dropout and
  the fully connected classifier.

`network.py` reads a network from its architecture table; `mobilenet_v1.py`, `mobilenet_v2.py`,
`mobilenet_v3.py` and `resnet.py` declare the networks.

Conventions. Images and activations are NHWC and kernels HWIO, the layout of `nnx.Conv` and of
Keras, so weights port directly. Padding is TensorFlow's 'SAME' (`same_padding`) unless a unit
asks for Keras' explicit zero padding (ResNet's stem).

Initialisers. Every convolution kernel is He normal with the fan counted as *fan in*,
`variance_scaling(2.0, "fan_in", "truncated_normal")`, the scale that keeps the activation
variance constant through ReLU-type layers (He et al. 2015). Fan *in* matters for the depthwise
kernel: its HWIO shape is (3, 3, 1, C), so a fan-*out* (or Glorot) initialiser counts 9 * C as the
fan although each output mixes only 9 inputs, and draws weights about sqrt(C) times too small
(torchvision's `kaiming_normal_(mode="fan_out")` and Keras' Glorot both do). The dense layers on
pooled features that stand for 1x1 convolutions in Keras (MobileNetV3's squeeze-and-excitation and
its last 1x1 convolution) are convolutions too and get the same initialiser. BatchNorm starts as
the identity; the classifier is Glorot uniform; every bias starts at zero, the Keras defaults.

Precision. Parameters are `param_dtype` (float32); convolutions multiply in the compute `dtype`
(e.g. bfloat16 on a GPU) and accumulate in at least float32; BatchNorm, pooling and the layers on
pooled features run in at least float32; activations between layers are stored in `dtype`.

Speed. `ConvBN(implementation=...)` is the one switch to a faster formulation of the same unit:
`IMPLEMENTATIONS` maps a name to a function computing what `ConvBN.__call__` computes, registered
by the package that provides it (mobilenets/__init__.py lists them); this file depends on none.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

# He normal with an explicit fan *in*: see the module docstring for why not fan out.
conv_kernel_init = nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
classifier_kernel_init = nnx.initializers.glorot_uniform()

# name -> function(unit, x) computing `ConvBN.__call__` another way ("reference" is this file).
IMPLEMENTATIONS: dict[str, Callable[[ConvBN, jax.Array], jax.Array]] = {}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to the nearest multiple of `divisor`, never down by more than 10%.

    The rounding of the reference MobileNetV2 implementations (TF-slim `_make_divisible`, also in
    Keras and torchvision), applied to `channels * alpha`. Multiples of 8 suit vector hardware.

    >>> make_divisible(32 * 0.35), make_divisible(16 * 0.35), make_divisible(1280 * 1.4)
    (16, 8, 1792)
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # Rounding down by more than 10% would thin the layer too much.
        rounded += divisor
    return rounded


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, tuple[int, int]]:
    """TensorFlow 'SAME' padding along one axis: (output size, (pad before, pad after)).

    The output is ceil(size / stride); the padding needed for it is split with the extra pixel,
    if any, *after*. For a 3x3 kernel with stride 2 that is (0, 1) on even sizes and (1, 1) on odd
    sizes, exactly Keras MobileNetV2's `correct_pad`. Keras MobileNetV1 instead always pads (0, 1)
    before its stride-2 'valid' convolutions; that agrees on even sizes but on odd ones yields
    floor(size / 2) instead of ceil: at 50x50 its last feature map is 1x1, here it is 2x2.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return out, (total // 2, total - total // 2)


def relu6(x: jax.Array) -> jax.Array:
    """min(max(x, 0), 6): MobileNetV1's and V2's ReLU, bounded for robustness in low precision."""
    return jnp.clip(x, 0.0, 6.0)


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """relu6(x + 3) / 6, a piecewise-linear sigmoid (Howard et al. 2019, Sec. 5.2).

    Written as Keras' MobileNetV3 writes it, a product with 1/6.
    """
    return relu6(x + 3.0) * (1.0 / 6.0)


def hard_swish(x: jax.Array) -> jax.Array:
    """x * relu6(x + 3) / 6: swish, x * sigmoid(x), with the sigmoid made piecewise linear
    (Howard et al. 2019, Sec. 5.2): cheap on every device and exact in fixed point.

    Rounded as Keras' `hard_swish` (`x * hard_sigmoid(x)` with a division by 6).
    """
    return x * (relu6(x + 3.0) / 6.0)


# The activations a ConvBN (and the dense layers on pooled features) can end in, by name; None
# leaves a unit linear.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu6": relu6,
    "relu": jax.nn.relu,
    "hard_swish": hard_swish,
}


def accumulation_dtype(dtype) -> jnp.dtype:
    """At least float32: what convolutions accumulate in and BatchNorm computes in."""
    return jnp.promote_types(dtype, jnp.float32)


class ConvBN(nnx.Module):
    """Convolution (no bias: BatchNorm's shift replaces it), BatchNorm, then ReLU6 or nothing.

    `groups=in_features` makes the convolution depthwise, one filter per channel;
    `activation=None` leaves the output linear (another name from `ACTIVATIONS` picks another
    function); `use_bias=True` gives the convolution a bias (Keras' ResNet has one). `padding` is
    "SAME" (TensorFlow's) or a number of zero rows and columns added on every side before a
    'valid' convolution (Keras' `ZeroPadding2D` + `Conv2D`, as in ResNet's stem). In training
    mode `nnx.BatchNorm` normalises with the batch's statistics and updates its running averages;
    in evaluation mode it uses them.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = "relu6",
        use_bias: bool = False,
        padding: str | int = "SAME",
        bn_momentum: float,
        bn_epsilon: float,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        implementation: str = "reference",
        rngs: nnx.Rngs,
    ):
        if implementation != "reference" and implementation not in IMPLEMENTATIONS:
            known = ["reference", *IMPLEMENTATIONS]
            raise ValueError(f"unknown implementation {implementation!r}; choose from {known}")
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {list(ACTIVATIONS)}")
        if padding != "SAME" and not isinstance(padding, int):
            raise ValueError(f"padding must be 'SAME' or a number of pixels, not {padding!r}")
        self.conv = nnx.Conv(
            in_features,
            out_features,
            kernel_size=(kernel_size, kernel_size),
            strides=stride,
            padding=padding if padding == "SAME" else ((padding, padding), (padding, padding)),
            feature_group_count=groups,
            use_bias=use_bias,
            kernel_init=conv_kernel_init,
            dtype=dtype,
            param_dtype=param_dtype,
            preferred_element_type=accumulation_dtype(dtype),
            rngs=rngs,
        )
        self.norm = nnx.BatchNorm(
            out_features,
            momentum=bn_momentum,
            epsilon=bn_epsilon,
            dtype=accumulation_dtype(dtype),
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.activation = activation
        self.padding = padding
        self.dtype = dtype
        self.implementation = implementation

    @property
    def in_features(self) -> int:
        return self.conv.in_features

    @property
    def out_features(self) -> int:
        return self.conv.out_features

    @property
    def stride(self) -> int:
        return self.conv.strides

    @property
    def kind(self) -> str:
        """ "depthwise" (one filter per channel), "pointwise" (1x1) or "dense"."""
        if self.conv.feature_group_count > 1:
            return "depthwise"
        return "pointwise" if self.conv.kernel_size == (1, 1) else "dense"

    def output_size(self, size: int) -> int:
        """Side of the output for a `size` x `size` input."""
        kernel_size = self.conv.kernel_size[0]
        if self.padding == "SAME":
            return same_padding(size, kernel_size, self.stride)[0]
        return (size + 2 * self.padding - kernel_size) // self.stride + 1

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.implementation != "reference":
            return IMPLEMENTATIONS[self.implementation](self, x)
        y = self.norm(self.conv(x))
        if self.activation is not None:
            y = ACTIVATIONS[self.activation](y)
        return y.astype(self.dtype)


class ClassifierHead(nnx.Module):
    """Global average pooling, [dense + activation,] dropout, fully connected classifier; returns
    the logits.

    Pooling replaces the fully connected layers of older networks (all three MobileNet papers).
    MobileNetV3 (Howard et al. 2019, Sec. 5.1) moves its last wide layer behind the pooling, where
    it costs one multiply-add per weight instead of one per weight and pixel: `hidden_features`
    channels with bias and `hidden_activation`, no BatchNorm (Keras' `conv_2`). Keras applies
    dropout (V1 1e-3, V3 0.2) just before its classifier, a 1x1 convolution on the pooled 1x1
    map and therefore this dense layer; Keras' V3 `conv_2` is such a convolution too.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        dropout_rate: float,
        hidden_features: int | None = None,
        hidden_activation: str = "relu",
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dtype = accumulation_dtype(dtype)
        dense = dict(
            bias_init=nnx.initializers.zeros_init(),
            dtype=self.dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.hidden = (
            nnx.Linear(in_features, hidden_features, kernel_init=conv_kernel_init, **dense)
            if hidden_features is not None
            else None
        )
        self.hidden_activation = hidden_activation
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.classifier = nnx.Linear(
            hidden_features or in_features,
            num_classes,
            kernel_init=classifier_kernel_init,
            **dense,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        features = jnp.mean(x.astype(self.dtype), axis=(1, 2))
        if self.hidden is not None:
            features = ACTIVATIONS[self.hidden_activation](self.hidden(features))
        return self.classifier(self.dropout(features))

    def dense_layers(self) -> list[nnx.Linear]:
        """The layers with weights, in order: each costs one multiply-add per weight and image."""
        return [self.classifier] if self.hidden is None else [self.hidden, self.classifier]
