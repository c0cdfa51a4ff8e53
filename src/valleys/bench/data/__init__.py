"""Real datasets that load offline, one module per source.

Each loader returns plain tensors in a frozen container (:class:`ImageSplits`, :class:`TextSplits`,
:class:`RegressionSplits`, or text) and raises :class:`DatasetMissing`, whose message gives the
command that installs the data, when the data is absent. ``scripts/install_data.sh`` installs
every dataset that can be had offline.
"""

from valleys.bench.data._common import (
    DatasetMissing,
    ImageSplits,
    RegressionSplits,
    TextSplits,
    data_dir,
    package_dir,
    stratified_split,
)
from valleys.bench.data.austen import load_austen
from valleys.bench.data.cifar import load_cifar
from valleys.bench.data.digits import load_digits
from valleys.bench.data.fashion_mnist import load_fashion_mnist
from valleys.bench.data.idx import read_idx
from valleys.bench.data.image_folder import load_image_folder
from valleys.bench.data.mnist5k import load_mnist_5k
from valleys.bench.data.sine import sine_regression
from valleys.bench.data.text_classification import load_bbc_news, load_rotten_tomatoes
from valleys.bench.data.text_file import load_text_file

__all__ = [
    "DatasetMissing",
    "ImageSplits",
    "RegressionSplits",
    "TextSplits",
    "data_dir",
    "load_austen",
    "load_bbc_news",
    "load_cifar",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist_5k",
    "load_rotten_tomatoes",
    "load_text_file",
    "package_dir",
    "read_idx",
    "sine_regression",
    "stratified_split",
]
