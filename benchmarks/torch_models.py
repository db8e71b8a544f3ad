"""PyTorch MobileNetV1 / MobileNetV2 mirroring the Flax networks layer for layer, for the CPU
speed comparison in `cpu_train_step.py` only (timm's `mobilenetv1_100` and torchvision's
`mobilenet_v2` layouts).

Written out here instead of imported so the benchmark needs nothing but `torch`, and read off
the Flax network itself (an abstract instance: shapes only), so both match exactly: the same
channel counts, conv + BatchNorm + ReLU6, no conv bias, the linear bottleneck and shortcut of V2,
global average pooling and a dense classifier. Padding is PyTorch's symmetric (1, 1), which
changes no cost.
"""

from __future__ import annotations

import functools

from flax import nnx
from torch import nn

import mobilenets


def conv_bn(unit: mobilenets.ConvBN) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU6) as torchvision's `Conv2dNormActivation`."""
    kernel_size = unit.conv.kernel_size[0]
    layers = [
        nn.Conv2d(
            unit.in_features,
            unit.out_features,
            kernel_size,
            stride=unit.stride,
            padding=kernel_size // 2,
            groups=unit.conv.feature_group_count,
            bias=False,
        ),
        nn.BatchNorm2d(unit.out_features),
    ]
    if unit.activation == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class Block(nn.Module):
    """A block's units in order, plus MobileNetV2's shortcut where the block has one."""

    def __init__(self, block: nnx.Module):
        super().__init__()
        self.conv = nn.Sequential(*[conv_bn(unit) for unit in block.units()])
        self.use_shortcut = getattr(block, "use_shortcut", False)

    def forward(self, x):
        return x + self.conv(x) if self.use_shortcut else self.conv(x)


class Classifier(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout_rate: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate)
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.linear(self.dropout(x.mean(dim=(2, 3))))


def torch_mobilenet(name: str, num_classes: int = 2, alpha: float = 1.0) -> nn.Module:
    """The PyTorch twin of `mobilenets.create(name, num_classes=..., alpha=...)`."""
    model = nnx.eval_shape(
        lambda: mobilenets.create(
            name,
            num_classes=num_classes,
            alpha=alpha,
            implementation="reference",
            rngs=nnx.Rngs(0),
        )
    )
    last = [conv_bn(model.last_conv)] if model.last_conv is not None else []
    return nn.Sequential(
        conv_bn(model.stem),
        *[Block(block) for block in model.blocks],
        *last,
        Classifier(model.head.classifier.in_features, num_classes, model.head.dropout.rate),
    )


TORCH_MODELS = {name: functools.partial(torch_mobilenet, name) for name in mobilenets.ARCHITECTURES}
