"""ResNet-50 (He et al. 2016, "Deep Residual Learning for Image Recognition"), layer for layer as
`keras.applications.ResNet50` (`include_top=True`): a full-size baseline for the MobileNets.

Ideas of the paper and where they live:

* Residual learning (Sec. 3.1-3.2): each block learns F(x) and outputs relu(F(x) + x); identity
  shortcuts add no parameters.
* The bottleneck block (Sec. 4.1, Fig. 5 right): `Bottleneck`, a 1x1 convolution reducing the
  channels four-fold, a 3x3 convolution at that width, a 1x1 convolution restoring them; each
  followed by BatchNorm, the first two by ReLU. As in Keras' ResNet (v1, the original Caffe
  model), the stride of a downsampling block sits on its first 1x1 convolution.
* Projection shortcuts (option B, Sec. 3.3): a strided 1x1 convolution + BatchNorm where the
  shape changes, the first block of each stage; identity elsewhere.
* The body (Table 1, 50-layer column): `TABLE`, stages of 3, 4, 6 and 3 blocks with 256, 512,
  1024 and 2048 output channels, the first block of each stage but the first with stride 2.
* The stem: a 7x7 stride-2 convolution with 64 filters, BatchNorm, ReLU, then 3x3 stride-2 max
  pooling; the head: global average pooling and a dense classifier.

As Keras: every convolution has a bias (ahead of a BatchNorm, in training mode its gradient is
zero: the batch mean absorbs it; it matters for the weights' layout only); BatchNorm epsilon
1.001e-5 and momentum 0.99; the stem convolution pads 3 pixels on every side and the pooling 1
(zeros: after the ReLU no value is below them), each then 'valid'. Both give ceil(size / 2), the
sizes of 'SAME' (224 -> 112 -> 56), but 'SAME' would pad (2, 3) and (0, 1) on even sizes, one
pixel off Keras' windows. There is no width multiplier: `alpha` must be 1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mobilenets.layers import ConvBN
from mobilenets.network import Architecture, Network, Stage


class Bottleneck(nnx.Module):
    """The bottleneck residual block (Sec. 4.1, Fig. 5 right), Keras' `residual_block_v1`.

    1x1 to `out_features / expansion` channels with the block's stride + BN + ReLU; 3x3 + BN +
    ReLU; 1x1 to `out_features` + BN; plus the shortcut, then ReLU. The shortcut is the input, or
    where the shape changes (stride or channels) a `projection`: a strided 1x1 convolution + BN.
    `unit_kwargs` are `ConvBN`'s keyword arguments; every convolution has a bias.
    """

    def __init__(
        self, in_features: int, out_features: int, stride: int, expansion: int, **unit_kwargs
    ):
        width = out_features // expansion
        conv = dict(use_bias=True, **unit_kwargs)
        self.projection = (
            ConvBN(in_features, out_features, stride=stride, activation=None, **conv)
            if stride != 1 or in_features != out_features
            else None
        )
        self.reduce = ConvBN(in_features, width, stride=stride, activation="relu", **conv)
        self.spatial = ConvBN(width, width, kernel_size=3, activation="relu", **conv)
        self.restore = ConvBN(width, out_features, activation=None, **conv)

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.projection is None else self.projection(x)
        return jax.nn.relu(shortcut + self.restore(self.spatial(self.reduce(x))))

    def units(self) -> list[ConvBN]:
        """In Keras' order: the projection (`_0_conv`) first."""
        projection = [] if self.projection is None else [self.projection]
        return [*projection, self.reduce, self.spatial, self.restore]


class MaxPool(nnx.Module):
    """Max pooling over `window` x `window` with `stride`, after `padding` zero pixels on every
    side (Keras' `ZeroPadding2D` + 'valid' `MaxPooling2D`)."""

    def __init__(self, window: int = 3, stride: int = 2, padding: int = 1):
        self.window, self.stride, self.padding = window, stride, padding

    def output_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.window) // self.stride + 1

    def __call__(self, x: jax.Array) -> jax.Array:
        pad = (self.padding, self.padding)
        x = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
        window, stride = (1, self.window, self.window, 1), (1, self.stride, self.stride, 1)
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, stride, "VALID")


# Table 1 of the paper, 50-layer column: stages of bottlenecks [1x1, c/4; 3x3, c/4; 1x1, c]
# as (output channels c, blocks, stride of the first block); the bottleneck width is c / 4.
TABLE = tuple(
    Stage(channels=channels, repeats=repeats, stride=stride, expansion=4)
    for channels, repeats, stride in (
        (256, 3, 1),  # conv2_x (after the stem's pooling: already 1/4 of the image)
        (512, 4, 2),  # conv3_x
        (1024, 6, 2),  # conv4_x
        (2048, 3, 2),  # conv5_x
    )
)

ARCHITECTURE = Architecture(
    block=Bottleneck,
    stages=TABLE,
    width=int,  # no width multiplier
    stem_channels=64,
    # The Keras application's values.
    dropout_rate=0.0,
    bn_momentum=0.99,
    bn_epsilon=1.001e-5,
)


class ResNet(Network):
    """A ResNet classifier: the 7x7 stem and max pooling, the bottlenecks of its table, the head
    (arguments: `Network`'s; `alpha` must be 1, `dropout_rate`, none in Keras, applies before
    the classifier)."""

    def build(self, unit_kwargs: dict) -> None:
        if self.alpha != 1.0:
            raise ValueError(f"ResNet has no width multiplier: alpha must be 1.0, not {self.alpha}")
        self.stem = ConvBN(
            3,
            self.architecture.stem_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            activation="relu",
            use_bias=True,
            **unit_kwargs,
        )
        self.pool = MaxPool(window=3, stride=2, padding=1)
        self.blocks = nnx.List(self.architecture.blocks(unit_kwargs, self.alpha))

    def layers(self) -> list[nnx.Module]:
        """The stem, the pooling and the blocks: what `features` applies, in order."""
        return [self.stem, self.pool, *self.blocks]


ResNet50 = functools.partial(ResNet, ARCHITECTURE)
