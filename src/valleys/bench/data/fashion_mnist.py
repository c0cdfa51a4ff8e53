"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 60,000 + 10,000 grey 28×28 images, 10 classes.

Read from the four IDX files that Debian's ``dataset-fashion-mnist`` package installs in
``/usr/share/datasets/fashion-mnist`` (gzip-compressed; uncompressed copies are read as well).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from valleys.bench.data._common import INSTALL_SCRIPT, DatasetMissing, ImageSplits
from valleys.bench.data.idx import read_idx

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "VALLEYS_FASHION_MNIST"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetMissing(
        f"Fashion-MNIST file {stem}[.gz] not found in {root}: run "
        f"`sudo apt-get install -y dataset-fashion-mnist` (or `{INSTALL_SCRIPT}`), or set "
        f"{ENV_VAR} to a folder holding the four IDX files"
    )


def _read_split(root: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    return images.unsqueeze(1), labels.long()


def load_fashion_mnist(root: str | Path | None = None) -> ImageSplits:
    """Fashion-MNIST as :class:`ImageSplits` of ``uint8 [N, 1, 28, 28]`` images (60k train, 10k test).

    ``root`` is the folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; by default
    ``$VALLEYS_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``. The official train/test
    split is kept as published.
    """
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    train_images, train_labels = _read_split(Path(root), "train")
    test_images, test_labels = _read_split(Path(root), "t10k")
    return ImageSplits(train_images, train_labels, test_images, test_labels, CLASSES)
