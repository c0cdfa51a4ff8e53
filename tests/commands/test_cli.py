"""The ``valleys`` command: train, resume, compare, report, and its errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from valleys.commands.main import main

TINY_TRAIN = ["--task", "digits", "--batch-size", "256", "--lr", "0.01", "--quiet"]
TINY_COMPARE = [
    "compare", "--task", "digits", "--batch-size", "256", "--epochs", "2",
    "--optimizers", "alto,lamb", "--lrs", "0.01,0.03", "--quiet",
]  # fmt: skip


def test_train_then_resume_for_more_epochs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY_TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert first.startswith("completed: 1 epochs") and str(out) in first
    assert main(["train", "--resume", str(out), "--epochs", "3", "--quiet"]) == 0
    assert "completed: 3 epochs" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["epochs_completed"] == 3 and result["config"]["lr"] == 0.01
    assert main(["train", *TINY_TRAIN, "--epochs", "1", "--out", str(out)]) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_train_with_options(tmp_path: Path) -> None:
    args = [
        "train", *TINY_TRAIN, "--epochs", "2", "--optimizer", "lamb", "--schedule", "cosine",
        "--warmup-epochs", "0.5", "--micro-batch-size", "64", "--clip-grad-norm", "1",
        "--weight-decay", "0.01", "--opt-arg", "betas=(0.9,0.99)", "--model", "mlp",
        "--lr-scaling", "sqrt", "--base-batch-size", "64", "--out", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["optimizer_args"] == {"betas": [0.9, 0.99]}
    assert config["schedule"] == "cosine" and config["micro_batch_size"] == 64
    assert config["task_options"]["model"] == "mlp"


def test_compare_prints_table_and_writes_report(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([*TINY_COMPARE, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("optimizer")
    assert "alto" in out and "lamb" in out and "report.md" in out
    assert (tmp_path / "report.md").is_file() and (tmp_path / "results.json").is_file()
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 0
    assert "alto" in capsys.readouterr().out
    assert main(["compare", "--resume", str(tmp_path), "--quiet"]) == 0
    assert main(["compare", "--resume", str(tmp_path), "--epochs", "3"]) == 1
    assert "drop --epochs" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train", "--task", "imagenet"],
            r"invalid choice: 'imagenet' \(choose from .*fashion-mnist",
        ),
        (["train", "--optimizer", "adamx"], "valid names: .*alto"),
        (["train", "--schedule", "exp"], "choose from .*constant.*step.*poly.*cosine"),
        (["train", "--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
        (["train", "--batch-size", "big"], "--batch-size: expected an integer >= 1, got 'big'"),
        (["train", "--lr", "nan"], "--lr: expected a finite number > 0, got nan"),
        (["train", "--lr", "-1"], "--lr: expected a finite number > 0"),
        (["train", "--epochs", "1.5"], "--epochs: expected an integer >= 1"),
        (["train", "--seed", "-1"], "--seed: expected an integer >= 0"),
        (["train", "--opt-arg", "alpha"], "--opt-arg: expected KEY=VALUE"),
        (["train", "--out", "a", "--resume", "b"], "not allowed with argument"),
        (["compare", "--optimizers", "alto,nadamx"], "--optimizers: .*valid names"),
        (["compare", "--seeds", "0,x"], "--seeds: expected an integer >= 0"),
        (["compare", "--lrs", "0.1,-2"], "--lrs: .*finite numbers > 0"),
        (["compare", "--model", "vgg"], "invalid choice: 'vgg'"),
        (["compare", "--jobs", "0"], "--jobs: expected an integer >= 1, got 0"),
        ([], "required: COMMAND"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--task", "cifar10", "--quiet"], "needs --data-root"),
        (["train", "--task", "digits", "--warmup-epochs", "20"], "warmup_epochs must be in"),
        (["train", "--task", "digits", "--model", "gpt2"], "valid models: resnet20, small_cnn"),
        (["train", "--resume", "/nonexistent/run"], "no run to resume"),
        (
            ["compare", "--task", "digits", "--lr-grid", "alto=0.1", "--optimizers", "alto,sgd"],
            "same size for every optimizer",
        ),
        (["compare", "--task", "digits", "--lr-grid", "alto"], "NAME=LR"),
        (["report", "/nonexistent/compare"], "does not exist; expected a study folder"),
    ],
)
def test_library_errors_exit_cleanly(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("valleys: error: ") and message in err


def test_console_entry_point_help() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "valleys.commands.main", "compare", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--lr-grid" in completed.stdout and "fashion-mnist" in completed.stdout
