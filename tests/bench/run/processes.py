"""Helpers for tests that kill processes: find a process's children, wait for processes to end.

Linux only (they read ``/proc``); the tests using them skip elsewhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

REPO = Path(__file__).resolve().parents[3]


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll ``condition`` until it holds; return the seconds it took; fail after ``seconds``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"{what} within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def wait_gone(pids: Iterable[int], seconds: float) -> float:
    """Wait until every one of ``pids`` has ended; return how long that took."""
    pids = list(pids)
    return wait_for(lambda: not any(alive(p) for p in pids), seconds, f"processes {pids} ended")


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL whichever of ``pids`` (processes a test started) still runs: leave none behind."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def valleys(*args: str, out: Path) -> subprocess.Popen[bytes]:
    """``python -m valleys ARGS`` in its own process, stdout and stderr to files in ``out``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(out / "stdout", "wb") as stdout, open(out / "stderr", "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "valleys", *args],
            cwd=out,
            stdout=stdout,
            stderr=stderr,
            env=env,
        )


def hold(folder: str) -> None:
    """A pool item that works until interrupted, recording this worker's pid in ``folder`` when it
    starts and ``<pid>.cleaned`` when its clean-up ran."""
    mark = Path(folder) / str(os.getpid())
    mark.touch()
    try:
        while True:
            time.sleep(0.02)
    except KeyboardInterrupt:
        mark.with_suffix(".cleaned").touch()
        raise
