"""One run of one optimizer on one task, resumable bit for bit: set up, resume, train, finish.

Everything random is driven by the seed: the model's initialisation and dropout by torch's global
RNG (saved in every checkpoint), the order of examples by a generator derived from (seed, epoch).
Deterministic algorithms are switched on for the run. Together with checkpoints holding the model,
optimizer, scheduler and RNG states, ``resume=True`` continues a run exactly where it stopped: a run
of 4 epochs and a run of 2 epochs resumed for 2 more end with identical parameters and metrics.

The pieces: :mod:`~valleys.bench.run.config` (the run's options and result, file names),
:mod:`~valleys.bench.run.distributed` (``torchrun``, DDP, FSDP2), :mod:`~valleys.bench.run.batches`
(batches and gradient accumulation), :mod:`~valleys.bench.run.state` (the run in progress, its
checkpoint) and :mod:`~valleys.bench.run.loop` (the epochs).
"""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from valleys.bench.run.batches import steps_per_epoch
from valleys.bench.run.checkpoint import (
    RunFileWarning,
    remove_stale_temporaries,
    writable_dir,
    write_json_atomic,
)
from valleys.bench.run.config import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    RESULT_FILE,
    TENSORBOARD_DIR,
    RunResult,
    TrainConfig,
)
from valleys.bench.run.distributed import ContextFactory, Ranks, join_ranks, wrap_model
from valleys.bench.run.loop import run_epochs
from valleys.bench.run.metrics_log import MetricsLog
from valleys.bench.run.schedules import build_e_schedule, build_schedule, scale_lr
from valleys.bench.run.state import (
    Reporting,
    RunState,
    restore_checkpoint,
    resumed_records,
    run_result,
)
from valleys.bench.tasks import Task, build_task

__all__ = ["make_optimizer", "train"]


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    task: Task | None = None,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    distributed: str | None = None,
) -> RunResult:
    """Train one run of ``config`` and return its :class:`RunResult`.

    Args:
        config: the run.
        out_dir: where to write the config, metrics, checkpoints and result (None: nothing written,
            no checkpoints, no resume).
        resume: continue from ``out_dir``'s checkpoint when there is one (else start afresh). Without
            it, an ``out_dir`` that already holds a run is refused rather than overwritten. The
            temporary files of writes a kill cut short are deleted when a run starts in ``out_dir``.
        task: the task, already built (e.g. shared by many runs); built from ``config`` if None.
        quiet: no progress bar and no per-epoch lines.
        log: receives the per-epoch lines instead of stderr.
        on_epoch: called with each epoch's record after it is stored (for sweeps and pruning).
        distributed: ``"ddp"`` or ``"fsdp"`` to run as one rank of a ``torchrun`` job (see
            :data:`~valleys.bench.run.distributed.DISTRIBUTED`; the process group is joined if it
            is not yet); ``config.batch_size`` stays the global batch and must be a multiple of the
            world size. Every rank returns the same result; only rank 0 writes files.

    Returns:
        The result; also written to ``out_dir/result.json`` before returning. A run whose loss
        becomes NaN or infinite stops and is returned with status ``"diverged"`` and the metrics of
        its last good epoch.

    Raises:
        ValueError: an invalid configuration (the message names the field), an optimizer argument
            the optimizer does not take, or a checkpoint with more epochs than ``config.epochs``.
        FileExistsError: ``out_dir`` holds a run and ``resume`` is False.
        OSError: ``out_dir`` cannot be written (checked before training) or a write failed; the
            message names the file, and the files already written stay as they were.
        CheckpointError: the checkpoint is corrupt or belongs to another configuration.
        KeyboardInterrupt: after writing ``result.json`` with status ``"interrupted"``; the last
            checkpoint is left as it was.
    """
    config.validate()
    ranks, device = join_ranks(distributed, config.device, config.batch_size)
    task = _task_for(config, task)
    task = task.with_data(task.train.to(device), task.test.to(device))
    epoch_steps = steps_per_epoch(len(task.train), config.batch_size)
    out = Path(out_dir) if out_dir is not None else None
    reporting = Reporting(quiet=quiet or not ranks.lead, log=log, on_epoch=on_epoch)
    with _deterministic(device):
        # Built before the folder is touched: a bad optimizer argument leaves no folder behind.
        state = _set_up(config, task, ranks, device, out, reporting, epoch_steps)
        if out is not None:
            _prepare_out_dir(out, resume, ranks.lead)
            # No rank may find the files rank 0 is about to write.
            ranks.barrier()
        checkpoint = state.checkpoint_path
        if resume and checkpoint is not None and checkpoint.exists():
            _restore(state, checkpoint)
        if out is not None and ranks.lead:
            write_json_atomic(out / CONFIG_FILE, config.to_dict())
            reporting.metrics_log = MetricsLog(
                out / METRICS_FILE,
                history=_resumed_log(out, state) if resume else (),
                tensorboard_dir=out / TENSORBOARD_DIR if config.tensorboard else None,
            )
        return _run(state)


def make_optimizer(config: TrainConfig, model: nn.Module) -> Optimizer:
    """The optimizer of ``config`` from :func:`valleys.optim.create_optimizer`, lr scaled.

    ``clip_grad_norm`` goes to an optimizer that clips itself as its ``max_grad_norm`` (the loop
    then does not clip). An optimizer that applies E records its telemetry (``e_telemetry``).
    """
    from valleys.optim import create_optimizer, optimizer_info

    lr = scale_lr(config.lr, config.batch_size, config.base_batch_size, config.lr_scaling)
    clip: dict[str, float] = {}
    if config.clip_grad_norm is not None and config.clips_inside:
        clip["max_grad_norm"] = config.clip_grad_norm
    try:
        optimizer = create_optimizer(
            config.optimizer,
            model,
            lr=lr,
            batch_size=config.batch_size,
            weight_decay=config.weight_decay,
            **clip,
            **config.optimizer_args,
        )
    except TypeError as exc:
        # An argument the optimizer does not take is the user's input, not a bug.
        raise ValueError(
            f"optimizer {config.optimizer!r} rejects optimizer_args {config.optimizer_args}: {exc}"
        ) from None
    if optimizer_info(config.optimizer).explores:
        optimizer.enable_telemetry()  # type: ignore[attr-defined]
    return optimizer


def _task_for(config: TrainConfig, task: Task | None) -> Task:
    """The given task, checked against ``config``, or the task ``config`` names, built."""
    if task is None:
        return build_task(config.task, config.task_options)
    if task.name != config.task:
        raise ValueError(f"task {task.name!r} was given for a configuration of {config.task!r}")
    return task


def _prepare_out_dir(out: Path, resume: bool, lead: bool) -> None:
    """Refuse to start a new run over an old one; check that ``out`` is writable before training;
    clear the temporary files a kill during a write left."""
    if not resume:
        taken = [name for name in (CHECKPOINT_FILE, RESULT_FILE) if (out / name).exists()]
        if taken:
            raise FileExistsError(
                f"{out} already holds a run ({', '.join(taken)}): resume it, or choose another "
                "output directory"
            )
    if lead:
        writable_dir(out)
        remove_stale_temporaries(out)


def _restore(state: RunState, checkpoint: Path) -> None:
    """Continue from ``checkpoint``, which must not hold more epochs than the run is to train."""
    restore_checkpoint(state, checkpoint)
    done, epochs = state.progress.epoch, state.config.epochs
    if done > epochs:
        raise ValueError(
            f"cannot resume {checkpoint.parent} for epochs={epochs}: its checkpoint has {done} "
            f"epochs completed; resume it with epochs >= {done}"
        )


def _resumed_log(out: Path, state: RunState) -> list[dict[str, Any]]:
    """The records a resumed run's log starts with; a warning if step records up to its checkpoint
    are missing (a log cut short), since the log cannot get them back."""
    records = resumed_records(out, state.progress)
    logged = sum(1 for r in records if r.get("kind") == "step")
    if logged < state.progress.step:
        warnings.warn(
            f"{out / METRICS_FILE} holds {logged} of the {state.progress.step} step records up "
            "to the checkpoint (the file was cut short?); the run continues without the missing "
            "ones",
            RunFileWarning,
            stacklevel=3,
        )
    return records


def _set_up(
    config: TrainConfig,
    task: Task,
    ranks: Ranks,
    device: torch.device,
    out: Path | None,
    reporting: Reporting,
    epoch_steps: int,
) -> RunState:
    """Seed, then build the model, its wrapper, the optimizer and the schedule, in that order.

    The order is part of the run's identity: the model's initialisation draws from the seeded RNG.
    """
    total_steps = epoch_steps * config.epochs
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = task.build_model().to(device)
    wrapped, no_sync = wrap_model(model, ranks, device)
    optimizer = make_optimizer(config, model)
    scheduler = build_schedule(
        config.schedule,
        optimizer,
        total_steps,
        warmup_steps=min(total_steps, round(config.warmup_epochs * epoch_steps)),
        power=config.poly_power,
    )
    return RunState(
        config=config,
        task=task,
        ranks=ranks,
        model=model,
        wrapped=wrapped,
        no_sync=no_sync,
        optimizer=optimizer,
        scheduler=scheduler,
        e_scheduler=build_e_schedule(config.e_schedule, optimizer, total_steps),
        micro=config.micro_batch_per_rank(ranks.world),
        target=config.target if config.target is not None else task.target,
        amp=_bf16_autocast(device) if config.bf16 else None,
        out=out,
        reporting=reporting,
    )


def _bf16_autocast(device: torch.device) -> ContextFactory:
    """Opens bfloat16 autocast on ``device``'s type, once per forward pass."""

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    return autocast


def _run(state: RunState) -> RunResult:
    """Run the epochs and finish: the result, written to ``result.json`` by rank 0."""
    try:
        status, diverged_at = run_epochs(state)
    except KeyboardInterrupt:
        # Report what the checkpoint holds: the steps of a half-done epoch are lost with it.
        history = state.progress.history
        state.progress.step = history[-1]["step"] if history else 0
        _finish(state, "interrupted")
        raise
    finally:
        state.reporting.close()
    return _finish(state, status, diverged_at)


def _finish(state: RunState, status: str, diverged_at: int | None = None) -> RunResult:
    result = run_result(state, status, diverged_at)
    if state.out is not None and state.ranks.lead:
        write_json_atomic(state.out / RESULT_FILE, result.to_dict())
    return result


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms for the duration of a run, the caller's setting restored after.

    Off the CPU some kernels have no deterministic version; there a warning beats a crash.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if device.type == "cuda":
        # cuBLAS is only reproducible with a fixed workspace; it must be set before first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
