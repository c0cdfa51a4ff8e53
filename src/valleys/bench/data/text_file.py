"""Plain text files for character-level language modelling (Tiny Shakespeare, WikiText raw, ...)."""

from __future__ import annotations

from pathlib import Path

from valleys.bench.data._common import DatasetMissing, read_text_lenient


def load_text_file(path: str | Path) -> str:
    """The whole content of the text file ``path``: UTF-8, or Latin-1 where it is not valid UTF-8.

    Line endings are kept as they are in the file.
    """
    file = Path(path)
    if not file.is_file():
        raise DatasetMissing(
            f"text file {file} does not exist: download the corpus as plain text (e.g. "
            "Tiny Shakespeare's input.txt or WikiText's raw wiki.train.raw) and pass its path"
        )
    return read_text_lenient(file)
