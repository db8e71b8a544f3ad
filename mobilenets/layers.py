"""The parts MobileNetV1 and MobileNetV2 share, each written once.

* `make_divisible`: MobileNetV2's channel rounding after the width multiplier.
* `ConvBN`: convolution, BatchNorm, then ReLU6 or nothing: the unit every layer of both networks
  is made of. With `groups` equal to the channel count it is the depthwise convolution of the
  depthwise-separable factorisation (Howard et al. 2017, Sec. 3.1): one 3x3 filter per channel.
  With a 1x1 kernel it is the pointwise convolution that mixes the channels. Without the
  activation it is MobileNetV2's *linear* bottleneck projection (Sandler et al. 2018, Sec. 3.2).
* `ClassifierHead`: global average pooling, dropout and the fully connected classifier.
* `Stage` and `MobileNet`: a network read from its architecture table (stem, blocks, optional
  last 1x1 convolution, head). `mobilenet_v1.py` and `mobilenet_v2.py` declare the two networks.

Conventions. Images and activations are NHWC and kernels HWIO, the layout of `nnx.Conv` and of
Keras, so weights port directly. Padding is TensorFlow's 'SAME' (`same_padding`).

Initialisers. Every convolution kernel is He normal with the fan counted as *fan in*,
`variance_scaling(2.0, "fan_in", "truncated_normal")`, the scale that keeps the activation
variance constant through ReLU-type layers (He et al. 2015). Fan *in* matters for the depthwise
kernel: its HWIO shape is (3, 3, 1, C), so a fan-*out* (or Glorot) initialiser counts 9 * C as the
fan although each output mixes only 9 inputs, and draws weights about sqrt(C) times too small
(torchvision's `kaiming_normal_(mode="fan_out")` and Keras' Glorot both do). BatchNorm starts as
the identity; the classifier is Glorot uniform with zero bias, the Keras default.

Precision. Parameters are `param_dtype` (float32); convolutions multiply in the compute `dtype`
(e.g. bfloat16 on a GPU) and accumulate in at least float32; BatchNorm, pooling and the
classifier run in at least float32; activations between layers are stored in `dtype`.

Speed. `ConvBN(implementation=...)` is the one switch to a faster formulation of the same unit:
`IMPLEMENTATIONS` maps a name to a function computing what `ConvBN.__call__` computes. The
CPU path (`mobilenets/cpu/`) registers itself there; nothing in this file depends on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

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
    """min(max(x, 0), 6): the ReLU of both papers, bounded for robustness in low precision."""
    return jnp.clip(x, 0.0, 6.0)


# The activations a ConvBN can end in, by name; None leaves it linear.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"relu6": relu6, "relu": jax.nn.relu}


def accumulation_dtype(dtype) -> jnp.dtype:
    """At least float32: what convolutions accumulate in and BatchNorm computes in."""
    return jnp.promote_types(dtype, jnp.float32)


class ConvBN(nnx.Module):
    """Convolution (no bias: BatchNorm's shift replaces it), BatchNorm, then ReLU6 or nothing.

    `groups=in_features` makes the convolution depthwise, one filter per channel;
    `activation=None` leaves the output linear (another name from `ACTIVATIONS` picks another
    function); `use_bias=True` gives the convolution a bias (Keras' ResNet has one). In training
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
        self.conv = nnx.Conv(
            in_features,
            out_features,
            kernel_size=(kernel_size, kernel_size),
            strides=stride,
            padding="SAME",
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

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.implementation != "reference":
            return IMPLEMENTATIONS[self.implementation](self, x)
        y = self.norm(self.conv(x))
        if self.activation is not None:
            y = ACTIVATIONS[self.activation](y)
        return y.astype(self.dtype)


class ClassifierHead(nnx.Module):
    """Global average pooling, dropout, fully connected classifier; returns the logits.

    Pooling replaces the fully connected layers of older networks (both papers); Keras'
    MobileNetV1 applies dropout (1e-3) before its classifier, a 1x1 convolution on the pooled
    1x1 map and therefore this dense layer.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        dropout_rate: float,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dtype = accumulation_dtype(dtype)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.classifier = nnx.Linear(
            in_features,
            num_classes,
            kernel_init=classifier_kernel_init,
            bias_init=nnx.initializers.zeros_init(),
            dtype=self.dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = jnp.mean(x.astype(self.dtype), axis=(1, 2))
        return self.classifier(self.dropout(pooled))


class Stage(NamedTuple):
    """One row of an architecture table: `repeats` blocks with `channels` outputs, the first of
    them with `stride` (the others 1). `expansion` is MobileNetV2's factor t; V1 has none."""

    channels: int
    repeats: int
    stride: int
    expansion: int | None = None


class BlockConfig(NamedTuple):
    """What one block is built from: its channels in and out, stride and expansion."""

    in_features: int
    out_features: int
    stride: int
    expansion: int | None


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A MobileNet as data: its block, its table, its width rule and the Keras defaults.

    `width(channels * alpha)` gives a layer's channel count at width multiplier alpha. The last
    1x1 convolution (MobileNetV2's 1280) is never thinned below `last_channels`.
    """

    block: type[nnx.Module]
    stages: tuple[Stage, ...]
    width: Callable[[float], int]
    stem_channels: int = 32
    stem_stride: int = 2
    last_channels: int | None = None
    dropout_rate: float = 0.0
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3

    def stem_features(self, alpha: float) -> int:
        return self.width(self.stem_channels * alpha)

    def block_configs(self, alpha: float) -> tuple[BlockConfig, ...]:
        configs, in_features = [], self.stem_features(alpha)
        for stage in self.stages:
            out_features = self.width(stage.channels * alpha)
            for repeat in range(stage.repeats):
                stride = stage.stride if repeat == 0 else 1
                configs.append(BlockConfig(in_features, out_features, stride, stage.expansion))
                in_features = out_features
        return tuple(configs)

    def last_features(self, alpha: float) -> int | None:
        if self.last_channels is None:
            return None
        return max(self.last_channels, self.width(self.last_channels * alpha))

    def feature_channels(self, alpha: float) -> int:
        """Channels of the last feature map, the classifier's input."""
        return self.last_features(alpha) or self.block_configs(alpha)[-1].out_features


def make_block(block: type[nnx.Module], config: BlockConfig, unit: dict) -> nnx.Module:
    """`block(in_features, out_features, stride[, expansion], **unit)`."""
    expansion = {} if config.expansion is None else {"expansion": config.expansion}
    return block(config.in_features, config.out_features, config.stride, **expansion, **unit)


class MobileNet(nnx.Module):
    """A MobileNet classifier: stem, the blocks of its table, optional last 1x1 convolution, head.

    Args:
      architecture: the network as data (`mobilenet_v1.ARCHITECTURE`, `mobilenet_v2.ARCHITECTURE`).
      num_classes: outputs of the classifier (2 for IDC negative / positive).
      alpha: width multiplier.
      dropout_rate, bn_momentum, bn_epsilon: None keeps the architecture's Keras defaults.
      dtype: compute dtype of the convolutions; param_dtype: of parameters and statistics.
      implementation: "reference" (this package's definitions) or a registered faster
        formulation of `ConvBN` ("cpu": `mobilenets/cpu`).
      rngs: `params` stream for initialisation, `dropout` for dropout.

    Call on NHWC float images of any size >= 32 (in [-1, 1] like the Keras preprocessing); returns
    logits [batch, num_classes] in at least float32. `model.train()` / `model.eval()` switch
    BatchNorm between batch and running statistics and dropout on and off.
    """

    def __init__(
        self,
        architecture: Architecture,
        num_classes: int = 2,
        alpha: float = 1.0,
        *,
        dropout_rate: float | None = None,
        bn_momentum: float | None = None,
        bn_epsilon: float | None = None,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        implementation: str = "reference",
        rngs: nnx.Rngs,
    ):
        self.architecture = architecture
        self.num_classes = num_classes
        self.alpha = alpha
        unit = dict(
            bn_momentum=architecture.bn_momentum if bn_momentum is None else bn_momentum,
            bn_epsilon=architecture.bn_epsilon if bn_epsilon is None else bn_epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            implementation=implementation,
            rngs=rngs,
        )
        stem_features = architecture.stem_features(alpha)
        self.stem = ConvBN(3, stem_features, kernel_size=3, stride=architecture.stem_stride, **unit)
        self.blocks = nnx.List(
            [
                make_block(architecture.block, config, unit)
                for config in architecture.block_configs(alpha)
            ]
        )
        last = architecture.last_features(alpha)
        in_features = architecture.block_configs(alpha)[-1].out_features
        self.last_conv = None if last is None else ConvBN(in_features, last, **unit)
        self.head = ClassifierHead(
            architecture.feature_channels(alpha),
            num_classes,
            dropout_rate=architecture.dropout_rate if dropout_rate is None else dropout_rate,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def features(self, images: jax.Array) -> jax.Array:
        """The last feature map before pooling, [batch, H/32, W/32, channels]."""
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return x if self.last_conv is None else self.last_conv(x)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.head(self.features(images))

    def units(self) -> Sequence[ConvBN]:
        """Every conv + BatchNorm unit in the order the forward pass runs them."""
        units = [self.stem]
        for block in self.blocks:
            units.extend(block.units())
        return units if self.last_conv is None else [*units, self.last_conv]
