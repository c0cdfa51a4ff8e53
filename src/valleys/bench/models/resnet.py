"""ResNet-20 for small images (He et al., "Deep Residual Learning for Image Recognition", 2016, §4.2).

The CIFAR network of the paper: a 3×3 convolution with 16 channels, then three stages of three basic
blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 halves the resolution), global
average pooling and a linear classifier: 6·3 + 2 = 20 weighted layers, 0.27 M parameters. Shortcuts
are the paper's option A: identity, and where the shape changes, the input subsampled with stride 2
and zero-padded with the new channels, so that shortcuts add no parameters. Global average pooling
makes any input size of at least 8×8 work (28×28 grey, 32×32 RGB, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _PaddedShortcut(nn.Module):
    """Option A shortcut: subsample spatially, append zero channels."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = (
            _PaddedShortcut(stride, out_channels - in_channels)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet of depth 6n + 2; returns logits ``[B, num_classes]``."""

    def __init__(
        self, blocks_per_stage: int, num_classes: int, in_channels: int = 3, width: int = 16
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        channels = width
        for stage, stage_width in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, stage_width, stride))
                channels = stage_width
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


def resnet20(num_classes: int, in_channels: int = 3, width: int = 16) -> nn.Module:
    """ResNet-20 (3 stages × 3 basic blocks, ``width``/2·``width``/4·``width`` channels: 16/32/64 as
    in He et al. by default, option-A shortcuts).

    Takes float images ``[B, in_channels, H, W]`` (any ``H, W ≥ 8``) and returns logits
    ``[B, num_classes]``.
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    return CifarResNet(3, num_classes, in_channels, width)
