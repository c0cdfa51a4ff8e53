"""Smoke test of ``benchmarks/step.py --quick`` (``valleys bench-step``): it writes a complete JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step.py"
# One of each kind; the fused variants are left out because their first compile takes longer than
# this smoke test should (their equality is tested in tests/optim).
VARIANTS = ["torch_adamw_fused", "reference_alto", "alto_loop", "explore_adamw_fused"]


def test_quick_run_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--variants",
            ",".join(VARIANTS),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert list(report["variants"]) == VARIANTS
    assert report["threads"] == 1
    alto = report["variants"]["alto_loop"]
    # m, v and E's buffer, plus a 0-d step counter per tensor
    assert alto["state_to_param_bytes"] == pytest.approx(3.0, rel=1e-3)
    assert alto["time_to_torch_adamw_fused"] > 0
    assert "| alto_loop | ours |" in result.stdout


def test_valleys_bench_step_runs_the_same_benchmark(tmp_path: Path) -> None:
    from valleys.cli import main

    out = tmp_path / "cli.json"
    assert (
        main(
            [
                "bench-step",
                "--quick",
                "--variants",
                "torch_adamw_fused,alto_loop",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert set(json.loads(out.read_text())["variants"]) == {"torch_adamw_fused", "alto_loop"}
