"""Smoke test of ``benchmarks/step_jax.py --quick``: it writes a complete JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_jax.py"


def test_quick_run_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "step-jax.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["variants"]) == [
        "valleys_alto", "valleys_alto_no_clip", "optax_lamb", "optax_adamw"
    ]  # fmt: skip
    assert "intra_op_parallelism_threads=1" in report["xla_flags"]
    alto = report["variants"]["valleys_alto"]
    # E's buffer, m and v in float32 (the step count is negligible)
    assert alto["state_bytes_per_param"] == pytest.approx(12.0, rel=1e-3)
    assert alto["time_to_optax_adamw"] > 0
    assert "| valleys_alto |" in result.stdout
