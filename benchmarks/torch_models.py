"""PyTorch twins of the Flax networks (MobileNetV1, V2, V3 Small / Large, ResNet-50), layer for
layer, for the CPU speed comparison in `cpu_train_step.py` and `bench_torch.py` only (timm's
`mobilenetv1_100`, torchvision's `mobilenet_v2` / `mobilenet_v3_*` and Keras' `ResNet50`
layouts).

Written out here instead of imported so the benchmark needs nothing but `torch`, and read off
the Flax network itself (an abstract instance: shapes only), so both match exactly: the same
channel counts and kernel sizes, conv (+ bias where the Flax unit has one) + BatchNorm (same
epsilon and momentum) + the same activation, V2's and V3's linear bottleneck and shortcut, V3's
squeeze-and-excitation and head, ResNet's bottleneck, projection shortcut and max pooling, global
average pooling and a dense classifier. Padding is PyTorch's symmetric k // 2 where the Flax unit
pads TensorFlow's 'SAME' ((1, 2) for a 5x5 stride-2 window on even sizes): the same output sizes
and costs, windows shifted by at most one pixel.
"""

from __future__ import annotations

import functools

from flax import nnx
from torch import nn

import mobilenets
from mobilenets.layers import ClassifierHead
from mobilenets.mobilenet_v3 import SqueezeExcite as FlaxSqueezeExcite
from mobilenets.resnet import Bottleneck as FlaxBottleneck
from mobilenets.resnet import MaxPool as FlaxMaxPool

ACTIVATIONS = {"relu6": nn.ReLU6, "relu": nn.ReLU, "hard_swish": nn.Hardswish}


def conv_bn(unit: mobilenets.ConvBN) -> nn.Sequential:
    """Conv + BatchNorm (+ activation) as torchvision's `Conv2dNormActivation`."""
    kernel_size = unit.conv.kernel_size[0]
    layers = [
        nn.Conv2d(
            unit.in_features,
            unit.out_features,
            kernel_size,
            stride=unit.stride,
            padding=kernel_size // 2,
            groups=unit.conv.feature_group_count,
            bias=unit.conv.use_bias,
        ),
        # PyTorch's momentum weighs the new batch: 1 - Flax's (Keras') momentum.
        nn.BatchNorm2d(unit.out_features, eps=unit.norm.epsilon, momentum=1 - unit.norm.momentum),
    ]
    if unit.activation is not None:
        layers.append(ACTIVATIONS[unit.activation](inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Pool, dense + ReLU, dense + hard sigmoid, scale the channels (MobileNetV3's SE)."""

    def __init__(self, module: FlaxSqueezeExcite):
        super().__init__()
        self.squeeze = nn.Linear(module.squeeze.in_features, module.squeeze.out_features)
        self.excite = nn.Linear(module.excite.in_features, module.excite.out_features)

    def forward(self, x):
        pooled = x.mean(dim=(2, 3))
        weights = nn.functional.hardsigmoid(self.excite(nn.functional.relu(self.squeeze(pooled))))
        return x * weights[:, :, None, None]


class Block(nn.Module):
    """A MobileNet block's units in order (V3's squeeze-and-excitation after the depthwise
    convolution), plus V2's and V3's shortcut where the block has one."""

    def __init__(self, block: nnx.Module):
        super().__init__()
        layers = []
        for unit in block.units():
            layers.append(conv_bn(unit))
            squeeze_excite = getattr(block, "squeeze_excite", None)
            if unit is getattr(block, "depthwise", None) and squeeze_excite is not None:
                layers.append(SqueezeExcite(squeeze_excite))
        self.conv = nn.Sequential(*layers)
        self.use_shortcut = getattr(block, "use_shortcut", False)

    def forward(self, x):
        return x + self.conv(x) if self.use_shortcut else self.conv(x)


class Bottleneck(nn.Module):
    """ResNet's bottleneck: 1x1, 3x3, 1x1 plus the (projection) shortcut, then ReLU."""

    def __init__(self, block: FlaxBottleneck):
        super().__init__()
        self.residual = nn.Sequential(
            *[conv_bn(u) for u in (block.reduce, block.spatial, block.restore)]
        )
        self.projection = conv_bn(block.projection) if block.projection is not None else None

    def forward(self, x):
        shortcut = x if self.projection is None else self.projection(x)
        return nn.functional.relu(shortcut + self.residual(x))


class Classifier(nn.Module):
    """Global average pooling, [dense + activation (V3),] dropout, dense classifier."""

    def __init__(self, head: ClassifierHead):
        super().__init__()
        self.hidden = None
        if head.hidden is not None:
            self.hidden = nn.Sequential(
                nn.Linear(head.hidden.in_features, head.hidden.out_features),
                ACTIVATIONS[head.hidden_activation](inplace=True),
            )
        self.dropout = nn.Dropout(head.dropout.rate)
        classifier = head.classifier
        self.linear = nn.Linear(classifier.in_features, classifier.out_features)

    def forward(self, x):
        x = x.mean(dim=(2, 3))
        if self.hidden is not None:
            x = self.hidden(x)
        return self.linear(self.dropout(x))


def twin(layer: nnx.Module) -> nn.Module:
    """The PyTorch twin of one layer of the Flax network's `layers()`."""
    if isinstance(layer, mobilenets.ConvBN):
        return conv_bn(layer)
    if isinstance(layer, FlaxMaxPool):
        # -inf padding instead of Keras' zeros: the same after the stem's ReLU.
        return nn.MaxPool2d(layer.window, layer.stride, padding=layer.padding)
    if isinstance(layer, FlaxBottleneck):
        return Bottleneck(layer)
    return Block(layer)


def torch_model(name: str, num_classes: int = 2, alpha: float = 1.0) -> nn.Module:
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
    return nn.Sequential(*[twin(layer) for layer in model.layers()], Classifier(model.head))


TORCH_MODELS = {name: functools.partial(torch_model, name) for name in mobilenets.ARCHITECTURES}
