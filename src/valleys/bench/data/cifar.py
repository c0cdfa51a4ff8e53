"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the "python version" pickle batches.

Layouts (https://www.cs.toronto.edu/~kriz/cifar.html):

- ``cifar-10-batches-py/``: ``data_batch_1`` … ``data_batch_5``, ``test_batch`` (dicts with
  ``data``: uint8 ``[N, 3072]``, ``labels``) and ``batches.meta`` (``label_names``);
- ``cifar-100-python/``: ``train``, ``test`` (dicts with ``data`` and ``fine_labels``) and
  ``meta`` (``fine_label_names``).

Each row of ``data`` holds the red, green and blue 32×32 planes in that order. The batches were
written by Python 2, so they are read with ``encoding="latin1"``; keys may be ``str`` or ``bytes``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from valleys.bench.data._common import DatasetMissing, ImageSplits

_LAYOUTS = {
    10: (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    100: ("cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names"),
}
_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# Only what a pickled numpy array needs: the batches are data, and pickle runs any callable it names.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"CIFAR batch refers to {module}.{name}, which is not data"
            )
        return super().find_class(module, name)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _load_batch(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        batch = _ArrayUnpickler(file, encoding="latin1").load()
    return {_text(key): value for key, value in batch.items()}


def _resolve(root: Path, num_classes: int) -> Path:
    folder_name, train_names, *_ = _LAYOUTS[num_classes]
    for folder in (root, root / folder_name):
        if all((folder / name).is_file() for name in train_names):
            return folder
    raise DatasetMissing(
        f"CIFAR-{num_classes} not found in {root}: download the python version from {_URL}, "
        f"unpack it (`tar xzf cifar-{num_classes}-python.tar.gz`) and pass the {folder_name} "
        "folder or its parent"
    )


def _images_and_labels(
    folder: Path, names: tuple[str, ...], label_key: str
) -> tuple[torch.Tensor, torch.Tensor]:
    batches = [_load_batch(folder / name) for name in names]
    data = np.concatenate([np.asarray(batch["data"], dtype=np.uint8) for batch in batches])
    labels = np.concatenate([np.asarray(batch[label_key], dtype=np.int64) for batch in batches])
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


def load_cifar(root: str | Path, num_classes: int = 10) -> ImageSplits:
    """CIFAR-10 or CIFAR-100 as :class:`ImageSplits` of ``uint8 [N, 3, 32, 32]`` images.

    ``root`` is the unpacked folder (``cifar-10-batches-py`` or ``cifar-100-python``) or its parent.
    The published split is kept (50,000 train, 10,000 test); CIFAR-100 uses the 100 fine labels.
    Only pickled numpy arrays, lists and strings are accepted in the batches.
    """
    if num_classes not in _LAYOUTS:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    _, train_names, test_name, meta_name, label_key, names_key = _LAYOUTS[num_classes]
    folder = _resolve(Path(root), num_classes)
    missing = [name for name in (test_name, meta_name) if not (folder / name).is_file()]
    if missing:
        raise DatasetMissing(f"CIFAR-{num_classes} in {folder} lacks {missing}: re-download {_URL}")
    train_images, train_labels = _images_and_labels(folder, train_names, label_key)
    test_images, test_labels = _images_and_labels(folder, (test_name,), label_key)
    classes = tuple(_text(name) for name in _load_batch(folder / meta_name)[names_key])
    return ImageSplits(train_images, train_labels, test_images, test_labels, classes)
