"""The worker pool: its workers stop, cleaning up, when the parent is interrupted or dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from processes import REPO, kill_all, linux_only, wait_for, wait_gone

pytestmark = linux_only

JOBS = 2


def _pool_parent(folder: Path) -> subprocess.Popen[bytes]:
    """A process running ``run_pool`` of two workers that hold their items until interrupted."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from processes import hold; from valleys.bench.run.pool import run_pool; "
        f"run_pool(hold, [{str(folder)!r}] * {JOBS}, jobs={JOBS})"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)


def _workers(folder: Path) -> list[int]:
    return [int(p.name) for p in folder.iterdir() if p.name.isdigit()]


@pytest.mark.slow  # two spawned workers import torch: ~10 s
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_workers_clean_up_and_end_when_the_parent_is_stopped_or_killed(
    how: signal.Signals, tmp_path: Path
) -> None:
    parent = _pool_parent(tmp_path)
    try:
        wait_for(lambda: len(_workers(tmp_path)) == JOBS, 120, "both workers started")
        workers = _workers(tmp_path)
        parent.send_signal(how)
        parent.wait(timeout=60)
        seconds = wait_gone(workers, 20)
    finally:
        parent.kill()
        parent.wait()
        kill_all(_workers(tmp_path))
    # Each worker's item ran its clean-up: the parent's SIGTERM or, once the parent was gone,
    # the worker's own watch interrupted it.
    assert sorted(p.name for p in tmp_path.glob("*.cleaned")) == sorted(
        f"{pid}.cleaned" for pid in workers
    )
    assert seconds < 20
    if how == signal.SIGTERM:
        assert parent.returncode != 0
