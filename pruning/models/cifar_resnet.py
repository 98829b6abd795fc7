"""CIFAR-10 ResNets of He et al. 2015 (arXiv:1512.03385, section 4.2) with "option A" shortcuts.

The layout matches the checkpoints described in ``../shared/data/weights/README.md``: a 3x3 stem of
16 channels, three stages of ``n`` basic blocks (widths 16/32/64, the first block of stages 2 and 3
with stride 2), global average pooling and a 64 -> num_classes linear layer. Depth = 6n + 2.

Read top-down: shortcut -> block -> network -> builder.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class OptionAShortcut(nn.Module):
    """Parameter-free shortcut: identity, or stride-2 subsampling plus zero channels on both sides.

    For ``c_in -> c_out`` with ``c_out > c_in`` the input is sliced ``x[:, :, ::2, ::2]`` and padded with
    ``(c_out - c_in) / 2`` zero channels before and after, so input channel j lands on output channel
    ``j + (c_out - c_in) / 2``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if (out_channels - in_channels) % 2:
            raise ValueError("option-A shortcut needs an even channel increase")
        self.stride = stride
        self.pad = (out_channels - in_channels) // 2
        if stride != 1 or self.pad:
            # Not in the state_dict: the checkpoints have no such key, and it is derived from the widths alone.
            self.register_buffer("export_kernel", channel_embedding_kernel(in_channels, self.pad), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        if torch.onnx.is_in_onnx_export():
            # The same values as the slice + pad below, as one strided 1x1 convolution: ONNX Runtime's CPU provider
            # keeps a convolution in its blocked (NCHWc) layout and fuses the block's Add + ReLU into the next one,
            # while Slice and Pad force layout conversions around them and leave the Adds unfused (ResNet-56,
            # batch 64, per-node profile: 140.4 -> 131.0 ms, 7% of the time; see README, "Exported shortcuts").
            return F.conv2d(x, self.export_kernel, stride=self.stride)
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))


def channel_embedding_kernel(in_channels: int, pad: int) -> torch.Tensor:
    """1x1 kernel [in + 2 pad, in, 1, 1] that copies input channel j to output channel j + pad and zeros the rest."""
    kernel = torch.zeros(in_channels + 2 * pad, in_channels, 1, 1)
    kernel[torch.arange(in_channels) + pad, torch.arange(in_channels), 0, 0] = 1.0
    return kernel


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = OptionAShortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; state_dict keys ``conv1``, ``bn1``, ``layerS.i.*``, ``linear``."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_channels = widths[0]
        for stage, width in enumerate(widths, start=1):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 1 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(widths[-1], num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))           # [N, 16, 32, 32]
        x = self.layer3(self.layer2(self.layer1(x)))  # [N, 64, 8, 8]
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)    # [N, 64]
        return self.linear(x)


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """ResNet-``depth`` for CIFAR; depth must be 6n+2 (20, 32, 44, 56, 110, ...)."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    return CifarResNet((depth - 2) // 6, num_classes)
