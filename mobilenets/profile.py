"""Analytic size and cost of a MobileNet: parameters, BatchNorm statistics, multiply-adds.

Counted from the same `ConvSpec` lists the modules are built from (`mobilenet_v1.conv_specs`,
`mobilenet_v2.conv_specs`), so the numbers describe exactly the network that `create` builds.
Multiply-adds follow the papers' convention: convolutions and the classifier, one per weight per
output pixel; BatchNorm, activations, pooling and biases are not counted. At 224x224 with 1000
classes this gives 568,740,352 for MobileNetV1 1.0 (the paper's "569M") and 300,774,272 for
MobileNetV2 1.0 (the paper's "300M").
"""

from __future__ import annotations

import dataclasses
import math

from mobilenets import mobilenet_v1, mobilenet_v2
from mobilenets.layers import ConvSpec, same_padding

# Name -> function returning (conv specs in order, channels fed to the classifier).
_CONV_SPECS = {
    "mobilenet_v1": mobilenet_v1.conv_specs,
    "mobilenet_v2": mobilenet_v2.conv_specs,
}


@dataclasses.dataclass(frozen=True)
class Profile:
    """params: trainable parameters; batch_stats: BatchNorm running means and variances;
    macs: multiply-adds of one image; feature_size: side of the last feature map."""

    params: int
    batch_stats: int
    macs: int
    feature_size: int


def _conv_weights(spec: ConvSpec) -> int:
    return math.prod(spec.kernel_shape)


def profile(
    name: str, *, alpha: float = 1.0, image_size: int = 224, num_classes: int = 1000
) -> Profile:
    """Counts of the network `name` at width `alpha` for square `image_size` inputs."""
    if name not in _CONV_SPECS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(_CONV_SPECS)}")
    specs, feature_channels = _CONV_SPECS[name](alpha)
    size = image_size
    params = batch_stats = macs = 0
    for spec in specs:
        size, _ = same_padding(size, spec.kernel_size, spec.stride)
        weights = _conv_weights(spec)
        params += weights + 2 * spec.out_features  # kernel, BatchNorm scale and bias
        batch_stats += 2 * spec.out_features  # BatchNorm running mean and variance
        macs += weights * size * size
    classifier = feature_channels * num_classes
    params += classifier + num_classes
    macs += classifier
    return Profile(params=params, batch_stats=batch_stats, macs=macs, feature_size=size)
