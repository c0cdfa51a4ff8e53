"""Jane Austen's six novels, from the R data file of Debian's ``r-cran-janeaustenr`` package.

``scripts/install_data.sh`` unpacks the package (without installing R) into
``$VALLEYS_DATA_DIR/janeaustenr`` (default ``~/.cache/valleys/janeaustenr``); the text is in
``usr/lib/R/site-library/janeaustenr/data/Rdata.rdb``. That file is R's lazy-load database: one
chunk per object, each a 4-byte big-endian uncompressed length followed by a zlib stream. Each
stream is an R XDR serialisation (R Internals, "Serialization formats") of a character vector:

- ``X\\n``, then three int32 (format version, writer R version, minimal reader R version);
- for format version 3, an int32 length and the native encoding name;
- an int32 STRSXP header (low byte 16), an int32 element count ``n``;
- ``n`` CHARSXP entries: int32 flags (LATIN1 and UTF8 encoding bits in the levels), int32 length
  (-1 for NA) and that many bytes.

Every novel is one line a string, starting with its title, and empty strings between paragraphs.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from valleys.bench.data._common import INSTALL_SCRIPT, DatasetMissing, data_dir

PACKAGE_FOLDER = "janeaustenr"
RDB_PATH = Path("usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
# Titles as janeaustenr's austen_books() names them, keyed by each novel's first line in capitals.
TITLES = {
    "SENSE AND SENSIBILITY": "Sense & Sensibility",
    "PRIDE AND PREJUDICE": "Pride & Prejudice",
    "MANSFIELD PARK": "Mansfield Park",
    "EMMA": "Emma",
    "NORTHANGER ABBEY": "Northanger Abbey",
    "PERSUASION": "Persuasion",
}

_STRSXP = 16
_CHARSXP = 9
_LATIN1_FLAG = 1 << (12 + 2)
_UTF8_FLAG = 1 << (12 + 3)
_LONG_LENGTH = -1
_NA_LENGTH = -1


class _Reader:
    """Big-endian reads from an R XDR serialisation."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def int32(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.position)
        self.position += 4
        return value

    def raw(self, length: int) -> bytes:
        if self.position + length > len(self.data):
            raise ValueError("R serialisation ends inside a string")
        value = self.data[self.position : self.position + length]
        self.position += length
        return value


def _parse_character_vector(stream: bytes) -> list[str]:
    reader = _Reader(stream)
    if reader.raw(2) != b"X\n":
        raise ValueError("not an R XDR serialisation (no 'X\\n' header)")
    version = reader.int32()
    reader.int32()  # writer's R version
    reader.int32()  # oldest R version that can read it
    native_encoding = reader.raw(reader.int32()).decode("ascii") if version >= 3 else "latin-1"
    if reader.int32() & 0xFF != _STRSXP:
        raise ValueError("R object is not a character vector")
    count = reader.int32()
    if count == _LONG_LENGTH:
        count = (reader.int32() << 32) | (reader.int32() & 0xFFFFFFFF)
    lines: list[str] = []
    for _ in range(count):
        flags = reader.int32()
        if flags & 0xFF != _CHARSXP:
            raise ValueError("character vector holds a non-string element")
        length = reader.int32()
        if length == _NA_LENGTH:
            lines.append("")
            continue
        if flags & _LATIN1_FLAG:
            encoding = "latin-1"
        elif flags & _UTF8_FLAG:
            encoding = "utf-8"
        else:
            encoding = native_encoding
        lines.append(reader.raw(length).decode(encoding))
    return lines


def _zlib_chunks(database: bytes) -> list[bytes]:
    chunks: list[bytes] = []
    position = 0
    while position < len(database):
        (expected,) = struct.unpack_from(">I", database, position)
        decompressor = zlib.decompressobj()
        chunk = decompressor.decompress(database[position + 4 :])
        if len(chunk) != expected or not decompressor.eof:
            raise ValueError(f"corrupt zlib chunk at byte {position} of the R database")
        chunks.append(chunk)
        position = len(database) - len(decompressor.unused_data)
    return chunks


def austen_rdb_path() -> Path:
    """Where ``scripts/install_data.sh`` puts janeaustenr's ``Rdata.rdb``."""
    return data_dir() / PACKAGE_FOLDER / RDB_PATH


def load_austen() -> dict[str, str]:
    """Jane Austen's six novels: title → full text, the lines joined with ``"\\n"``.

    Titles are those of janeaustenr (``"Sense & Sensibility"``, ``"Pride & Prejudice"``,
    ``"Mansfield Park"``, ``"Emma"``, ``"Northanger Abbey"``, ``"Persuasion"``), in that order. About
    4.0 M characters in all, 81 distinct. Public domain.
    """
    path = austen_rdb_path()
    if not path.is_file():
        unpack_to = data_dir() / PACKAGE_FOLDER
        raise DatasetMissing(
            f"Jane Austen's novels not found at {path}: run `{INSTALL_SCRIPT}`, or "
            "`apt-get download r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb "
            f"{unpack_to}` (do not apt-get install it: that pulls in all of R); "
            "VALLEYS_DATA_DIR sets the data folder"
        )
    novels: dict[str, str] = {}
    for chunk in _zlib_chunks(path.read_bytes()):
        lines = _parse_character_vector(chunk)
        first = next((line.strip().upper() for line in lines if line.strip()), "")
        if first not in TITLES:
            raise ValueError(f"{path} holds an unexpected text starting {first[:40]!r}")
        novels[TITLES[first]] = "\n".join(lines)
    if set(novels) != set(TITLES.values()):
        raise ValueError(f"{path} lacks {sorted(set(TITLES.values()) - set(novels))}")
    return {title: novels[title] for title in TITLES.values()}
