"""``valleys train --dist ddp|fsdp`` under torchrun (2 gloo processes) equals one process.

The 2-process runs use the same global batch (64 = 16 per micro-batch × 2 micro-batches × 2 ranks)
as the 1-process reference (16 per micro-batch × 4 micro-batches), so every optimizer step sees the
gradient of the same 64 examples; only float rounding (the order of the sums) differs. The model is
the MLP: BatchNorm's running statistics are each rank's own under DDP and FSDP (as in torch without
``SyncBatchNorm``), so a conv net with BatchNorm does not equal one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from valleys.bench.run.batches import accumulate_gradients
from valleys.bench.run.config import TrainConfig
from valleys.bench.run.distributed import shard_units
from valleys.bench.run.train import train
from valleys.bench.tasks import TaskOptions, build_task

ARGS = ["--task", "digits", "--model", "mlp", "--optimizer", "alto", "--micro-batch-size", "16"]
ARGS += ["--quiet"]
CONFIG = TrainConfig(
    task="digits",
    optimizer="alto",
    batch_size=64,
    micro_batch_size=16,
    epochs=2,
    task_options=TaskOptions(model="mlp"),
)
RTOL = 1e-4


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "valleys.commands.main", "train", *ARGS, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def history(run: Path) -> list[dict[str, Any]]:
    return json.loads((run / "result.json").read_text())["history"]


def parameters(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def assert_same_run(got: Path, want: Path) -> None:
    """Same parameters and same per-epoch metrics, to float tolerance."""
    for name, value in parameters(want).items():
        torch.testing.assert_close(parameters(got)[name], value, rtol=RTOL, atol=1e-6, msg=name)
    for mine, theirs in zip(history(got), history(want), strict=True):
        for key in ("step", "train_loss", "test_loss", "test_accuracy"):
            assert mine[key] == pytest.approx(theirs[key], rel=RTOL), key


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    train(CONFIG, out, quiet=True)
    return out


def test_ddp_run_equals_one_process(single: Path, tmp_path: Path) -> None:
    done = torchrun("--batch-size", "64", "--epochs", "2", "--dist", "ddp", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert_same_run(tmp_path, single)
    assert done.stdout.count("completed:") == 1, "only rank 0 reports"


def test_fsdp_run_resumes_in_one_process(single: Path, tmp_path: Path) -> None:
    done = torchrun("--batch-size", "64", "--epochs", "1", "--dist", "fsdp", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.glob("checkpoint-shards-*")] == ["checkpoint-shards-1"]
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert history(tmp_path)[0][key] == pytest.approx(history(single)[0][key], rel=RTOL)
    train(CONFIG, tmp_path, resume=True, quiet=True)
    assert_same_run(tmp_path, single)
    assert not list(tmp_path.glob("checkpoint-shards-*")), "a 1-process checkpoint holds it all"


def test_batch_that_does_not_divide_is_refused(tmp_path: Path) -> None:
    done = torchrun("--batch-size", "63", "--epochs", "1", "--dist", "ddp", "--out", str(tmp_path))
    assert done.returncode != 0
    assert "batch_size (63) must be a multiple of the world size (2)" in done.stderr


def test_accumulation_skips_sync_on_all_but_the_last_micro_batch() -> None:
    task = build_task("digits", CONFIG.task_options)
    torch.manual_seed(0)
    model = task.build_model()
    entered = []

    @contextlib.contextmanager
    def no_sync() -> Iterator[None]:
        entered.append(1)
        yield

    accumulate_gradients(model, task, task.train, torch.arange(64), 16, no_sync=no_sync)
    assert len(entered) == 3


def test_one_process_run_resumes_under_fsdp(single: Path, tmp_path: Path) -> None:
    train(dataclasses.replace(CONFIG, epochs=1), tmp_path, quiet=True)
    done = torchrun("--resume", str(tmp_path), "--epochs", "2", "--dist", "fsdp")
    assert done.returncode == 0, done.stderr
    for mine, theirs in zip(history(tmp_path), history(single), strict=True):
        for key in ("step", "train_loss", "test_loss", "test_accuracy"):
            assert mine[key] == pytest.approx(theirs[key], rel=RTOL), key


LM_ARGS = [
    "train", "--task", "austen-lm", "--optimizer", "alto", "--batch-size", "32",
    "--micro-batch-size", "8", "--epochs", "1", "--train-limit", "256", "--test-limit", "64",
    "--context", "32", "--vocab-size", "500", "--quiet",
]  # fmt: skip


def test_fsdp_shards_each_gpt2_block_and_equals_ddp(tmp_path: Path) -> None:
    # GPT-2 trains with dropout, whose masks depend on the number of processes: the reference
    # is DDP on the same 2 ranks (same data shards, same random streams), not one process.
    runs = {}
    for strategy in ("ddp", "fsdp"):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [
            "--nproc_per_node=2",
            "-m",
            "valleys.commands.main",
            *LM_ARGS,
            "--dist",
            strategy,
        ]
        command += ["--out", str(tmp_path / strategy)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        runs[strategy] = history(tmp_path / strategy)
    # A sharded run checkpoints DCP shards, not a full state dict: its test loss after the 8
    # steps stands for its parameters.
    for mine, theirs in zip(runs["fsdp"], runs["ddp"], strict=True):
        for key in ("step", "train_loss", "test_loss"):
            assert mine[key] == pytest.approx(theirs[key], rel=RTOL), key


def test_shard_units_are_the_outermost_list_elements() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=50))
    assert [id(m) for m in shard_units(gpt2)] == [id(block) for block in gpt2.transformer.h]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    stack = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([Block(), Block()]))
    assert shard_units(stack) == list(stack[1])  # not the heads inside the blocks
    assert shard_units(nn.Sequential(nn.Linear(4, 4), nn.ReLU())) == []
