"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks"),
layer for layer as `tf.keras.applications.MobileNetV2` (and torchvision's `mobilenet_v2`).

Ideas of the paper and where they live:

* Inverted residual with linear bottleneck (Sec. 3.2-3.3, Fig. 3b, Table 1): `InvertedResidual`.
  A thin input is expanded by the factor t with a 1x1 convolution, filtered by a 3x3 depthwise
  convolution, and projected back to a thin output by a *linear* 1x1 convolution; the shortcut
  joins the thin bottlenecks, not the wide expansions.
* The body (Table 2): `ARCHITECTURE`, rows (t, c, n, s): n blocks of expansion t and c output
  channels, the first of them with stride s. Stem 32 channels stride 2, last 1x1 convolution 1280.
* Width multiplier alpha: every channel count c becomes `make_divisible(c * alpha, 8)`, except the
  last convolution, which the paper keeps at 1280 for multipliers below one (Sec. 6.1) and the
  reference code widens to make_divisible(1280 * alpha) above one.
* Resolution multiplier: feed smaller images; any size >= 32 works.

Padding is TensorFlow 'SAME', identical to Keras' `correct_pad` + 'valid' on every size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mobilenets.layers import ConvBN, ConvSpec, DepthwiseImpl, MobileNet, make_divisible

STEM_CHANNELS = 32
STEM_STRIDE = 2
LAST_CHANNELS = 1280
# Table 2 of the paper: (expansion t, output channels c, repeats n, first stride s).
ARCHITECTURE: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Keras application defaults (the framework of the reproduced study).
DEFAULT_DROPOUT_RATE = 0.0
DEFAULT_BN_MOMENTUM = 0.999
DEFAULT_BN_EPSILON = 1e-3


def stem_spec(alpha: float) -> ConvSpec:
    """The full 3x3 stride-2 convolution on the RGB image."""
    out = make_divisible(STEM_CHANNELS * alpha)
    return ConvSpec("dense", 3, out, kernel_size=3, stride=STEM_STRIDE)


def last_channels(alpha: float) -> int:
    """Width of the final 1x1 convolution: 1280, thinned never, widened when alpha > 1."""
    return make_divisible(LAST_CHANNELS * alpha) if alpha > 1.0 else LAST_CHANNELS


def block_configs(alpha: float) -> tuple[tuple[int, int, int, int], ...]:
    """(input channels, output channels, stride, expansion) of each of the 17 blocks."""
    configs = []
    in_features = stem_spec(alpha).out_features
    for expansion, base, repeats, first_stride in ARCHITECTURE:
        out_features = make_divisible(base * alpha)
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            configs.append((in_features, out_features, stride, expansion))
            in_features = out_features
    return tuple(configs)


def last_spec(alpha: float) -> ConvSpec:
    """The 1x1 convolution from the last bottleneck to the 1280 pooled features."""
    return ConvSpec("pointwise", block_configs(alpha)[-1][1], last_channels(alpha))


def conv_specs(alpha: float) -> tuple[tuple[ConvSpec, ...], int]:
    """Every convolution of the network in order, and the channel count fed to the classifier."""
    specs = [stem_spec(alpha)]
    for config in block_configs(alpha):
        specs.extend(InvertedResidual.conv_specs(*config))
    specs.append(last_spec(alpha))
    return tuple(specs), specs[-1].out_features


class InvertedResidual(nnx.Module):
    """Bottleneck residual block with expansion t and a linear bottleneck (Sec. 3.3, Table 1).

    1x1 expansion to t * C_in channels + BN + ReLU6 (omitted when t = 1, as in the first block);
    3x3 depthwise with the block's stride + BN + ReLU6; 1x1 projection to C_out + BN with **no**
    activation (the linear bottleneck: ReLU on the thin output would zero part of a
    low-dimensional manifold, Sec. 3.2). The identity shortcut adds the input exactly when the
    shapes agree, stride 1 and C_in == C_out.
    """

    @staticmethod
    def conv_specs(
        in_features: int, out_features: int, stride: int, expansion: int
    ) -> tuple[ConvSpec, ...]:
        hidden = in_features * expansion
        expand = (ConvSpec("pointwise", in_features, hidden),) if expansion != 1 else ()
        return (
            *expand,
            ConvSpec("depthwise", hidden, hidden, kernel_size=3, stride=stride),
            ConvSpec("pointwise", hidden, out_features, activation=False),
        )

    def __init__(
        self, in_features: int, out_features: int, stride: int, expansion: int, **layer_options
    ):
        *expand, depthwise, project = self.conv_specs(in_features, out_features, stride, expansion)
        self.expand = ConvBN.from_spec(expand[0], **layer_options) if expand else None
        self.depthwise = ConvBN.from_spec(depthwise, **layer_options)
        self.project = ConvBN.from_spec(project, **layer_options)
        self.use_shortcut = stride == 1 and in_features == out_features

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.use_shortcut else y


class MobileNetV2(MobileNet):
    """MobileNetV2 classifier: stem, 17 inverted residual blocks, 1x1 conv to 1280, pooling,
    dropout, dense.

    Args:
      num_classes: outputs of the classifier (2 for IDC negative / positive).
      alpha: width multiplier (0.35 to 1.4 in the paper).
      dropout_rate: before the classifier; None is Keras' 0 (no dropout).
      dtype: compute dtype of the convolutions; parameters, BatchNorm, pooling and logits are
        float32.
      depthwise_impl: formulation of the depthwise convolutions, see `layers.DepthwiseConv`.
      bn_momentum, bn_epsilon: None gives Keras' 0.999 and 1e-3.
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
                InvertedResidual(*config, **options) for config in block_configs(alpha)
            ],
            last=last_spec(alpha),
            classifier_features=conv_specs(alpha)[1],
            num_classes=num_classes,
            dropout_rate=dropout_rate,
            dtype=dtype,
            depthwise_impl=depthwise_impl,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            rngs=rngs,
        )
