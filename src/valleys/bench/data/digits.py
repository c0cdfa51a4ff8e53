"""scikit-learn's digits: 1,797 grey 8×8 images of handwritten digits (UCI optdigits test set)."""

from __future__ import annotations

import torch

from valleys.bench.data._common import DatasetMissing, ImageSplits, split_images

_LEVELS = 16


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ImageSplits:
    """The digits as :class:`ImageSplits` of ``uint8 [N, 1, 8, 8]`` images, classes ``"0"``–``"9"``.

    scikit-learn stores 17 grey levels (0–16); they are rescaled to 0–255 so that every image
    dataset here shares one range. ``test_fraction`` of each class is held out by a stratified
    split fixed by ``seed``.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as error:
        raise DatasetMissing(
            "scikit-learn is not installed: run `python -m pip install 'valleys[bench]'`"
        ) from error
    bunch = sklearn_load_digits()
    levels = torch.from_numpy(bunch.images).unsqueeze(1)
    images = torch.round(levels * (255 / _LEVELS)).to(torch.uint8)
    labels = torch.from_numpy(bunch.target).long()
    classes = tuple(str(name) for name in bunch.target_names)
    return split_images(images, labels, classes, test_fraction, seed)
