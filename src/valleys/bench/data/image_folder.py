"""Images in an ImageFolder tree: ``root/<class>/<image>``, one folder per class.

The layout of ``torchvision.datasets.ImageFolder``; classes are the sorted folder names. When
``root`` holds ``train/`` and ``val/`` (or ``test/``) folders, each of those is such a tree and
together they give the split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from valleys.bench.data._common import (
    DatasetMissing,
    ImageSplits,
    check_fraction,
    split_images,
)

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})


def _class_folders(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if path.is_dir())


def _read_image(path: Path, image_size: int) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        # Scale the shorter side and crop the centre so that no image is distorted.
        square = ImageOps.fit(
            image.convert("RGB"), (image_size, image_size), Image.Resampling.BILINEAR
        )
        return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)


def _read_tree(
    root: Path, classes: tuple[str, ...], image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in EXTENSIONS and path.is_file():
                arrays.append(_read_image(path, image_size))
                labels.append(label)
    if not arrays:
        raise DatasetMissing(
            f"no images ({', '.join(sorted(EXTENSIONS))}) in {root}/<class>/: put one folder of "
            "images per class there"
        )
    return torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.int64)


def load_image_folder(
    root: str | Path, image_size: int = 32, test_fraction: float = 0.2, seed: int = 0
) -> ImageSplits:
    """The images under ``root`` as :class:`ImageSplits` of ``uint8 [N, 3, S, S]``, S = image_size.

    Every image is decoded with Pillow, converted to RGB, scaled so its shorter side is ``S`` and
    centre-cropped to ``S×S``. If ``root`` has a ``train/`` folder and a ``val/`` (else ``test/``)
    folder, those are the split and the classes are the folders of ``train/``; otherwise
    ``test_fraction`` of each class is held out by a stratified split fixed by ``seed``. All images
    are decoded into memory at once, which suits datasets of up to a few hundred thousand small
    images.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetMissing(
            f"image folder {folder} does not exist: create {folder}/<class>/<image>.png "
            "(or train/ and val/ folders in that layout)"
        )
    held_out = next((folder / name for name in ("val", "test") if (folder / name).is_dir()), None)
    if (folder / "train").is_dir() and held_out is not None:
        classes = tuple(path.name for path in _class_folders(folder / "train"))
        unknown = {path.name for path in _class_folders(held_out)} - set(classes)
        if unknown:
            raise ValueError(f"{held_out} has classes missing from train/: {sorted(unknown)}")
        train_images, train_labels = _read_tree(folder / "train", classes, image_size)
        test_images, test_labels = _read_tree(held_out, classes, image_size)
        return ImageSplits(train_images, train_labels, test_images, test_labels, classes)
    check_fraction(test_fraction)
    classes = tuple(path.name for path in _class_folders(folder))
    images, labels = _read_tree(folder, classes, image_size)
    return split_images(images, labels, classes, test_fraction, seed)
