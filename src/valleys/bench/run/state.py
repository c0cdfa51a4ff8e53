"""The run in progress: what the epoch loop works on, and how it is saved, restored and summed up.

A checkpoint holds the model, optimizer, scheduler and RNG states and the :class:`Progress`; with
those restored a run continues exactly where it stopped. An optimizer with train/eval modes
(Schedule-Free) is saved in eval mode, so the checkpoint's model holds the weights that are
evaluated (and measured by ``valleys flatness``). FSDP runs save model and optimizer with
``torch.distributed.checkpoint`` (a folder of shards next to ``checkpoint.pt``), which loads into
any world size, one process included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from valleys.bench.run.checkpoint import (
    SHARDED_PREFIX,
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    load_model_and_optimizer,
    remove_stale_shards,
    save_checkpoint,
    save_sharded,
    set_rng_state,
)
from valleys.bench.run.config import CHECKPOINT_FILE, METRICS_FILE, RunResult, TrainConfig
from valleys.bench.run.distributed import ContextFactory, Ranks
from valleys.bench.run.metrics_log import MetricsLog, read_metrics
from valleys.bench.run.progress import emit
from valleys.bench.tasks import Task
from valleys.optim import EScheduler

__all__ = [
    "Progress",
    "Reporting",
    "RunState",
    "restore_checkpoint",
    "resumed_records",
    "run_result",
    "save_run_checkpoint",
]


@dataclass
class Progress:
    """What a checkpoint must carry besides the model, optimizer, scheduler and RNG states."""

    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    time_to_target: float | None = None
    epochs_to_target: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Reporting:
    """Where a run's records and lines go.

    Only rank 0 of a run with an output directory has a ``metrics_log``; ``quiet`` silences the
    per-epoch lines, which go to ``log`` when given; ``on_epoch`` sees each stored epoch record.
    """

    quiet: bool = False
    log: Callable[[str], None] | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    metrics_log: MetricsLog | None = None

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the metrics log, if this process keeps one."""
        if self.metrics_log is not None:
            self.metrics_log.write(record)

    def say(self, message: str, bar: Any) -> None:
        """Show one line about the run, unless quiet."""
        if not self.quiet:
            emit(message, bar, self.log)

    def close(self) -> None:
        """Close the metrics log."""
        if self.metrics_log is not None:
            self.metrics_log.close()


@dataclass(eq=False)
class RunState:
    """One run being trained.

    Attributes:
        config: the run.
        task: the task, its splits on the run's device.
        ranks: this process's place in a data-parallel run.
        model: the user's module (what is evaluated, saved and returned).
        wrapped: what trains: ``model`` wrapped by DDP, or ``model`` itself.
        no_sync: the wrapper's context that defers gradient communication, if any.
        optimizer: the run's optimizer, over ``model``'s parameters.
        scheduler: the learning-rate schedule, stepped once per optimizer step.
        e_scheduler: E's α schedule (``e_schedule``), stepped with it; None: α as given.
        micro: examples per forward/backward pass on this rank.
        target: target of the primary metric for "time to target".
        amp: the bf16 autocast context factory, when the run uses it.
        out: the run directory (None: nothing written).
        progress: epochs and steps done, times, history.
        reporting: where records and lines go.
    """

    config: TrainConfig
    task: Task
    ranks: Ranks
    model: nn.Module
    wrapped: nn.Module
    no_sync: ContextFactory | None
    optimizer: Optimizer
    scheduler: LRScheduler
    micro: int
    target: float | None
    amp: ContextFactory | None = None
    e_scheduler: EScheduler | None = None
    out: Path | None = None
    progress: Progress = field(default_factory=Progress)
    reporting: Reporting = field(default_factory=Reporting)

    @property
    def checkpoint_path(self) -> Path | None:
        """Where the checkpoint is (None when nothing is written)."""
        return self.out / CHECKPOINT_FILE if self.out is not None else None

    def optimizer_mode(self, *, training: bool) -> None:
        """Put the optimizer in train mode (for steps) or eval mode (for anything else).

        Only optimizers the registry marks with ``modes`` (Schedule-Free) have them: their
        parameters are the point gradients are taken at in train mode and the averaged weights,
        the ones to evaluate, in eval mode. Switching to the mode it is in changes nothing.
        """
        from valleys.optim import optimizer_info

        if optimizer_info(self.config.optimizer).modes:
            mode = self.optimizer.train if training else self.optimizer.eval  # type: ignore[attr-defined]
            mode()


def save_run_checkpoint(state: RunState, path: Path) -> None:
    """Save the state after ``state.progress.epoch`` to ``path``.

    Only rank 0 writes ``path``; every rank writes its shards of an FSDP checkpoint. The optimizer
    is put in eval mode first (see :meth:`RunState.optimizer_mode`).
    """
    state.optimizer_mode(training=False)
    epoch = state.progress.epoch
    payload: dict[str, Any] = {
        "fingerprint": state.config.fingerprint(),
        "epoch": epoch,
        "scheduler": state.scheduler.state_dict(),
        "e_scheduler": state.e_scheduler.state_dict() if state.e_scheduler else None,
        "rng": get_rng_state(),
        "progress": asdict(state.progress),
    }
    if state.ranks.strategy == "fsdp":
        shards = f"{SHARDED_PREFIX}{epoch}"
        save_sharded(path.parent / shards, state.wrapped, state.optimizer)
        payload.update(model=None, optimizer=None, sharded=shards)
    else:
        payload.update(model=state.model.state_dict(), optimizer=state.optimizer.state_dict())
    if state.ranks.lead:
        save_checkpoint(path, payload)
        remove_stale_shards(path.parent, payload.get("sharded"))


def restore_checkpoint(state: RunState, path: Path) -> None:
    """Load the checkpoint at ``path`` into ``state``, RNG included.

    Raises:
        CheckpointError: the checkpoint is corrupt, belongs to another configuration, or does not
            fit the run's model or optimizer.
    """
    payload = load_checkpoint(path, fingerprint=state.config.fingerprint())
    try:
        load_model_and_optimizer(payload, path.parent, state.model, state.optimizer)
        state.scheduler.load_state_dict(payload["scheduler"])
        if state.e_scheduler is not None:
            state.e_scheduler.load_state_dict(payload["e_scheduler"])
        state.progress = Progress(**payload["progress"])
        set_rng_state(payload["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit this run's model or optimizer ({exc})"
        ) from exc


def resumed_records(out: Path, progress: Progress) -> list[dict[str, Any]]:
    """The log of a resumed run: step records up to its checkpoint, then its epoch records."""
    path = out / METRICS_FILE
    steps = read_metrics(path, kind="step") if path.is_file() else []
    steps = [r for r in steps if r.get("step", 0) <= progress.step]
    # Each epoch record goes after the step record that ended its epoch.
    records = [*steps, *progress.history]
    return sorted(records, key=lambda r: (r.get("step", 0), r.get("kind") == "epoch"))


def run_result(state: RunState, status: str, diverged_at: int | None = None) -> RunResult:
    """The :class:`RunResult` of ``state`` ending with ``status``."""
    task, progress = state.task, state.progress
    key = f"test_{task.metric}"
    values = [(r[key], r["epoch"]) for r in progress.history]
    pick = max if task.higher_is_better else min
    best = pick(values, key=lambda item: item[0]) if values else None
    last = progress.history[-1] if progress.history else None
    return RunResult(
        config=state.config.to_dict(),
        status=status,
        metric=task.metric,
        higher_is_better=task.higher_is_better,
        epochs_completed=progress.epoch,
        steps=progress.step,
        best_metric=best[0] if best else None,
        best_epoch=best[1] if best else None,
        final_metric=last[key] if last else None,
        final_train_loss=last["train_loss"] if last else None,
        target=state.target,
        time_to_target=progress.time_to_target,
        epochs_to_target=progress.epochs_to_target,
        train_seconds=progress.train_seconds,
        diverged_at_step=diverged_at,
        history=list(progress.history),
        out_dir=str(state.out) if state.out is not None else None,
        model=state.model,
    )
