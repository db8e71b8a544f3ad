"""MobileNetV1, V2, V3 and ResNet-50 in Flax NNX, layer for layer as the Keras applications.

    import mobilenets
    model = mobilenets.create("mobilenet_v2", num_classes=2, alpha=1.0, rngs=nnx.Rngs(0))
    logits = model(images)  # NHWC float images, any size >= 32 -> [batch, num_classes]
    mobilenets.profile("mobilenet_v2", alpha=1.0, image_size=224, num_classes=1000)

The package, in reading order:
  layers.py        make_divisible, the activations, ConvBN (conv + BatchNorm + activation),
                   the classifier head
  network.py       a MobileNet read from its architecture table
  mobilenet_v1.py  the depthwise-separable block and Table 1
  mobilenet_v2.py  the inverted residual with its linear bottleneck and Table 2
  mobilenet_v3.py  squeeze-and-excitation, the bneck block, the Small and Large tables
  resnet.py        ResNet-50: the bottleneck block, its table, stem and max pooling
  counting.py      parameters, statistics and multiply-adds of a built network (`profile`)
  cpu/             the same computation, faster on CPUs (custom gradients, native kernels);
                   registered here as implementation "cpu", never imported by the definitions
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from flax import nnx

from mobilenets import cpu as _cpu  # noqa: F401  (registers the "cpu" implementation)
from mobilenets.counting import Profile, profile_model
from mobilenets.layers import IMPLEMENTATIONS, ConvBN, make_divisible
from mobilenets.mobilenet_v1 import MobileNetV1
from mobilenets.mobilenet_v2 import MobileNetV2
from mobilenets.mobilenet_v3 import (
    MobileNetV3Large,
    MobileNetV3LargeMinimalistic,
    MobileNetV3Small,
    MobileNetV3SmallMinimalistic,
)
from mobilenets.network import MobileNet
from mobilenets.resnet import ResNet, ResNet50

# Every network takes the keyword arguments of `network.MobileNet` (ResNet only alpha = 1).
ARCHITECTURES: dict[str, Callable[..., nnx.Module]] = {
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_small": MobileNetV3Small,
    "mobilenet_v3_large": MobileNetV3Large,
    # Keras' minimalistic=True: 3x3 kernels, ReLU, no squeeze-and-excitation.
    "mobilenet_v3_small_minimalistic": MobileNetV3SmallMinimalistic,
    "mobilenet_v3_large_minimalistic": MobileNetV3LargeMinimalistic,
    "resnet50": ResNet50,
}
IMPLEMENTATION_CHOICES = ("auto", "reference", *IMPLEMENTATIONS)


def resolve_implementation(implementation: str) -> str:
    """ "auto": the CPU path on the CPU backend, the reference elsewhere (cuDNN, TPU)."""
    if implementation not in IMPLEMENTATION_CHOICES:
        raise ValueError(
            f"implementation must be one of {IMPLEMENTATION_CHOICES}, not {implementation!r}"
        )
    if implementation == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "reference"
    return implementation


def create(name: str, *, implementation: str = "auto", **kwargs) -> nnx.Module:
    """Builds the network registered as `name` (a key of `ARCHITECTURES`).

    `kwargs` are those of `network.MobileNet`: num_classes, alpha, dropout_rate, bn_momentum,
    bn_epsilon, dtype, param_dtype and (required) rngs. ResNet-50 accepts only alpha 1.0.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](implementation=resolve_implementation(implementation), **kwargs)


@functools.lru_cache(maxsize=64)
def profile(
    name: str, *, alpha: float = 1.0, image_size: int = 224, num_classes: int = 1000
) -> Profile:
    """Parameters, BatchNorm statistics and multiply-adds of `name` at `alpha`, `image_size`."""
    model = nnx.eval_shape(
        lambda: create(
            name,
            alpha=alpha,
            num_classes=num_classes,
            implementation="reference",
            rngs=nnx.Rngs(0),
        )
    )
    return profile_model(model, image_size)


__all__ = [
    "ARCHITECTURES",
    "IMPLEMENTATION_CHOICES",
    "ConvBN",
    "MobileNet",
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV3Large",
    "MobileNetV3Small",
    "Profile",
    "ResNet",
    "ResNet50",
    "create",
    "make_divisible",
    "profile",
    "profile_model",
    "resolve_implementation",
]
