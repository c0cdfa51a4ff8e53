"""The training loop: accumulation, schedules, determinism, resume, divergence, checkpoints."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from valleys.bench.run.batches import accumulate_gradients, epoch_batches
from valleys.bench.run.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    write_json_atomic,
)
from valleys.bench.run.config import RunResult, TrainConfig, load_result
from valleys.bench.run.metrics_log import read_metrics
from valleys.bench.run.schedules import build_schedule, lr_factor, scale_lr
from valleys.bench.run.train import train
from valleys.bench.tasks import Task, TaskOptions, build_task
from valleys.optim import create_optimizer


@pytest.fixture(scope="module")
def digits() -> Task:
    return build_task("digits", TaskOptions(model="mlp"))


def _config(**changes: object) -> TrainConfig:
    base = TrainConfig(
        task="digits",
        optimizer="alto",
        lr=1e-2,
        batch_size=256,
        micro_batch_size=100,
        epochs=2,
        task_options=TaskOptions(model="mlp"),
    )
    return replace(base, **changes)


def _dropout_task(task: Task) -> Task:
    """Digits with a dropout model, so that resuming must also restore the RNG."""

    def build_model() -> nn.Module:
        return nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10)
        )

    return Task(task.name, task.kind, task.train, task.test, "dropout-mlp", build_model, 0.5)


def _without_times(records: list[dict]) -> list[dict]:
    timed = ("epoch_seconds", "eval_seconds", "train_seconds", "examples_per_second")
    return [{k: v for k, v in r.items() if k not in timed} for r in records]


# --- gradient accumulation -------------------------------------------------------------------


def test_accumulation_equals_one_big_batch_float64(digits: Task) -> None:
    split = digits.train.to("cpu", torch.float64)
    index = torch.arange(300)
    states = []
    for micro in (300, 64, 7):  # one pass; uneven chunks (4×64 + 44); many tiny ones
        torch.manual_seed(0)
        model = digits.build_model().double()
        optimizer = create_optimizer("alto", model, lr=1e-2, batch_size=300)
        loss = accumulate_gradients(model, digits, split, index, micro)
        grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
        states.append((loss, grads, [p.detach().clone() for p in model.parameters()]))
    (loss0, grads0, params0), *others = states
    for loss, grads, params in others:
        torch.testing.assert_close(loss, loss0, rtol=1e-13, atol=0)
        for g, g0 in zip(grads, grads0, strict=True):
            torch.testing.assert_close(g, g0, rtol=1e-12, atol=1e-15)
        for p, p0 in zip(params, params0, strict=True):
            torch.testing.assert_close(p, p0, rtol=1e-12, atol=1e-15)


def test_training_with_micro_batches_matches_full_batches(digits: Task) -> None:
    full = train(_config(micro_batch_size=256, epochs=1), task=digits, quiet=True)
    micro = train(_config(micro_batch_size=37, epochs=1), task=digits, quiet=True)
    for p, q in zip(full.model.parameters(), micro.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST is not installed",
)
def test_batch_16384_on_cpu() -> None:
    options = TaskOptions(model="mlp", train_limit=16384, test_limit=512)
    config = TrainConfig(
        task="fashion-mnist",
        optimizer="lamb",
        lr=1e-2,
        batch_size=16384,
        epochs=1,
        micro_batch_size=4096,
        task_options=options,
    )
    result = train(config, quiet=True)
    assert result.status == "completed" and result.steps == 1
    assert math.isfinite(result.final_train_loss)


# --- schedules and scaling -------------------------------------------------------------------


def test_step_schedule_decays_tenfold_each_quarter() -> None:
    factors = [lr_factor("step", s, 100) for s in range(100)]
    assert factors[0] == factors[24] == 1.0
    assert factors[25] == pytest.approx(0.1) and factors[49] == pytest.approx(0.1)
    assert factors[50] == pytest.approx(0.01) and factors[99] == pytest.approx(0.001)


def test_warmup_then_decay_schedules() -> None:
    for name in ("constant", "step", "poly", "cosine"):
        assert lr_factor(name, 0, 100, warmup_steps=10) == pytest.approx(0.1)
        assert lr_factor(name, 9, 100, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor("poly", 10, 100, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor("poly", 55, 100, warmup_steps=10, power=2.0) == pytest.approx(0.25)
    assert lr_factor("cosine", 55, 100, warmup_steps=10) == pytest.approx(0.5)
    assert lr_factor("cosine", 99, 100) < 1e-3


def test_schedule_is_a_torch_scheduler_that_round_trips() -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_schedule("cosine", optimizer, 20, warmup_steps=4)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    other_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    other = build_schedule("cosine", other_opt, 20, warmup_steps=4)
    other_opt.load_state_dict(optimizer.state_dict())
    other.load_state_dict(scheduler.state_dict())
    for _ in range(3):
        for o, s in ((optimizer, scheduler), (other_opt, other)):
            o.step()
            s.step()
    assert other.get_last_lr() == scheduler.get_last_lr()
    assert scheduler.get_last_lr()[0] == pytest.approx(lr_factor("cosine", 10, 20, warmup_steps=4))


def test_scaling_rules() -> None:
    assert scale_lr(0.1, 1024, 256, "linear") == pytest.approx(0.4)
    assert scale_lr(0.1, 1024, 256, "sqrt") == pytest.approx(0.2)
    assert scale_lr(0.1, 1024, 256, "none") == 0.1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: lr_factor("linear", 0, 10), "valid schedules: constant, step, poly, cosine"),
        (lambda: lr_factor("step", 0, 0), "total_steps"),
        (lambda: lr_factor("step", 0, 10, warmup_steps=11), "warmup_steps"),
        (lambda: scale_lr(0.1, 64, 32, "cubic"), "valid rules: none, linear, sqrt"),
        (lambda: scale_lr(0.1, 64, 0, "linear"), "base_batch_size"),
    ],
)
def test_schedule_errors(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_lr_follows_schedule_per_optimizer_step(digits: Task, tmp_path: Path) -> None:
    config = _config(schedule="step", epochs=4, lr_scaling="linear", base_batch_size=128)
    train(config, tmp_path, task=digits, quiet=True)
    steps = read_metrics(tmp_path / "metrics.jsonl", kind="step")
    total = len(steps)
    assert total == 4 * (len(digits.train) // 256)
    expected = [2e-2 * lr_factor("step", s, total) for s in range(total)]
    assert [r["lr"] for r in steps] == pytest.approx(expected)


# --- configuration errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"epochs": -1}, "epochs must be >= 1"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"lr": -1.0}, "lr must be"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"warmup_epochs": 5.0}, r"warmup_epochs must be in \[0, epochs=2\]"),
        ({"clip_grad_norm": 0.0}, "clip_grad_norm"),
        ({"seed": -3}, "seed"),
        ({"schedule": "exp"}, "valid schedules: constant, step, poly, cosine"),
        ({"lr_scaling": "log"}, "valid rules"),
        ({"optimizer": "adamx"}, "valid names: .*alto.*lamb"),
        ({"task": "imagenet"}, "valid tasks: fashion-mnist, "),
        ({"task_options": TaskOptions(model="vgg")}, "valid models: resnet20, small_cnn, mlp"),
        ({"task": "cifar10", "task_options": TaskOptions()}, "--data-root"),
    ],
)
def test_invalid_configuration_is_refused_by_name(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(**changes).validate()


def test_batch_larger_than_the_data_is_refused(digits: Task) -> None:
    with pytest.raises(ValueError, match=r"batch_size \(4096\) exceeds"):
        train(_config(batch_size=4096), task=digits, quiet=True)


def test_config_round_trips_through_json() -> None:
    config = _config(optimizer_args={"alpha": -3.0}, clip_grad_norm=1.0)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown training options: colour"):
        TrainConfig.from_dict({**config.to_dict(), "colour": 1})


# --- determinism, logs, targets --------------------------------------------------------------


def test_same_seed_same_run_other_seed_other_run(digits: Task) -> None:
    task = _dropout_task(digits)
    first = train(_config(), task=task, quiet=True)
    again = train(_config(), task=task, quiet=True)
    other = train(_config(seed=1), task=task, quiet=True)
    for p, q in zip(first.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert _without_times(first.history) == _without_times(again.history)
    assert not torch.equal(next(first.model.parameters()), next(other.model.parameters()))


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    a = epoch_batches(1000, 128, seed=3, epoch=2)
    assert a.shape == (7, 128) and len(set(a.flatten().tolist())) == 7 * 128
    assert torch.equal(a, epoch_batches(1000, 128, seed=3, epoch=2))
    assert not torch.equal(a, epoch_batches(1000, 128, seed=3, epoch=3))


def test_run_directory_logs_and_result(digits: Task, tmp_path: Path) -> None:
    config = _config(clip_grad_norm=1.0, target=0.3)
    result = train(config, tmp_path, task=digits, quiet=True)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "result.json",
    }
    records = read_metrics(tmp_path / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(steps) == result.steps == 2 * (len(digits.train) // 256)
    assert all(r["grad_norm"] > 0 for r in steps)
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert set(epochs[0]) >= {"train_loss", "test_loss", "test_accuracy", "examples_per_second"}
    stored = load_result(tmp_path)
    assert stored.status == "completed" and stored.history == result.history
    assert stored.best_metric == max(r["test_accuracy"] for r in epochs)
    # Target 0.3 is met after the first epoch: time to target is that epoch's training time.
    assert stored.epochs_to_target == 1
    assert stored.time_to_target == pytest.approx(epochs[0]["train_seconds"])
    assert TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == config


def test_bf16_autocast_trains(digits: Task) -> None:
    result = train(_config(bf16=True, epochs=1), task=digits, quiet=True)
    assert result.status == "completed" and math.isfinite(result.final_train_loss)


# --- resume ----------------------------------------------------------------------------------


class _InterruptAt:
    """A forward hook that raises KeyboardInterrupt on the n-th training forward, like Ctrl-C."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    def __call__(self, module: nn.Module, args: object, output: object) -> None:
        if module.training:
            self.calls += 1
            if self.calls == self.n:
                raise KeyboardInterrupt


@pytest.mark.parametrize("e_schedule", ["constant", "cosine"])
def test_resume_after_interrupt_equals_uninterrupted_run(
    digits: Task, tmp_path: Path, e_schedule: str
) -> None:
    task = _dropout_task(digits)
    config = _config(
        epochs=4, schedule="cosine", warmup_epochs=1.0, optimizer="alto", e_schedule=e_schedule
    )
    straight = train(config, tmp_path / "straight", task=task, quiet=True)

    hook = _InterruptAt(n=2 * 5 * 3 + 4)  # 5 steps × 3 micro-batches per epoch: mid-epoch 3
    build = task.build_model

    def hooked() -> nn.Module:
        model = build()
        model.register_forward_hook(hook)
        return model

    interrupted_task = Task(task.name, task.kind, task.train, task.test, "x", hooked, task.target)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", task=interrupted_task, quiet=True)
    partial = load_result(tmp_path / "resumed")
    assert partial.status == "interrupted" and partial.epochs_completed == 2
    assert partial.steps == 10

    resumed = train(config, tmp_path / "resumed", resume=True, task=task, quiet=True)
    assert resumed.status == "completed" and resumed.epochs_completed == 4
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert _without_times(resumed.history) == _without_times(straight.history)
    logs = [
        _without_times(read_metrics(tmp_path / name / "metrics.jsonl"))
        for name in ("straight", "resumed")
    ]
    assert logs[0] == logs[1]
    ckpts = [load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("straight", "resumed")]
    for key, value in ckpts[0]["optimizer"]["state"].items():
        for name, tensor in value.items():
            stored = ckpts[1]["optimizer"]["state"][key][name]
            assert torch.equal(torch.as_tensor(tensor), torch.as_tensor(stored)), name


def test_constant_schedule_run_can_be_extended(digits: Task, tmp_path: Path) -> None:
    straight = train(_config(epochs=3), task=digits, quiet=True)
    train(_config(epochs=1), tmp_path, task=digits, quiet=True)
    extended = train(_config(epochs=3), tmp_path, resume=True, task=digits, quiet=True)
    for p, q in zip(straight.model.parameters(), extended.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_resume_without_checkpoint_starts_afresh(digits: Task, tmp_path: Path) -> None:
    result = train(_config(epochs=1), tmp_path, resume=True, task=digits, quiet=True)
    assert result.status == "completed" and result.epochs_completed == 1


# --- checkpoints refused ---------------------------------------------------------------------


def test_existing_run_is_not_overwritten(digits: Task, tmp_path: Path) -> None:
    train(_config(epochs=1), tmp_path, task=digits, quiet=True)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(_config(epochs=1), tmp_path, task=digits, quiet=True)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_checkpoint_is_refused(digits: Task, tmp_path: Path, damage: str) -> None:
    train(_config(epochs=1), tmp_path, task=digits, quiet=True)
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(
        {"garbage": b"not a checkpoint" * 10, "truncated": data[: len(data) // 2], "empty": b""}[
            damage
        ]
    )
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(_config(epochs=2), tmp_path, resume=True, task=digits, quiet=True)


def test_checkpoint_of_another_run_is_refused(digits: Task, tmp_path: Path) -> None:
    train(_config(epochs=1), tmp_path, task=digits, quiet=True)
    with pytest.raises(CheckpointError, match=r"different run .*lr: checkpoint 0\.01, now 0\.02"):
        train(_config(epochs=2, lr=2e-2), tmp_path, resume=True, task=digits, quiet=True)
    with pytest.raises(CheckpointError, match="optimizer: checkpoint 'alto', now 'lamb'"):
        train(_config(optimizer="lamb"), tmp_path, resume=True, task=digits, quiet=True)


def test_checkpoint_that_does_not_fit_the_model_is_refused(digits: Task, tmp_path: Path) -> None:
    config = _config(epochs=1)
    payload = {
        "fingerprint": config.fingerprint(),
        "epoch": 1,
        "model": {"weight": torch.zeros(3)},
        "optimizer": {},
        "scheduler": {},
        "rng": {},
        "progress": {},
    }
    save_checkpoint(tmp_path / "checkpoint.pt", payload)
    with pytest.raises(CheckpointError, match="does not fit"):
        train(_config(epochs=2), tmp_path, resume=True, task=digits, quiet=True)


def test_checkpoint_lacking_entries_is_refused(tmp_path: Path) -> None:
    torch.save({"model": {}}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="not a complete valleys checkpoint"):
        load_checkpoint(tmp_path / "c.pt")


def test_json_writes_are_atomic_and_strict(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "r.json", {"loss": float("nan"), "x": [1.0, float("inf")]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"loss": None, "x": [1.0, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# --- divergence ------------------------------------------------------------------------------


class _PoisonAfter(nn.Module):
    """Digits MLP whose output becomes NaN from the n-th training forward on."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.n = n
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.n:
                return out * float("nan")
        return out


def test_divergence_is_recorded_with_last_good_metrics(digits: Task, tmp_path: Path) -> None:
    task = Task(
        "digits", "classification", digits.train, digits.test, "p", lambda: _PoisonAfter(23)
    )
    result = train(_config(epochs=4), tmp_path, task=task, quiet=True)
    # 3 micro-batches per step, 5 steps per epoch: forward 23 is in step 8, in epoch 2.
    assert result.status == "diverged" and result.diverged_at_step == 8
    assert result.epochs_completed == 1 and len(result.history) == 1
    assert result.best_metric == result.history[0]["test_accuracy"] is not None
    stored = load_result(tmp_path)
    assert stored.status == "diverged" and stored.history == result.history
    last = read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert last["kind"] == "step" and last["step"] == 8 and last["loss"] is None


def test_huge_learning_rate_diverges_without_crashing(digits: Task) -> None:
    result = train(_config(optimizer="sgd", lr=1e8, epochs=3), task=digits, quiet=True)
    assert result.status == "diverged"
    assert isinstance(result, RunResult) and result.diverged_at_step is not None
