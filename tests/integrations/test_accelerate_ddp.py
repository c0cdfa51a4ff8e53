"""examples/accelerate_ddp.py: 2 gloo processes under torchrun, Accelerator(cpu=True), resumed.

The run resumed from Accelerate's checkpoint of epoch 1 must end as the uninterrupted one: the
same optimizer state (E's buffer included) and parameters, bit for bit. Each launch runs in its
own process group, which the test empties whatever happens, so no rank outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")
from integration_helpers import EXAMPLES, assert_same_optimizer_state, assert_same_tensors
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _launch(*args: str, cwd: Path) -> str:
    """Run the example on 2 processes; return its output; leave no process of it behind."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(EXAMPLES / "accelerate_ddp.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    launcher = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = launcher.communicate(timeout=240)
    finally:
        # The ranks are in the launcher's session; a failed or timed-out launch may leave them.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    assert launcher.returncode == 0, output
    return output


def test_two_process_run_resumes_with_e_buffer(tmp_path: Path) -> None:
    output = _launch("--out", "whole", "--epochs", "2", cwd=tmp_path)
    assert "2 processes, 2 epochs: test accuracy" in output
    _launch("--out", "resumed", "--epochs", "2", "--resume", "whole/epoch-1", cwd=tmp_path)
    want, got = tmp_path / "whole" / "epoch-2", tmp_path / "resumed" / "epoch-2"
    assert_same_optimizer_state(
        torch.load(got / "optimizer.bin", weights_only=True),
        torch.load(want / "optimizer.bin", weights_only=True),
    )
    assert_same_tensors(load_file(got / "model.safetensors"), load_file(want / "model.safetensors"))
