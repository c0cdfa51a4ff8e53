"""The epoch loop: train one epoch step by step, evaluate, record, checkpoint, report.

A step whose loss is not finite ends the run as diverged before the optimizer applies it; so does
an evaluation whose loss or metric is not finite. Every rank evaluates the whole test set, so every
rank reports the same metrics with no reduction.

On a terminal the epoch's bar advances with every micro-batch (at a large batch on the CPU one
step can take a minute); a run on the CPU whose epoch should take minutes says so once before it
starts (the rule: :func:`~valleys.bench.run.progress.slow_cpu_warning`).

An optimizer with train/eval modes (Schedule-Free) is in train mode for the steps and in eval mode
for evaluation and checkpoints, and is left in eval mode however the epochs end, so the model a
run returns holds the weights that were evaluated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from valleys.bench.run.batches import accumulate_gradients, epoch_batches, steps_per_epoch
from valleys.bench.run.distributed import full_tensor
from valleys.bench.run.progress import progress_bar, slow_cpu_warning
from valleys.bench.run.state import RunState, save_run_checkpoint

__all__ = ["run_epochs"]


@dataclass
class _Epoch:
    """One epoch's training as it goes: its progress bar, steps taken, summed loss and time."""

    number: int
    bar: Any
    steps: int
    loss_sum: float = 0.0
    seconds: float = 0.0
    diverged_at: int | None = None


def run_epochs(state: RunState) -> tuple[str, int | None]:
    """Train from ``state.progress.epoch + 1`` to ``config.epochs``; return (status, diverged step)."""
    try:
        return _run_epochs(state)
    finally:
        state.optimizer_mode(training=False)


def _run_epochs(state: RunState) -> tuple[str, int | None]:
    """The epochs of :func:`run_epochs`, before it puts the optimizer in eval mode."""
    device = next(state.wrapped.parameters()).device
    metric = state.task.metric
    if state.progress.epoch < state.config.epochs:
        _warn_if_slow(state, device)
    for number in range(state.progress.epoch + 1, state.config.epochs + 1):
        epoch = _train_epoch(state, number, device)
        if epoch.diverged_at is not None:
            return "diverged", epoch.diverged_at
        state.optimizer_mode(training=False)
        metrics, eval_seconds = _evaluate(state)
        if not (_finite(metrics["loss"]) and _finite(metrics[metric])):
            state.reporting.say(f"epoch {number}: test loss {metrics['loss']}: diverged", epoch.bar)
            return "diverged", state.progress.step
        record = _epoch_record(state, epoch, metrics, eval_seconds)
        _advance(state, record, metrics[metric])
        if state.checkpoint_path is not None:
            save_run_checkpoint(state, state.checkpoint_path)
        _report_epoch(state, epoch, record, metrics)
    return "completed", None


def _train_epoch(state: RunState, number: int, device: torch.device) -> _Epoch:
    """Take the optimizer steps of epoch ``number``; stop at the first non-finite loss."""
    config = state.config
    state.wrapped.train()
    state.optimizer_mode(training=True)
    batches = epoch_batches(len(state.task.train), config.batch_size, config.seed, number)
    micros = math.ceil(state.ranks.local(batches[0]).numel() / state.micro)
    bar = progress_bar(
        len(batches) * micros,
        unit="step" if micros == 1 else "micro-batch",
        quiet=state.reporting.quiet,
        description=f"epoch {number}/{config.epochs}",
        leave=False,
    )
    epoch = _Epoch(number, bar, steps=len(batches))
    started = time.perf_counter()
    for taken, index in enumerate(batches.to(device), start=1):
        record = _backward(state, number, index, lambda: bar.update(1))
        if not math.isfinite(record["loss"]):
            bar.close()
            state.reporting.write(record)
            state.reporting.say(
                f"epoch {number}: loss {record['loss']} at step {record['step']}: diverged", bar
            )
            epoch.diverged_at = record["step"]
            return epoch
        _apply(state, record)
        epoch.loss_sum += record["loss"]
        _show_step(state, epoch, taken, record["loss"], time.perf_counter() - started)
    epoch.seconds = time.perf_counter() - started
    bar.close()
    state.progress.train_seconds += epoch.seconds
    return epoch


def _backward(
    state: RunState, number: int, index: Tensor, on_micro: Callable[[], None]
) -> dict[str, Any]:
    """The gradient of one global batch into ``.grad``; return the step's record (loss, lr)."""
    state.optimizer.zero_grad(set_to_none=True)
    local = state.ranks.local(index)
    loss_t = accumulate_gradients(
        state.wrapped,
        state.task,
        state.task.train,
        local,
        state.micro,
        state.amp,
        state.no_sync,
        on_micro,
    )
    return {
        "kind": "step",
        "step": state.progress.step + 1,
        "epoch": number,
        "loss": state.ranks.mean(loss_t).item(),
        "lr": state.scheduler.get_last_lr()[0],
    }


def _apply(state: RunState, record: dict[str, Any]) -> None:
    """Clip (only for an optimizer that does not clip itself: the run clips once), take the
    optimizer and schedule steps, and log the step's ``record`` with E's telemetry."""
    clip = state.config.clip_grad_norm
    if clip is not None:
        params = list(state.wrapped.parameters())
        if state.config.clips_inside:
            # The optimizer clips, once; the record still shows the norm it clips.
            norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        else:
            norm = nn.utils.clip_grad_norm_(params, clip)
        record["grad_norm"] = full_tensor(norm).item()
    state.optimizer.step()
    record.update(_e_telemetry(state.optimizer))
    state.scheduler.step()
    if state.e_scheduler is not None:
        state.e_scheduler.step()
    state.progress.step += 1
    state.reporting.write(record)


def _e_telemetry(optimizer: Any) -> dict[str, float]:
    """``e_perturbation`` and ``e_cosine`` of the step just taken, read in one sync; empty for an
    optimizer without E's telemetry (``make_optimizer`` turns it on for those with E)."""
    read = getattr(optimizer, "e_telemetry", None)
    values = read() if read is not None else {}
    if not values:
        return {}
    return dict(zip(values, torch.stack(list(values.values())).tolist(), strict=True))


def _show_step(state: RunState, epoch: _Epoch, taken: int, loss: float, elapsed: float) -> None:
    """Show the step count, the loss, the last test metric and the throughput beside the bar."""
    metric = state.task.metric
    postfix = {"step": f"{taken}/{epoch.steps}", "loss": f"{loss:.4f}"}
    if state.progress.history:
        postfix[metric] = f"{state.progress.history[-1][f'test_{metric}']:.4f}"
    postfix["ex/s"] = f"{taken * state.config.batch_size / max(elapsed, 1e-9):.0f}"
    epoch.bar.set_postfix(postfix, refresh=False)


def _warn_if_slow(state: RunState, device: torch.device) -> None:
    """Say once when an epoch on the CPU should take minutes, from one example's forward FLOPs.

    Counted on one training example in eval mode without gradients, so that nothing the run
    depends on (batch-norm statistics, random numbers) moves. A distributed run is left out: a
    forward pass on one rank alone could wait on the others.
    """
    if device.type != "cpu" or state.reporting.quiet or state.ranks.world > 1:
        return
    model, train = state.model, state.task.train
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        state.task.forward(model, train.select(slice(0, 1))[0])
    model.train(was_training)
    examples = steps_per_epoch(len(train), state.config.batch_size) * state.config.batch_size
    line = slow_cpu_warning(
        state.task.model_name, counter.get_total_flops(), examples, torch.get_num_threads()
    )
    if line is not None:
        state.reporting.say(line, None)


def _evaluate(state: RunState) -> tuple[dict[str, float], float]:
    """The test metrics of the model and the seconds they took."""
    started = time.perf_counter()
    metrics = state.task.evaluate(
        state.model,
        state.task.test,
        batch_size=state.config.eval_batch_size,
        autocast=state.amp,
    )
    return metrics, time.perf_counter() - started


def _epoch_record(
    state: RunState, epoch: _Epoch, metrics: dict[str, float], eval_seconds: float
) -> dict[str, Any]:
    """The ``metrics.jsonl`` record of a trained and evaluated epoch."""
    metric = state.task.metric
    return {
        "kind": "epoch",
        "epoch": epoch.number,
        "step": state.progress.step,
        "train_loss": epoch.loss_sum / epoch.steps,
        "test_loss": metrics["loss"],
        f"test_{metric}": metrics[metric],
        "lr": state.scheduler.get_last_lr()[0],
        "epoch_seconds": epoch.seconds,
        "eval_seconds": eval_seconds,
        "train_seconds": state.progress.train_seconds,
        "examples_per_second": epoch.steps * state.config.batch_size / max(epoch.seconds, 1e-9),
    }


def _advance(state: RunState, record: dict[str, Any], value: float) -> None:
    """Count the epoch of ``record`` as done; note when ``value`` first meets the target."""
    progress = state.progress
    progress.epoch = record["epoch"]
    progress.history.append(record)
    if (
        state.target is not None
        and progress.time_to_target is None
        and _reached(value, state.target, state.task.higher_is_better)
    ):
        progress.time_to_target = progress.train_seconds
        progress.epochs_to_target = record["epoch"]


def _report_epoch(
    state: RunState, epoch: _Epoch, record: dict[str, Any], metrics: dict[str, float]
) -> None:
    """Log the epoch's record, show its line and hand it to the caller's callback."""
    metric = state.task.metric
    state.reporting.write(record)
    state.reporting.say(
        f"epoch {epoch.number}/{state.config.epochs}: train loss {record['train_loss']:.4f}, "
        f"test loss {metrics['loss']:.4f}, test {metric} {metrics[metric]:.4f}, "
        f"{record['examples_per_second']:.0f} ex/s",
        epoch.bar,
    )
    if state.reporting.on_epoch is not None:
        state.reporting.on_epoch(record)


def _reached(value: float, target: float, higher_is_better: bool) -> bool:
    return value >= target if higher_is_better else value <= target


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
