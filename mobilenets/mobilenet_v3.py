"""MobileNetV3 (Howard et al. 2019, "Searching for MobileNetV3"), Small and Large, layer for layer
as `keras.applications.MobileNetV3Small` / `MobileNetV3Large` (`include_top=True`), with their
`minimalistic` variants.

Ideas of the paper and where they live:

* The bneck block (Sec. 5.3, Fig. 4): `Bneck`, MobileNetV2's inverted residual with a linear
  bottleneck (`mobilenet_v2.InvertedResidual`), a 3x3 or 5x5 depthwise kernel, ReLU or
  hard-swish, and optional squeeze-and-excitation between the depthwise and the projection.
* Squeeze-and-excitation (Sec. 5.3, after Hu et al. 2018): `SqueezeExcite`, channel weights from
  the pooled features, a bottleneck of a quarter of the expanded width, squashed by the hard
  sigmoid.
* Hard-swish, x * relu6(x + 3) / 6 (Sec. 5.2): `layers.hard_swish`, used only in the deeper half
  of the network, where it pays off; ReLU in the early layers.
* The bodies found by the architecture search (Tables 1 and 2): `LARGE_TABLE`, `SMALL_TABLE`, one
  row per block: kernel, expansion, output channels, SE, nonlinearity, stride.
* The redesigned last stage (Sec. 5.1): a 1x1 convolution to 6 times the last block's channels
  (with BatchNorm and hard-swish), global average pooling, and only then a 1x1 convolution to
  1024 (Small) or 1280 (Large) channels with bias, no BatchNorm, and hard-swish: behind the
  pooling it costs one multiply-add per weight, not one per weight and pixel. Then dropout 0.2
  and the classifier (`layers.ClassifierHead` with its dense layer).
* The stem (Sec. 5.2): 16 filters of 3x3, stride 2, hard-swish, at every width multiplier.
* Width multiplier alpha (Sec. 6.1.2): every block's channels `make_divisible(c * alpha)`, the
  expanded width `make_divisible(c_in * ratio)`, the last dense layer widened only above one.

`minimalistic(...)` (Keras' `minimalistic=True`, the paper's "minimalistic" models of Table 7):
3x3 kernels, ReLU and no squeeze-and-excitation everywhere.

Keras writes each expansion as a ratio to the block's input channels (72 / 16, 2.3, ...) and
rounds `make_divisible(c_in * ratio)`; the tables keep those ratios, which give the paper's
expanded sizes at alpha 1. A block has an expansion convolution exactly when the expanded width
differs from its input, which in both tables is every block but the first (Keras' `block_id > 0`).

Padding is TensorFlow 'SAME' (`layers.same_padding`), identical to Keras' `correct_pad` + 'valid'
for stride-2 depthwise convolutions on every input whose size Keras knows. Keras built without an
`input_shape` (its default) pads as for even sizes everywhere, so on odd-sized maps (inputs that
are not multiples of 32) its stride-2 layers floor where these ceil. BatchNorm: momentum 0.999,
epsilon 1e-3 (Keras).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mobilenets.layers import accumulation_dtype, conv_kernel_init, hard_sigmoid, make_divisible
from mobilenets.mobilenet_v2 import InvertedResidual
from mobilenets.network import Architecture, MobileNet, Stage

SE_RATIO = 0.25  # squeeze width over expanded width (Keras' se_ratio)


class SqueezeExcite(nnx.Module):
    """Squeeze-and-excitation (Hu et al. 2018), as MobileNetV3 uses it (Sec. 5.3, Fig. 4).

    Squeeze: global average pooling to one number per channel. Excite: a 1x1 convolution to
    `squeeze_features` with bias and ReLU, a 1x1 convolution back to `features` with bias and the
    hard sigmoid. The result, in [0, 1], scales each channel of the input: the block learns which
    channels matter for this image. The convolutions run on a 1x1 map, so they are the dense
    layers here, in at least float32 like the classifier.
    """

    def __init__(
        self,
        features: int,
        squeeze_features: int,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        dense = dict(
            kernel_init=conv_kernel_init,
            bias_init=nnx.initializers.zeros_init(),
            dtype=accumulation_dtype(dtype),
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.squeeze = nnx.Linear(features, squeeze_features, **dense)
        self.excite = nnx.Linear(squeeze_features, features, **dense)

    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = jnp.mean(x.astype(self.squeeze.dtype), axis=(1, 2))
        weights = hard_sigmoid(self.excite(jax.nn.relu(self.squeeze(pooled))))
        return (x * weights[:, None, None, :]).astype(x.dtype)

    def dense_layers(self) -> list[nnx.Linear]:
        """The layers with weights: each costs one multiply-add per weight and image."""
        return [self.squeeze, self.excite]


class Bneck(InvertedResidual):
    """MobileNetV3's block (Sec. 5.3, Fig. 4): MobileNetV2's inverted residual with a linear
    bottleneck, a `kernel_size` depthwise convolution, the row's nonlinearity (`activation`:
    "relu" or "hard_swish") after the expansion and the depthwise convolution, and, where the
    table says so, squeeze-and-excitation on the expanded features before the projection.
    `unit_kwargs` are `ConvBN`'s keyword arguments."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        stride: int,
        expansion: float,
        *,
        kernel_size: int,
        activation: str,
        squeeze_excite: bool,
        **unit_kwargs,
    ):
        super().__init__(
            in_features,
            out_features,
            stride,
            expansion,
            kernel_size=kernel_size,
            activation=activation,
            **unit_kwargs,
        )
        if squeeze_excite:
            hidden = self.depthwise.out_features
            shared = ("dtype", "param_dtype", "rngs")
            dense = {key: unit_kwargs[key] for key in shared if key in unit_kwargs}
            self.squeeze_excite = SqueezeExcite(hidden, make_divisible(hidden * SE_RATIO), **dense)


# The paper's abbreviations of the nonlinearities.
NONLINEARITY = {"RE": "relu", "HS": "hard_swish"}


def bneck_rows(*rows: tuple) -> tuple[Stage, ...]:
    """Table rows (kernel, expansion ratio, output channels, SE, nonlinearity, stride) as
    one-block stages."""
    return tuple(
        Stage(
            channels=channels,
            repeats=1,
            stride=stride,
            expansion=expansion,
            options=(
                ("kernel_size", kernel_size),
                ("activation", NONLINEARITY[nonlinearity]),
                ("squeeze_excite", squeeze_excite),
            ),
        )
        for kernel_size, expansion, channels, squeeze_excite, nonlinearity, stride in rows
    )


# Table 2 of the paper (MobileNetV3-Small), with Keras' expansion ratios: exp size / input.
SMALL_TABLE = bneck_rows(
    # kernel, expansion, out, SE, NL, stride   (exp size at alpha 1)
    (3, 1, 16, True, "RE", 2),  # 16
    (3, 72 / 16, 24, False, "RE", 2),  # 72
    (3, 88 / 24, 24, False, "RE", 1),  # 88
    (5, 4, 40, True, "HS", 2),  # 96
    (5, 6, 40, True, "HS", 1),  # 240
    (5, 6, 40, True, "HS", 1),  # 240
    (5, 3, 48, True, "HS", 1),  # 120
    (5, 3, 48, True, "HS", 1),  # 144
    (5, 6, 96, True, "HS", 2),  # 288
    (5, 6, 96, True, "HS", 1),  # 576
    (5, 6, 96, True, "HS", 1),  # 576
)

# Table 1 of the paper (MobileNetV3-Large), with Keras' expansion ratios.
LARGE_TABLE = bneck_rows(
    # kernel, expansion, out, SE, NL, stride   (exp size at alpha 1)
    (3, 1, 16, False, "RE", 1),  # 16
    (3, 4, 24, False, "RE", 2),  # 64
    (3, 3, 24, False, "RE", 1),  # 72
    (5, 3, 40, True, "RE", 2),  # 72
    (5, 3, 40, True, "RE", 1),  # 120
    (5, 3, 40, True, "RE", 1),  # 120
    (3, 6, 80, False, "HS", 2),  # 240
    (3, 2.5, 80, False, "HS", 1),  # 200
    (3, 2.3, 80, False, "HS", 1),  # 184
    (3, 2.3, 80, False, "HS", 1),  # 184
    (3, 6, 112, True, "HS", 1),  # 480
    (3, 6, 112, True, "HS", 1),  # 672
    (5, 6, 160, True, "HS", 2),  # 672
    (5, 6, 160, True, "HS", 1),  # 960
    (5, 6, 160, True, "HS", 1),  # 960
)


def v3_architecture(table: tuple[Stage, ...], head_channels: int) -> Architecture:
    """Keras' MobileNetV3 around a table: the stem, the last stage, the defaults."""
    return Architecture(
        block=Bneck,
        stages=table,
        width=make_divisible,
        stem_channels=16,
        stem_scales_with_alpha=False,
        activation="hard_swish",
        last_expansion=6,
        head_channels=head_channels,
        # The Keras application's defaults.
        dropout_rate=0.2,
        bn_momentum=0.999,
        bn_epsilon=1e-3,
    )


def minimalistic(architecture: Architecture) -> Architecture:
    """Keras' `minimalistic=True`: every kernel 3x3, every nonlinearity ReLU, no SE."""
    simple = (("kernel_size", 3), ("activation", "relu"), ("squeeze_excite", False))
    stages = tuple(stage._replace(options=simple) for stage in architecture.stages)
    return dataclasses.replace(architecture, stages=stages, activation="relu")


SMALL = v3_architecture(SMALL_TABLE, head_channels=1024)
LARGE = v3_architecture(LARGE_TABLE, head_channels=1280)
SMALL_MINIMALISTIC = minimalistic(SMALL)
LARGE_MINIMALISTIC = minimalistic(LARGE)

MobileNetV3Small = functools.partial(MobileNet, SMALL)
MobileNetV3Large = functools.partial(MobileNet, LARGE)
MobileNetV3SmallMinimalistic = functools.partial(MobileNet, SMALL_MINIMALISTIC)
MobileNetV3LargeMinimalistic = functools.partial(MobileNet, LARGE_MINIMALISTIC)
