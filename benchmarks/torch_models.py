"""PyTorch MobileNetV1 / MobileNetV2, layer for layer as timm's `mobilenetv1_100` and torchvision's
`mobilenet_v2`, for the CPU speed comparison in `cpu_train_step.py` only.

Written out here instead of imported so the benchmark needs nothing but `torch`, and so both nets
match the JAX ones exactly: the same channel counts (the tables are imported from `mobilenets`),
conv + BatchNorm + ReLU6, no conv bias, the linear bottleneck and shortcut of V2, global average
pooling and a dense classifier. Padding is PyTorch's symmetric (1, 1), which changes no cost.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilenets import mobilenet_v1, mobilenet_v2
from mobilenets.layers import ConvSpec


def conv_bn(spec: ConvSpec) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU6) as torchvision's `Conv2dNormActivation`."""
    groups = spec.in_features if spec.kind == "depthwise" else 1
    layers = [
        nn.Conv2d(
            spec.in_features,
            spec.out_features,
            spec.kernel_size,
            stride=spec.stride,
            padding=spec.kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(spec.out_features),
    ]
    if spec.activation:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, in_features: int, out_features: int, stride: int, expansion: int):
        super().__init__()
        specs = mobilenet_v2.InvertedResidual.conv_specs(
            in_features, out_features, stride, expansion
        )
        self.conv = nn.Sequential(*[conv_bn(spec) for spec in specs])
        self.use_shortcut = stride == 1 and in_features == out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_shortcut else self.conv(x)


class Classifier(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout_rate: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate)
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x.mean(dim=(2, 3))))


def mobilenet_v1_torch(num_classes: int = 2, alpha: float = 1.0) -> nn.Module:
    """timm `mobilenetv1_100` layout (ReLU6 as in the paper and Keras)."""
    specs, features = mobilenet_v1.conv_specs(alpha)
    return nn.Sequential(
        *[conv_bn(spec) for spec in specs],
        Classifier(features, num_classes, mobilenet_v1.DEFAULT_DROPOUT_RATE),
    )


def mobilenet_v2_torch(num_classes: int = 2, alpha: float = 1.0) -> nn.Module:
    """torchvision `mobilenet_v2` layout."""
    return nn.Sequential(
        conv_bn(mobilenet_v2.stem_spec(alpha)),
        *[InvertedResidual(*config) for config in mobilenet_v2.block_configs(alpha)],
        conv_bn(mobilenet_v2.last_spec(alpha)),
        Classifier(
            mobilenet_v2.last_channels(alpha), num_classes, mobilenet_v2.DEFAULT_DROPOUT_RATE
        ),
    )


TORCH_MODELS = {"mobilenet_v1": mobilenet_v1_torch, "mobilenet_v2": mobilenet_v2_torch}
