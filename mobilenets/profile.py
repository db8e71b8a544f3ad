"""Size and cost of a network: parameters, BatchNorm statistics, multiply-adds.

Counted on the network `create` builds, instantiated abstractly (`nnx.eval_shape`: shapes only,
nothing allocated or computed). Multiply-adds follow the papers' convention: convolutions and the
classifier, one per weight per output pixel; BatchNorm, activations, pooling and biases are not
counted. At 224x224 with 1000 classes this gives 568,740,352 for MobileNetV1 1.0 (the paper's
"569M") and 300,774,272 for MobileNetV2 1.0 (the paper's "300M").
"""

from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

from mobilenets.layers import same_padding


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


def profile_model(model: nnx.Module, image_size: int) -> Profile:
    """The counts of a (possibly abstract) model for square `image_size` inputs.

    The model lists its convolution units in the order they run (`units()`); each one's output
    side follows from its stride ('SAME' padding), and each weight of its kernel is one
    multiply-add per output pixel.
    """
    size, macs = image_size, 0
    for unit in model.units():
        kernel = unit.conv.kernel
        size, _ = same_padding(size, kernel.shape[0], unit.stride)
        macs += math.prod(kernel.shape) * size * size
    macs += math.prod(model.head.classifier.kernel.shape)
    return Profile(
        params=count(model, nnx.Param),
        batch_stats=count(model, nnx.BatchStat),
        macs=macs,
        feature_size=size,
    )
