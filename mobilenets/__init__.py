"""Flax NNX MobileNetV1 and MobileNetV2, layer for layer as the Keras applications.

import mobilenets
model = mobilenets.create("mobilenet_v2", num_classes=2, alpha=1.0, rngs=nnx.Rngs(0))
logits = model(images)  # NHWC float images, any size >= 32 -> float32 [batch, num_classes]
mobilenets.profile("mobilenet_v2", alpha=1.0, image_size=224, num_classes=1000)
"""

from __future__ import annotations

from flax import nnx

from mobilenets.layers import DEPTHWISE_IMPLS, DepthwiseConv, make_divisible
from mobilenets.mobilenet_v1 import MobileNetV1
from mobilenets.mobilenet_v2 import MobileNetV2
from mobilenets.profile import Profile, profile

ARCHITECTURES: dict[str, type[nnx.Module]] = {
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
}


def create(name: str, **kwargs) -> nnx.Module:
    """Builds the model registered as `name` ("mobilenet_v1" or "mobilenet_v2").

    `kwargs` are those of the model classes: num_classes, alpha, dropout_rate, dtype,
    depthwise_impl, bn_momentum, bn_epsilon and (required) rngs.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](**kwargs)


__all__ = [
    "ARCHITECTURES",
    "DEPTHWISE_IMPLS",
    "DepthwiseConv",
    "MobileNetV1",
    "MobileNetV2",
    "Profile",
    "create",
    "make_divisible",
    "profile",
]
