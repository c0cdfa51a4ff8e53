"""Schedule-Free in the training loop: train mode for steps, eval mode for evaluation and checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from valleys.bench.run.checkpoint import load_checkpoint
from valleys.bench.run.config import TrainConfig
from valleys.bench.run.train import make_optimizer, train
from valleys.bench.tasks import Task, TaskOptions, build_task


@pytest.fixture(scope="module")
def digits() -> Task:
    return build_task("digits", TaskOptions(model="mlp"))


def _config(**changes: object) -> TrainConfig:
    base = TrainConfig(
        task="digits",
        optimizer="sf_adamw",
        lr=3e-3,
        batch_size=256,
        epochs=3,
        task_options=TaskOptions(model="mlp"),
    )
    return replace(base, **changes)


def test_resumed_run_equals_uninterrupted_run(digits: Task, tmp_path: Path) -> None:
    # Epochs 2 and 3 step after an evaluation and a checkpoint in eval mode: they would raise if
    # the loop did not put the optimizer back in train mode.
    straight = train(_config(), task=digits, quiet=True)
    train(_config(epochs=1), tmp_path, task=digits, quiet=True)
    resumed = train(_config(), tmp_path, resume=True, task=digits, quiet=True)
    assert resumed.status == straight.status == "completed"
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    keys = ("test_loss", "test_accuracy", "train_loss")
    assert [[r[k] for k in keys] for r in resumed.history] == [
        [r[k] for k in keys] for r in straight.history
    ]


def test_evaluation_and_checkpoint_see_the_eval_mode_weights(digits: Task, tmp_path: Path) -> None:
    config = _config(epochs=2)
    result = train(config, tmp_path, task=digits, quiet=True)
    recorded = result.history[-1]

    # The checkpoint: the model as evaluated, the optimizer in eval mode.
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    model = digits.build_model()
    model.load_state_dict(payload["model"])
    optimizer = make_optimizer(config, model)
    optimizer.load_state_dict(payload["optimizer"])
    assert not any(group["train_mode"] for group in optimizer.param_groups)
    for p, q in zip(model.parameters(), result.model.parameters(), strict=True):
        assert torch.equal(p, q)

    evaluated = digits.evaluate(model, digits.test, batch_size=config.eval_batch_size)
    assert evaluated["loss"] == recorded["test_loss"]
    assert evaluated["accuracy"] == recorded["test_accuracy"]
    # In train mode the parameters are elsewhere: evaluating them measures another model.
    optimizer.train()  # type: ignore[attr-defined]
    training_point = digits.evaluate(model, digits.test, batch_size=config.eval_batch_size)
    assert training_point["loss"] != recorded["test_loss"]
