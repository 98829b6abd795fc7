"""VGG-16 with BatchNorm for CIFAR (32x32), the network of the channel-pruning papers.

Simonyan & Zisserman 2015 (arXiv:1409.1556) configuration D, adapted to CIFAR as in Li et al. 2017, "Pruning
Filters for Efficient ConvNets" (arXiv:1608.08710, section 4.1: BN after every conv and after the first linear
layer, no dropout; 3.13e8 FLOPs, 1.5e7 parameters) and the reference code of Liu et al. 2019, "Rethinking the
Value of Network Pruning" (``cifar/l1-norm-pruning/models/vgg.py``): thirteen 3x3 conv-BN-ReLU layers with four
2x2 max-pools, a 2x2 -> 1x1 average pool, and a classifier 512 -> 512 (BN, ReLU) -> num_classes. State_dict keys
follow that code: ``feature.N.*`` and ``classifier.N.*``.

Read top-down: layers -> network -> builder.
"""
from __future__ import annotations

import torch
import torch.nn as nn

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def make_layers(cfg: tuple, in_channels: int = 3) -> nn.Sequential:
    """conv3x3 (no bias) - BN - ReLU per number, a 2x2 max-pool per ``"M"``."""
    layers: list[nn.Module] = []
    for value in cfg:
        if value == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        layers += [nn.Conv2d(in_channels, value, 3, padding=1, bias=False), nn.BatchNorm2d(value),
                   nn.ReLU(inplace=True)]
        in_channels = value
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """VGG for 32x32 inputs; at other sizes the global average pool keeps the classifier's 512 inputs."""

    def __init__(self, cfg: tuple = VGG16, num_classes: int = 10) -> None:
        super().__init__()
        width = [v for v in cfg if v != "M"][-1]
        self.feature = make_layers(cfg)
        self.pool = nn.AdaptiveAvgPool2d(1)          # = AvgPool2d(2) of the reference code at 32x32
        self.classifier = nn.Sequential(
            nn.Linear(width, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Linear(512, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature(x)                          # [N, 512, H/16, W/16] (2x2 at 32x32)
        x = self.pool(x).flatten(1)                  # [N, 512]
        return self.classifier(x)


def cifar_vgg16_bn(num_classes: int = 10) -> CifarVGG:
    return CifarVGG(VGG16, num_classes)
