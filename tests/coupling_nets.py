"""Small networks whose channels are coupled in the ways real CNNs couple them, registered in the zoo for tests.

- ``ConcatResidualNet``: two branches concatenated, the concatenation added to the block input (Inception/DenseNet
  style concatenation feeding a residual stream);
- ``SENet``: squeeze-excitation gates, one built from 1x1 convs, one from ``nn.Linear`` with ``view``;
- ``DepthwiseNet``: MobileNet-v1 style depthwise-separable blocks;
- ``GroupedNet``: ResNeXt-style bottlenecks with a grouped 3x3 conv.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from pruning import zoo


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class _Head(nn.Module):
    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


class _ConcatBlock(nn.Module):
    """y = relu(x + cat(a(x), b(x)))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Sequential(_cbr(width, width), nn.Conv2d(width, width // 2, 1, bias=False),
                               nn.BatchNorm2d(width // 2))
        self.b = nn.Sequential(_cbr(width, width, 1), nn.Conv2d(width, width // 2, 3, padding=1, bias=False),
                               nn.BatchNorm2d(width // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + torch.cat([self.a(x), self.b(x)], dim=1))


class ConcatResidualNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.block1 = _ConcatBlock(width)
        self.block2 = _ConcatBlock(width)
        self.down = _cbr(width, 2 * width, stride=2)                   # a re-fitted conv whose outputs the next
        self.block3 = _ConcatBlock(2 * width)                           # concatenation splits over two groups
        self.mixed = nn.ModuleList([_cbr(2 * width, width, 1), _cbr(2 * width, width, 3)])
        self.tail = _cbr(2 * width, 2 * width)
        self.head = _Head(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.down(self.block2(self.block1(self.stem(x)))))
        x = torch.cat([m(x) for m in self.mixed], dim=1)               # plain concatenation, no residual
        return self.head(self.tail(x))


class _SEConv(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(width, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.fc2(s))


class _SELinear(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))   # [N, C]
        return x * s.view(n, c, 1, 1)


class _SEBlock(nn.Module):
    def __init__(self, width: int, linear: bool) -> None:
        super().__init__()
        self.conv1 = _cbr(width, width)
        self.conv2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.se = _SELinear(width, width // 4) if linear else _SEConv(width, width // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.se(self.conv2(self.conv1(x))))


class SENet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.head = _Head(2 * width, num_classes)        # defined first: the classifier is not the last module
        self.stem = _cbr(3, width)
        self.block1 = _SEBlock(width, linear=False)
        self.down = _cbr(width, 2 * width, stride=2)
        self.block2 = _SEBlock(2 * width, linear=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.down(self.block1(self.stem(x)))))


class DepthwiseNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        layers, cin = [_cbr(3, width)], width
        for cout, stride in ((2 * width, 1), (2 * width, 2), (4 * width, 1), (4 * width, 2)):
            layers += [_cbr(cin, cin, 3, stride, groups=cin), _cbr(cin, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = _Head(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _GroupedBottleneck(nn.Module):
    def __init__(self, width: int, inner: int, groups: int) -> None:
        super().__init__()
        self.reduce = _cbr(width, inner, 1)
        self.grouped = _cbr(inner, inner, 3, groups=groups)
        self.expand = nn.Sequential(nn.Conv2d(inner, width, 1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.expand(self.grouped(self.reduce(x))))


class GroupedNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.stem = _cbr(3, width)
        self.block1 = _GroupedBottleneck(width, 64, groups=4)
        self.block2 = _GroupedBottleneck(width, 96, groups=8)
        self.mid = _cbr(width, width, 3, groups=2)                     # grouped conv fed by the residual stream
        self.head = _Head(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.block2(self.block1(self.stem(x)))))


NETS = {"test/concat_residual": ConcatResidualNet, "test/se": SENet, "test/depthwise": DepthwiseNet,
        "test/grouped": GroupedNet}


def register() -> None:
    """Add the nets to the zoo as ``test/...`` (3x32x32 inputs, 10 classes); idempotent."""
    for name, cls in NETS.items():
        if not zoo.is_model(name):
            zoo.register_model(zoo.ModelEntry(name=name, builder=lambda num_classes, cls=cls: cls(num_classes),
                                              input_shape=(3, 32, 32), num_classes=10,
                                              description=f"coupling test net {cls.__name__}"))
