"""Files the harness writes atomically are readable as a plain ``open()`` would leave them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from valleys.bench.run.checkpoint import atomic_write_bytes, write_json_atomic


def test_atomic_files_get_the_umask_mode_not_mkstemps_0600(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_bytes(b"x")
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(previous)
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == expected == 0o644
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == expected
