"""A small plain CNN for the bundled demo (scikit-learn's 8x8 digits) and for fast tests."""
from __future__ import annotations

import torch
import torch.nn as nn


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """stem -> two shape-preserving convs -> 2x2 max-pool -> widen -> conv -> global pool -> linear.

    ``features.1`` and ``features.2`` keep their input shape, so layer pruning can remove them outright.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width),       # [N, w, H, W]
            _conv_bn_relu(width, width),
            _conv_bn_relu(width, width),
            nn.MaxPool2d(2),                         # [N, w, H/2, W/2]
            _conv_bn_relu(width, 2 * width),
            _conv_bn_relu(2 * width, 2 * width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))
