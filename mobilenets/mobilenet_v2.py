"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks"),
layer for layer as `tf.keras.applications.MobileNetV2` (and torchvision's `mobilenet_v2`).

Ideas of the paper and where they live:

* Inverted residual with linear bottleneck (Sec. 3.2-3.3, Fig. 3b, Table 1): `InvertedResidual`.
  A thin input is expanded by the factor t with a 1x1 convolution, filtered by a 3x3 depthwise
  convolution, and projected back to a thin output by a *linear* 1x1 convolution; the shortcut
  joins the thin bottlenecks, not the wide expansions.
* The body (Table 2): `TABLE`, rows (t, c, n, s): n blocks of expansion t and c output
  channels, the first of them with stride s. Stem 32 channels stride 2, last 1x1 convolution 1280.
* Width multiplier alpha: every channel count c becomes `make_divisible(c * alpha)`, except the
  last convolution, which the paper keeps at 1280 for multipliers below one (Sec. 6.1) and the
  reference code widens to make_divisible(1280 * alpha) above one.
* Resolution multiplier: feed smaller images; any size >= 32 works.

Padding is TensorFlow 'SAME', identical to Keras' `correct_pad` + 'valid' on every size.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from mobilenets.layers import ConvBN, make_divisible
from mobilenets.network import Architecture, MobileNet, Stage


class InvertedResidual(nnx.Module):
    """Bottleneck residual block with expansion t and a linear bottleneck (Sec. 3.3, Table 1).

    1x1 expansion to t * C_in channels + BN + ReLU6 (omitted when that is C_in, t = 1, as in the
    first block); 3x3 depthwise with the block's stride + BN + ReLU6; 1x1 projection to C_out + BN
    with **no** activation (the linear bottleneck: ReLU on the thin output would zero part of a
    low-dimensional manifold, Sec. 3.2). The identity shortcut adds the input exactly when the
    shapes agree, stride 1 and C_in == C_out. `unit_kwargs` are `ConvBN`'s keyword arguments.

    MobileNetV3 builds its blocks from this one (`mobilenet_v3.Bneck`): `kernel_size` and
    `activation` choose the depthwise kernel and the nonlinearity, and squeeze-and-excitation
    fills `squeeze_excite`, between the depthwise and the projection. The expanded width is
    rounded to a multiple of 8 (`make_divisible`) for V3's fractional ratios such as 72/16; V2's
    widths are multiples of 8 already, so the rounding leaves them as they are.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        stride: int,
        expansion: float,
        *,
        kernel_size: int = 3,
        activation: str = "relu6",
        **unit_kwargs,
    ):
        hidden = make_divisible(in_features * expansion)
        self.expand = (
            ConvBN(in_features, hidden, activation=activation, **unit_kwargs)
            if hidden != in_features
            else None
        )
        self.depthwise = ConvBN(
            hidden,
            hidden,
            kernel_size=kernel_size,
            stride=stride,
            groups=hidden,
            activation=activation,
            **unit_kwargs,
        )
        # MobileNetV3's squeeze-and-excitation (mobilenet_v3.Bneck) goes here; nnx.data: a slot
        # for a module, not a constant.
        self.squeeze_excite: nnx.Module | None = nnx.data(None)
        self.project = ConvBN(hidden, out_features, activation=None, **unit_kwargs)
        self.use_shortcut = stride == 1 and in_features == out_features

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.expand(x) if self.expand is not None else x
        y = self.depthwise(y)
        if self.squeeze_excite is not None:
            y = self.squeeze_excite(y)
        y = self.project(y)
        return x + y if self.use_shortcut else y

    def units(self) -> list[ConvBN]:
        expand = [self.expand] if self.expand is not None else []
        return [*expand, self.depthwise, self.project]


# Table 2 of the paper, row for row: (expansion t, output channels c, repeats n, first stride s).
TABLE = tuple(
    Stage(channels=c, repeats=n, stride=s, expansion=t)
    for t, c, n, s in (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
)

ARCHITECTURE = Architecture(
    block=InvertedResidual,
    stages=TABLE,
    width=make_divisible,
    stem_channels=32,
    last_channels=1280,
    # The Keras application's defaults (the framework of the reproduced study).
    dropout_rate=0.0,
    bn_momentum=0.999,
    bn_epsilon=1e-3,
)

MobileNetV2 = functools.partial(MobileNet, ARCHITECTURE)
