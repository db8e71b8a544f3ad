"""A MobileNet read from its architecture table: stem, blocks, last 1x1 convolution, head.

* `Stage`: one row of a table (channels, repeats, first stride, expansion, per-row options).
* `Architecture`: a network as data: its block class, its table, its width rule, the
  stem, last-convolution and head rules, and the Keras defaults (dropout, BatchNorm).
* `MobileNet`: the network an `Architecture` describes. `mobilenet_v1.py`, `mobilenet_v2.py` and
  `mobilenet_v3.py` declare their networks as `functools.partial(MobileNet, ARCHITECTURE)`.

`resnet.py` reads its table the same way (`Architecture.blocks`) into its own network class:
its stem (with max pooling) is not a MobileNet's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mobilenets.layers import ClassifierHead, ConvBN


class Stage(NamedTuple):
    """One row of an architecture table: `repeats` blocks with `channels` outputs, the first of
    them with `stride` (the others 1). `expansion` is MobileNetV2's and V3's expansion ratio
    (ResNet's: block output over bottleneck width); V1 has none. `options` are further keyword
    arguments of the block for this row (MobileNetV3: kernel size, nonlinearity,
    squeeze-and-excitation) as (name, value) pairs, so that the table stays hashable."""

    channels: int
    repeats: int
    stride: int
    expansion: float | None = None
    options: tuple[tuple[str, Any], ...] = ()


class BlockConfig(NamedTuple):
    """What one block is built from: its channels in and out, stride and expansion."""

    in_features: int
    out_features: int
    stride: int
    expansion: float | None


def never_thinned(channels: int, alpha: float, width: Callable[[float], int]) -> int:
    """`channels` at alpha <= 1, `width(channels * alpha)` above: the rule of MobileNetV2's last
    convolution (Sandler et al. 2018, Sec. 6.1) and of MobileNetV3's last dense layer."""
    return max(channels, width(channels * alpha))


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A network as data: its block, its table, its width rule and the Keras defaults.

    `width(channels * alpha)` gives a layer's channel count at width multiplier alpha.
    `activation` is the nonlinearity of the stem, of the last 1x1 convolution and of the head's
    dense layer (the blocks take theirs from the table). The last 1x1 convolution has
    `last_channels` (MobileNetV2's 1280, never thinned) or `last_expansion` times the last
    block's channels (MobileNetV3's 6), or is absent. `head_channels` is MobileNetV3's dense layer
    after the pooling, never thinned; `stem_scales_with_alpha=False` keeps the stem at
    `stem_channels` for every alpha (Keras' MobileNetV3).
    """

    block: type[nnx.Module]
    stages: tuple[Stage, ...]
    width: Callable[[float], int]
    stem_channels: int = 32
    stem_stride: int = 2
    stem_scales_with_alpha: bool = True
    activation: str = "relu6"
    last_channels: int | None = None
    last_expansion: int | None = None
    head_channels: int | None = None
    dropout_rate: float = 0.0
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3

    def stem_features(self, alpha: float) -> int:
        if not self.stem_scales_with_alpha:
            return self.stem_channels
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

    def block_options(self) -> tuple[tuple[tuple[str, Any], ...], ...]:
        """Each block's further keyword arguments (`Stage.options`), as `block_configs` orders
        the blocks."""
        return tuple(stage.options for stage in self.stages for _ in range(stage.repeats))

    def blocks(self, unit_kwargs: dict, alpha: float) -> list[nnx.Module]:
        """The blocks of the table at width multiplier `alpha`; `unit_kwargs`: ConvBN's keyword
        arguments."""
        return [
            make_block(self.block, config, unit_kwargs, options)
            for config, options in zip(self.block_configs(alpha), self.block_options())
        ]

    def last_features(self, alpha: float) -> int | None:
        if self.last_expansion is not None:
            return self.width(self.block_configs(alpha)[-1].out_features * self.last_expansion)
        if self.last_channels is None:
            return None
        return never_thinned(self.last_channels, alpha, self.width)

    def feature_channels(self, alpha: float) -> int:
        """Channels of the last feature map, the head's input."""
        return self.last_features(alpha) or self.block_configs(alpha)[-1].out_features

    def head_features(self, alpha: float) -> int | None:
        if self.head_channels is None:
            return None
        return never_thinned(self.head_channels, alpha, self.width)


def make_block(
    block: type[nnx.Module], config: BlockConfig, unit_kwargs: dict, options: tuple = ()
) -> nnx.Module:
    """`block(in_features, out_features, stride[, expansion], **options, **unit_kwargs)`."""
    expansion = {} if config.expansion is None else {"expansion": config.expansion}
    return block(
        config.in_features,
        config.out_features,
        config.stride,
        **expansion,
        **dict(options),
        **unit_kwargs,
    )


def unit_options(
    architecture: Architecture,
    *,
    bn_momentum: float | None,
    bn_epsilon: float | None,
    dtype,
    param_dtype,
    implementation: str,
    rngs: nnx.Rngs,
) -> dict:
    """`ConvBN`'s keyword options for a network: None keeps the architecture's BatchNorm values."""
    return dict(
        bn_momentum=architecture.bn_momentum if bn_momentum is None else bn_momentum,
        bn_epsilon=architecture.bn_epsilon if bn_epsilon is None else bn_epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        implementation=implementation,
        rngs=rngs,
    )


class Network(nnx.Module):
    """What every network here is: layers built from an `Architecture`, applied in order, then
    the classifier head.

    Args:
      architecture: the network as data (`mobilenet_v1.ARCHITECTURE`, `mobilenet_v2.ARCHITECTURE`,
        `mobilenet_v3.SMALL`, `resnet.ARCHITECTURE`, ...).
      num_classes: outputs of the classifier (2 for IDC negative / positive).
      alpha: width multiplier.
      dropout_rate, bn_momentum, bn_epsilon: None keeps the architecture's Keras defaults.
      dtype: compute dtype of the convolutions; param_dtype: of parameters and statistics.
      implementation: "reference" (these definitions) or the name of a faster formulation of
        `ConvBN` registered in `layers.IMPLEMENTATIONS`.
      rngs: `params` stream for initialisation, `dropout` for dropout.

    Call on NHWC float images of any size >= 32 (in [-1, 1] like the Keras preprocessing); returns
    logits [batch, num_classes] in at least float32. `model.train()` / `model.eval()` switch
    BatchNorm between batch and running statistics and dropout on and off.

    Subclasses build their layers (`build`) and list them in order (`layers`); a layer with conv +
    BatchNorm units lists them (`units()`), which is how `profile` counts every convolution.
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
        self.build(
            unit_options(
                architecture,
                bn_momentum=bn_momentum,
                bn_epsilon=bn_epsilon,
                dtype=dtype,
                param_dtype=param_dtype,
                implementation=implementation,
                rngs=rngs,
            )
        )
        self.head = ClassifierHead(
            architecture.feature_channels(alpha),
            num_classes,
            dropout_rate=architecture.dropout_rate if dropout_rate is None else dropout_rate,
            hidden_features=architecture.head_features(alpha),
            hidden_activation=architecture.activation,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def build(self, unit_kwargs: dict) -> None:
        """Builds the layers before the head; `unit_kwargs` are `ConvBN`'s keyword arguments."""
        raise NotImplementedError

    def layers(self) -> list[nnx.Module]:
        raise NotImplementedError

    def features(self, images: jax.Array) -> jax.Array:
        """The last feature map before pooling, [batch, H/32, W/32, channels]."""
        x = images
        for layer in self.layers():
            x = layer(x)
        return x

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.head(self.features(images))

    def units(self) -> Sequence[ConvBN]:
        """Every conv + BatchNorm unit in the order the forward pass runs them."""
        units = []
        for layer in self.layers():
            if isinstance(layer, ConvBN):
                units.append(layer)
            elif hasattr(layer, "units"):
                units.extend(layer.units())
        return units


class MobileNet(Network):
    """A MobileNet classifier: stem, the blocks of its table, optional last 1x1 convolution, head
    (arguments: `Network`'s)."""

    def build(self, unit_kwargs: dict) -> None:
        architecture, alpha = self.architecture, self.alpha
        self.stem = ConvBN(
            3,
            architecture.stem_features(alpha),
            kernel_size=3,
            stride=architecture.stem_stride,
            activation=architecture.activation,
            **unit_kwargs,
        )
        self.blocks = nnx.List(architecture.blocks(unit_kwargs, alpha))
        blocks_out = architecture.block_configs(alpha)[-1].out_features
        last = architecture.last_features(alpha)
        self.last_conv = (
            ConvBN(blocks_out, last, activation=architecture.activation, **unit_kwargs)
            if last is not None
            else None
        )

    def layers(self) -> list[nnx.Module]:
        """The stem, the blocks and the last convolution: what `features` applies, in order."""
        last = [] if self.last_conv is None else [self.last_conv]
        return [self.stem, *self.blocks, *last]
