"""Size and cost of a network: parameters, BatchNorm statistics, multiply-adds.

Counted on the network `create` builds, instantiated abstractly (`nnx.eval_shape`: shapes only,
nothing allocated or computed). Multiply-adds follow the papers' convention: convolutions and
dense layers, one per weight per output pixel (the dense layers on pooled features, and
squeeze-and-excitation's, run on one pixel); BatchNorm, activations, pooling, the SE scaling and
biases are not counted. At 224x224 with 1000 classes this gives 568,740,352 for MobileNetV1 1.0
(the paper's "569M") and 300,774,272 for MobileNetV2 1.0 (the paper's "300M").
"""

from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

from mobilenets.layers import ConvBN


@dataclasses.dataclass(frozen=True)
class Profile:
    """params: trainable parameters; batch_stats: BatchNorm running means and variances;
    macs: multiply-adds of one image; feature_size: side of the last feature map."""

    params: int
    batch_stats: int
    macs: int
    feature_size: int


def count(model: nnx.Module, kind: type[nnx.Variable]) -> int:
    """How many numbers of the variable kind (nnx.Param, nnx.BatchStat) the model holds."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, kind)))


def spatial_cost(layer: nnx.Module, size: int) -> tuple[int, int]:
    """(multiply-adds, output side) of one layer of `model.layers()` on a size x size map.

    A `ConvBN` costs one multiply-add per kernel weight per output pixel. A layer without
    `units()` is a pooling layer: it costs none and only changes the size. A block runs its units
    one after another, except a projection shortcut (`block.projection`, ResNet), which runs on
    the block's input beside them; its squeeze-and-excitation (`block.squeeze_excite`,
    MobileNetV3) runs on the pooled features, one multiply-add per weight.
    """
    if isinstance(layer, ConvBN):
        out = layer.output_size(size)
        return math.prod(layer.conv.kernel.shape) * out * out, out
    if not hasattr(layer, "units"):
        return 0, layer.output_size(size)
    projection = getattr(layer, "projection", None)
    squeeze_excite = getattr(layer, "squeeze_excite", None)
    macs, out = 0, size
    for unit in layer.units():
        if unit is not projection:
            unit_macs, out = spatial_cost(unit, out)
            macs += unit_macs
    if projection is not None:
        macs += spatial_cost(projection, size)[0]
    if squeeze_excite is not None:
        macs += sum(math.prod(dense.kernel.shape) for dense in squeeze_excite.dense_layers())
    return macs, out


def profile_model(model: nnx.Module, image_size: int) -> Profile:
    """The counts of a (possibly abstract) model for square `image_size` inputs.

    The model lists the layers its forward pass applies in order (`layers()`: units, blocks,
    pooling); each one's output side follows from its stride and padding (`spatial_cost`). The
    head's dense layers run once per image on the pooled features.
    """
    size, macs = image_size, 0
    for layer in model.layers():
        layer_macs, size = spatial_cost(layer, size)
        macs += layer_macs
    macs += sum(math.prod(dense.kernel.shape) for dense in model.head.dense_layers())
    return Profile(
        params=count(model, nnx.Param),
        batch_stats=count(model, nnx.BatchStat),
        macs=macs,
        feature_size=size,
    )
