"""Progress on long runs: a bar that advances per micro-batch on a terminal, lines in a file, and
one line before an epoch that will take minutes on the CPU."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
from torch import nn

from valleys.bench.run import loop, progress
from valleys.bench.run.batches import accumulate_gradients
from valleys.bench.run.config import TrainConfig
from valleys.bench.run.progress import progress_bar, slow_cpu_warning
from valleys.bench.run.train import train
from valleys.bench.tasks import Task, TaskOptions, build_task


@pytest.fixture(scope="module")
def digits() -> Task:
    return build_task("digits", TaskOptions(model="mlp"))


# 1,438 training digits: 5 steps of 256 per epoch, each 3 micro-batches of 100, 100 and 56.
_CONFIG = TrainConfig(
    task="digits",
    optimizer="alto",
    lr=1e-2,
    batch_size=256,
    micro_batch_size=100,
    epochs=1,
    task_options=TaskOptions(model="mlp"),
)


def test_the_measured_rule_flags_resnet20_and_not_the_mlp() -> None:
    # Forward FLOPs per Fashion-MNIST example, counted by torch's FlopCounterMode.
    resnet20 = slow_cpu_warning("resnet20", 61_640_000, 60_000, threads=1)
    assert resnet20 is not None
    assert resnet20.startswith("note: resnet20 on the CPU: about 5 min per epoch")
    assert slow_cpu_warning("mlp", 540_000, 60_000, threads=1) is None
    # More threads, proportionally less time: the small CNN is under a minute on one.
    assert slow_cpu_warning("cnn", 8_480_000, 60_000, threads=1) is None


def test_accumulation_ticks_once_per_micro_batch(digits: Task) -> None:
    ticks: list[int] = []
    model = digits.build_model()
    index = torch.arange(256)
    accumulate_gradients(model, digits, digits.train, index, 100, on_micro=lambda: ticks.append(1))
    assert len(ticks) == 3


def _terminal(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Make captured stderr look like a terminal, as tqdm and the run ask it."""
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


def test_terminal_bar_counts_micro_batches(
    digits: Task, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _terminal(monkeypatch, capsys)
    bars: list[Any] = []

    def keep(*args: Any, **kwargs: Any) -> Any:
        bars.append(progress_bar(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(loop, "progress_bar", keep)
    train(_CONFIG, task=digits)
    (bar,) = bars
    assert (bar.n, bar.total, bar.unit) == (15, 15, "micro-batch")  # 5 steps × 3 micro-batches
    assert bar.postfix.startswith("step=5/5, loss=")
    assert "micro-batch" in capsys.readouterr().err


def test_file_output_is_lines_without_a_bar(
    digits: Task, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    train(_CONFIG, task=digits)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "micro-batch" not in err
    assert err.splitlines()[-1].startswith("epoch 1/1: train loss")


def test_slow_model_is_announced_once_before_training(
    digits: Task, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The digits MLP is fast; a CPU 10^7 times slower makes its epoch take minutes.
    monkeypatch.setattr(progress, "CPU_FLOPS_PER_THREAD", 4e3)
    capsys.readouterr()
    result = train(_CONFIG, task=digits)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("note: mlp on the CPU: about ")
    assert sum(line.startswith("note:") for line in lines) == 1
    assert result.status == "completed"


def test_counting_flops_leaves_the_run_unchanged(
    digits: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The FLOP count's forward pass (not quiet) moves no statistics and draws no random numbers:
    a batch-norm model trains to the same weights as with the count skipped (quiet)."""

    def build_model() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Dropout(0.2),
                             nn.Linear(32, 10))  # fmt: skip

    task = Task(digits.name, digits.kind, digits.train, digits.test, "bn", build_model, 0.5)
    monkeypatch.setattr(progress, "CPU_FLOPS_PER_THREAD", 4e3)
    loud = train(_CONFIG, task=task, log=lambda line: None)
    quiet = train(_CONFIG, task=task, quiet=True)
    assert loud.model is not None and quiet.model is not None
    for a, b in zip(
        loud.model.state_dict().values(), quiet.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
