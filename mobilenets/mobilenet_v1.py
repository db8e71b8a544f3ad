"""MobileNetV1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications"), layer for layer as `tf.keras.applications.MobileNet`.

Ideas of the paper and where they live:

* Depthwise-separable convolution (Sec. 3.1, Fig. 3): `DepthwiseSeparable`, a 3x3 depthwise
  convolution filtering each channel, then a 1x1 pointwise convolution combining channels, each
  followed by BatchNorm and ReLU6.
* The body (Table 1): `TABLE`, a full 3x3 stride-2 stem convolution with 32 channels followed by
  13 separable blocks, given as (pointwise output channels, repeats, depthwise stride).
* Width multiplier alpha (Sec. 3.3): every layer thinned to int(c * alpha), truncated as Keras
  does (V1 does not round to multiples of 8).
* Resolution multiplier rho (Sec. 3.4): not a parameter; feed smaller images. The network is fully
  convolutional up to the global pooling and takes any size >= 32.

Padding is TensorFlow 'SAME'. Keras' MobileNetV1 instead pads (0, 1) before each stride-2
convolution: the same on even sizes, but on odd ones it floors where 'SAME' ceils, so at 50x50
Keras ends at a 1x1 map where this one (and Keras' MobileNetV2) ends at 2x2
(`layers.same_padding`).
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from mobilenets.layers import ConvBN
from mobilenets.network import Architecture, MobileNet, Stage


class DepthwiseSeparable(nnx.Module):
    """Depthwise-separable convolution (Sec. 3.1, Fig. 3 right).

    3x3 depthwise (stride `stride`) + BN + ReLU6, then 1x1 pointwise + BN + ReLU6. It costs
    9 * C_in + C_in * C_out multiply-adds per output pixel instead of 9 * C_in * C_out for a full
    3x3 convolution, 8 to 9 times fewer at these widths. `unit_kwargs` are `ConvBN`'s keyword
    arguments.
    """

    def __init__(self, in_features: int, out_features: int, stride: int, **unit_kwargs):
        self.depthwise = ConvBN(
            in_features,
            in_features,
            kernel_size=3,
            stride=stride,
            groups=in_features,
            **unit_kwargs,
        )
        self.pointwise = ConvBN(in_features, out_features, **unit_kwargs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pointwise(self.depthwise(x))

    def units(self) -> list[ConvBN]:
        return [self.depthwise, self.pointwise]


def truncated_width(channels: float) -> int:
    """The width multiplier of Sec. 3.3 as Keras applies it: int(c * alpha), truncated."""
    return int(channels)


# Table 1 of the paper: the separable blocks as (pointwise output channels, repeats, stride).
TABLE = tuple(
    Stage(channels, repeats, stride)
    for channels, repeats, stride in (
        (64, 1, 1),
        (128, 1, 2),
        (128, 1, 1),
        (256, 1, 2),
        (256, 1, 1),
        (512, 1, 2),
        (512, 5, 1),
        (1024, 1, 2),
        (1024, 1, 1),
    )
)

ARCHITECTURE = Architecture(
    block=DepthwiseSeparable,
    stages=TABLE,
    width=truncated_width,
    stem_channels=32,
    last_channels=None,
    # The Keras application's defaults (the framework of the reproduced study).
    dropout_rate=1e-3,
    bn_momentum=0.99,
    bn_epsilon=1e-3,
)

MobileNetV1 = functools.partial(MobileNet, ARCHITECTURE)
