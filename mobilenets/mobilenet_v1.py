"""MobileNetV1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications"), layer for layer as `tf.keras.applications.MobileNet`.

Ideas of the paper and where they live:

* Depthwise-separable convolution (Sec. 3.1): `DepthwiseSeparable`, a 3x3 depthwise convolution
  filtering each channel, then a 1x1 pointwise convolution combining channels, each followed by
  BatchNorm and ReLU6 (Fig. 3).
* The body (Table 1): `ARCHITECTURE`, a full 3x3 stem convolution followed by 13 separable blocks
  given as (pointwise output channels, depthwise stride).
* Width multiplier alpha (Sec. 3.3): `channels(c, alpha)`, every layer thinned to int(c * alpha),
  truncated as Keras does (no rounding to multiples of 8 in V1).
* Resolution multiplier rho (Sec. 3.4): not a parameter; feed smaller images. The network is fully
  convolutional up to the global pooling and takes any size >= 32.

Padding is TensorFlow 'SAME'. Keras' MobileNetV1 instead pads (0, 1) before each stride-2
convolution; that is the same on even sizes but floors instead of ceiling on odd ones, so at 50x50
Keras ends at a 1x1 map where this one (and Keras' MobileNetV2) ends at 2x2. See
`layers.same_padding`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mobilenets.layers import ConvBN, ConvSpec, DepthwiseImpl, MobileNet

STEM_CHANNELS = 32
STEM_STRIDE = 2
# Table 1 of the paper: (pointwise output channels, depthwise stride) of the 13 separable blocks.
ARCHITECTURE: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
# Keras application defaults (the framework of the reproduced study).
DEFAULT_DROPOUT_RATE = 1e-3
DEFAULT_BN_MOMENTUM = 0.99
DEFAULT_BN_EPSILON = 1e-3


def channels(base: int, alpha: float) -> int:
    """Width multiplier (Sec. 3.3): int(base * alpha), truncated as in Keras' MobileNet."""
    return int(base * alpha)


def stem_spec(alpha: float) -> ConvSpec:
    """The full 3x3 stride-2 convolution on the RGB image."""
    return ConvSpec("dense", 3, channels(STEM_CHANNELS, alpha), kernel_size=3, stride=STEM_STRIDE)


def block_configs(alpha: float) -> tuple[tuple[int, int, int], ...]:
    """(input channels, output channels, stride) of each separable block at width `alpha`."""
    configs = []
    in_features = channels(STEM_CHANNELS, alpha)
    for base, stride in ARCHITECTURE:
        out_features = channels(base, alpha)
        configs.append((in_features, out_features, stride))
        in_features = out_features
    return tuple(configs)


def conv_specs(alpha: float) -> tuple[tuple[ConvSpec, ...], int]:
    """Every convolution of the network in order, and the channel count fed to the classifier."""
    specs = [stem_spec(alpha)]
    for config in block_configs(alpha):
        specs.extend(DepthwiseSeparable.conv_specs(*config))
    return tuple(specs), specs[-1].out_features


class DepthwiseSeparable(nnx.Module):
    """Depthwise-separable convolution (Sec. 3.1, Fig. 3 right).

    3x3 depthwise (stride `stride`) + BN + ReLU6, then 1x1 pointwise + BN + ReLU6. It costs
    9 * C_in + C_in * C_out multiply-adds per output pixel instead of 9 * C_in * C_out for a full
    3x3 convolution, 8 to 9 times fewer at these widths.
    """

    @staticmethod
    def conv_specs(in_features: int, out_features: int, stride: int) -> tuple[ConvSpec, ...]:
        return (
            ConvSpec("depthwise", in_features, in_features, kernel_size=3, stride=stride),
            ConvSpec("pointwise", in_features, out_features),
        )

    def __init__(self, in_features: int, out_features: int, stride: int, **layer_options):
        depthwise, pointwise = self.conv_specs(in_features, out_features, stride)
        self.depthwise = ConvBN.from_spec(depthwise, **layer_options)
        self.pointwise = ConvBN.from_spec(pointwise, **layer_options)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pointwise(self.depthwise(x))


class MobileNetV1(MobileNet):
    """MobileNetV1 classifier: stem, 13 depthwise-separable blocks, pooling, dropout, dense.

    Args:
      num_classes: outputs of the classifier (2 for IDC negative / positive).
      alpha: width multiplier (1.0, 0.75, 0.5, 0.25 in the paper).
      dropout_rate: before the classifier; None is Keras' 1e-3.
      dtype: compute dtype of the convolutions; parameters, BatchNorm, pooling and logits are
        float32.
      depthwise_impl: formulation of the depthwise convolutions, see `layers.DepthwiseConv`.
      bn_momentum, bn_epsilon: None gives Keras' 0.99 and 1e-3.
      rngs: `params` (or default) stream for initialisation; `dropout` (or default) for dropout.

    Call on NHWC float images of any size >= 32 (in [-1, 1] like the Keras preprocessing); returns
    float32 logits [batch, num_classes]. `model.train()` / `model.eval()` switch BatchNorm between
    batch and running statistics and dropout on / off.
    """

    DEFAULT_DROPOUT_RATE = DEFAULT_DROPOUT_RATE
    DEFAULT_BN_MOMENTUM = DEFAULT_BN_MOMENTUM
    DEFAULT_BN_EPSILON = DEFAULT_BN_EPSILON

    def __init__(
        self,
        num_classes: int = 2,
        alpha: float = 1.0,
        *,
        dropout_rate: float | None = None,
        dtype=jnp.float32,
        depthwise_impl: DepthwiseImpl = "auto",
        bn_momentum: float | None = None,
        bn_epsilon: float | None = None,
        rngs: nnx.Rngs,
    ):
        self.num_classes = num_classes
        self.alpha = alpha
        self._build(
            stem=stem_spec(alpha),
            make_blocks=lambda **options: [
                DepthwiseSeparable(*config, **options) for config in block_configs(alpha)
            ],
            last=None,
            classifier_features=conv_specs(alpha)[1],
            num_classes=num_classes,
            dropout_rate=dropout_rate,
            dtype=dtype,
            depthwise_impl=depthwise_impl,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            rngs=rngs,
        )
