"""A small convolutional network with BatchNorm that trains in seconds per epoch on a CPU."""

from __future__ import annotations

from torch import nn


def small_cnn(
    num_classes: int, in_channels: int = 1, image_size: int = 28, width: int = 32
) -> nn.Module:
    """Two 3×3 convolutions (``width`` and ``2·width`` channels), each followed by BatchNorm, ReLU
    and a 2×2 max-pool, then a ``4·width``-unit layer and the classifier.

    BatchNorm is there because the paper's conv-net results (VGG, ResNet) are on networks with it,
    and its scales and shifts are parameters the layer-wise trust ratio leaves out (weight decay 0),
    which is where the paper's Lamb and ALTO differ most. The convolutions have no bias (BatchNorm's
    shift replaces it). Takes float images ``[B, in_channels, image_size, image_size]`` and returns
    logits ``[B, num_classes]``; ``image_size`` must be at least 4 (two halvings). About 0.42 M
    parameters at 28×28 and width 32.
    """
    if image_size < 4:
        raise ValueError(f"image_size must be at least 4, got {image_size}")
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    pooled = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * pooled * pooled, 4 * width),
        nn.ReLU(),
        nn.Linear(4 * width, num_classes),
    )
