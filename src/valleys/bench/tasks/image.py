"""Image classification tasks: images standardised with the training split's statistics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from valleys.bench.tasks.task import Split, Task, TaskOptions

__all__ = ["IMAGE_MODELS", "image_task", "normalise_images"]

IMAGE_MODELS = ("resnet20", "small_cnn", "mlp")
"""The models every image task offers."""


def normalise_images(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """``uint8 [N, C, H, W]`` images → ``float32`` standardised per channel with train statistics.

    Test images use the *training* mean and standard deviation, so nothing about the test split
    leaks into preprocessing.
    """
    train_f = train.to(torch.float32).div_(255.0)
    test_f = test.to(torch.float32).div_(255.0)
    # Statistics in float64: a float32 sum over ~50M pixels loses digits.
    flat = train_f.transpose(0, 1).reshape(train_f.shape[1], -1).double()
    mean = flat.mean(dim=1).float().view(1, -1, 1, 1)
    std = flat.std(dim=1).float().clamp_min(1e-6).view(1, -1, 1, 1)
    return train_f.sub_(mean).div_(std), test_f.sub_(mean).div_(std)


# Hidden width of the image MLP: ~270k parameters on 28×28, 30× cheaper per example than the small
# CNN, which is what lets `valleys compare` train a large-batch grid for many steps on a laptop CPU.
_IMAGE_MLP_WIDTH = 256


def image_task(
    name: str, target: float | None, load: Callable[[TaskOptions], Any]
) -> Callable[[TaskOptions, str], Task]:
    def build(options: TaskOptions, model_name: str) -> Task:
        from valleys.bench import models

        splits = load(options)
        train_x, test_x = normalise_images(splits.train_images, splits.test_images)
        channels, height, width = train_x.shape[1:]
        num_classes = splits.num_classes

        def build_model() -> nn.Module:
            if model_name == "resnet20":
                return models.resnet20(
                    num_classes=num_classes, in_channels=channels, width=options.width or 16
                )
            if model_name == "mlp":
                hidden = options.width or _IMAGE_MLP_WIDTH
                return nn.Sequential(
                    nn.Flatten(),
                    models.mlp(channels * height * width, hidden, num_classes, depth=3),
                )
            return models.small_cnn(
                num_classes=num_classes,
                in_channels=channels,
                image_size=height,
                width=options.width or 32,
            )

        return Task(
            name=name,
            kind="classification",
            train=Split((train_x,), splits.train_labels),
            test=Split((test_x,), splits.test_labels),
            model_name=model_name,
            build_model=build_model,
            target=target,
            info={"classes": list(splits.classes), "input_shape": [channels, height, width]},
        )

    return build
