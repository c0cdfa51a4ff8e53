"""Smoke test of ``benchmarks/step.py --quick`` (``valleys bench-step``): it writes a complete JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    from valleys.commands.main import main

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


def test_traffic_model_bandwidth_and_a_variant_that_cannot_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from valleys.bench.perf import step as step_benchmark

    def unsupported(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        raise RuntimeError("no kernel for this device\nsecond line")

    broken = step_benchmark.Variant("broken", "ours", unsupported, 7)
    monkeypatch.setattr(step_benchmark, "VARIANTS", [*step_benchmark.VARIANTS, broken])
    # In-process: leave this test worker's threads and cores alone.
    monkeypatch.setattr(step_benchmark, "pin_one_core", lambda: None)
    report = step_benchmark.run(
        "25m", 0.02, 3, 1, ["torch_adamw_fused", "alto_fused_no_clip", "broken"],
        dtype=torch.bfloat16,
    )  # fmt: skip
    assert report["dtype"] == "bfloat16" and report["device"] == "cpu"
    assert report["errors"] == {"broken": "RuntimeError: no kernel for this device"}
    assert set(report["variants"]) == {"torch_adamw_fused", "alto_fused_no_clip"}
    assert report["copy_bytes_per_s"] > 0
    for name, elements in (("torch_adamw_fused", 7), ("alto_fused_no_clip", 12)):
        entry = report["variants"][name]
        assert entry["model_bytes_per_param"] == elements * 2  # bf16: 2 bytes per element
        achieved = elements * report["param_bytes"] / entry["median_s"]
        assert entry["fraction_of_copy_bandwidth"] == pytest.approx(
            achieved / report["copy_bytes_per_s"]
        )
    table = step_benchmark.markdown_table(report)
    assert "% of copy bandwidth" in table
    assert "Not run: broken: RuntimeError: no kernel for this device" in table


def test_device_without_cuda_is_refused(tmp_path: Path) -> None:
    from valleys.commands.bench_step import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        main(["--device", "cuda", "--quick", "--out", str(tmp_path / "x.json")])
