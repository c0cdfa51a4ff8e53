"""The training loop: one run of one optimizer on one task, resumable bit for bit.

The global batch size is decoupled from memory: each optimizer step accumulates the gradient over
micro-batches, each micro-batch's mean loss weighted by its share of the batch, so the accumulated
gradient *is* the gradient of the whole batch's mean loss (exactly, up to float rounding) — for
models without batch-dependent layers. With BatchNorm, statistics are those of each micro-batch
("ghost batch norm"), as on a multi-GPU run where each device normalises its own shard.

Everything random is driven by the seed: the model's initialisation and dropout by torch's global
RNG (saved in every checkpoint), the order of examples by a generator derived from (seed, epoch).
Deterministic algorithms are switched on for the run. Together with checkpoints holding the model,
optimizer, scheduler and RNG states, ``resume=True`` continues a run exactly where it stopped: a run
of 4 epochs and a run of 2 epochs resumed for 2 more end with identical parameters and metrics.

A run directory holds ``config.json``, ``metrics.jsonl`` (see :mod:`valleys.bench.run.metrics_log`),
``checkpoint.pt`` (rewritten atomically after every epoch) and ``result.json`` (written when the run
ends: completed, diverged or interrupted).

Under ``torchrun`` (``distributed="ddp"`` or ``"fsdp"``) each rank takes a disjoint, equal slice of
every global batch (the same per-epoch permutation on every rank, so no sampler state needs
saving), accumulates over its micro-batches without communicating, and the gradients are averaged
once per optimizer step: the step equals one process's step on the whole batch. Losses are averaged
across ranks, every rank evaluates the whole test set (so every rank reports the same metrics) and
only rank 0 writes files. FSDP runs save model and optimizer with ``torch.distributed.checkpoint``
(a folder of shards next to ``checkpoint.pt``), which loads into any world size, one process
included.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

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
    write_json_atomic,
)
from valleys.bench.run.metrics_log import MetricsLog, read_metrics
from valleys.bench.run.progress import emit, progress_bar
from valleys.bench.run.schedules import SCALING_RULES, SCHEDULES, build_schedule, scale_lr
from valleys.bench.tasks import Split, Task, TaskOptions, build_task, check_task_options

__all__ = [
    "DEFAULT_MICRO_BATCH_SIZE",
    "DISTRIBUTED",
    "STATUSES",
    "RunResult",
    "TrainConfig",
    "accumulate_gradients",
    "check_optimizer_name",
    "epoch_batches",
    "init_distributed",
    "make_optimizer",
    "steps_per_epoch",
    "train",
]

DEFAULT_MICRO_BATCH_SIZE = 1024
"""Examples per forward/backward pass when ``micro_batch_size`` is unset. Larger micro-batches
buy little speed on a CPU and cost memory linearly."""

STATUSES = ("completed", "diverged", "interrupted")
"""How a run ended."""

DISTRIBUTED = ("ddp", "fsdp")
"""Data-parallel strategies under ``torchrun``: DistributedDataParallel, or FSDP2 (``fully_shard``)."""

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"

# Fields that do not change the trajectory: a run may resume with other values of these.
_NOT_FINGERPRINTED = ("target", "eval_batch_size", "device")


def check_optimizer_name(name: str) -> None:
    """Raise ``ValueError`` listing the valid names when ``name`` is not a registered optimizer."""
    from valleys.optim import optimizer_info

    optimizer_info(name)


@dataclass
class TrainConfig:
    """Everything that defines one training run.

    Attributes:
        task: a name from :func:`valleys.bench.tasks.available_tasks`.
        optimizer: a name from :func:`valleys.optim.available_optimizers`.
        lr: the base learning rate (scaled by ``lr_scaling`` from ``base_batch_size``).
        batch_size: the global batch: examples per optimizer step.
        epochs: passes over the training set.
        seed: seeds initialisation, dropout and the order of examples.
        micro_batch_size: examples per forward/backward pass (None: ``DEFAULT_MICRO_BATCH_SIZE``).
        eval_batch_size: examples per forward pass at evaluation.
        schedule: one of :data:`valleys.bench.run.schedules.SCHEDULES`.
        warmup_epochs: linear warmup length, in epochs (fractions allowed).
        poly_power: exponent of the ``poly`` schedule.
        lr_scaling: one of :data:`valleys.bench.run.schedules.SCALING_RULES`.
        base_batch_size: the batch size at which ``lr`` applies unscaled.
        clip_grad_norm: clip the global gradient norm to this value (None: no clipping).
        weight_decay: the decay group's weight decay (None: the optimizer's default).
        optimizer_args: further constructor arguments (``alpha``, ``betas``, ...).
        bf16: run forward passes under bfloat16 autocast.
        target: target of the primary metric for "time to target" (None: the task's default).
        device: torch device to train on.
        task_options: data and model choices for the task.
    """

    task: str = "fashion-mnist"
    optimizer: str = "alto"
    lr: float = 1e-3
    batch_size: int = 1024
    epochs: int = 10
    seed: int = 0
    micro_batch_size: int | None = None
    eval_batch_size: int = 1024
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    poly_power: float = 1.0
    lr_scaling: str = "none"
    base_batch_size: int = 256
    clip_grad_norm: float | None = None
    weight_decay: float | None = None
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    bf16: bool = False
    target: float | None = None
    device: str = "cpu"
    task_options: TaskOptions = field(default_factory=TaskOptions)

    def validate(self) -> None:
        """Check every field without loading data; ``ValueError`` names the first bad one."""
        for name in ("batch_size", "epochs", "eval_batch_size", "base_batch_size"):
            _require(name, getattr(self, name), lambda v: isinstance(v, int) and v >= 1, ">= 1")
        _require("seed", self.seed, lambda v: isinstance(v, int) and v >= 0, ">= 0")
        _require("lr", self.lr, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
        if self.micro_batch_size is not None:
            _require("micro_batch_size", self.micro_batch_size, lambda v: v >= 1, ">= 1")
        _require(
            "warmup_epochs",
            self.warmup_epochs,
            lambda v: math.isfinite(v) and 0 <= v <= self.epochs,
            f"in [0, epochs={self.epochs}]",
        )
        _require("poly_power", self.poly_power, lambda v: math.isfinite(v) and v > 0, "> 0")
        if self.clip_grad_norm is not None:
            _require("clip_grad_norm", self.clip_grad_norm, lambda v: v > 0, "> 0")
        if self.weight_decay is not None:
            _require("weight_decay", self.weight_decay, lambda v: v >= 0, ">= 0")
        if self.target is not None:
            _require("target", self.target, math.isfinite, "a finite number")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; valid schedules: {', '.join(SCHEDULES)}"
            )
        if self.lr_scaling not in SCALING_RULES:
            raise ValueError(
                f"unknown lr scaling rule {self.lr_scaling!r}; valid rules: "
                f"{', '.join(SCALING_RULES)}"
            )
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"invalid device {self.device!r}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} is not available: torch sees no CUDA GPU")
        check_optimizer_name(self.optimizer)
        check_task_options(self.task, self.task_options)

    @property
    def effective_micro_batch_size(self) -> int:
        """Examples per forward/backward pass actually used."""
        return min(self.batch_size, self.micro_batch_size or DEFAULT_MICRO_BATCH_SIZE)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (``task_options`` nested)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; ``ValueError`` names unknown keys."""
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        options = data.pop("task_options", None) or {}
        option_names = {f.name for f in fields(TaskOptions)}
        unknown = sorted(set(options) - option_names)
        if unknown:
            raise ValueError(f"unknown task options: {', '.join(unknown)}")
        return cls(**data, task_options=TaskOptions(**options))

    def fingerprint(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to be resumed by this configuration.

        ``epochs`` matters only when the schedule depends on the run's length: a constant-rate run
        may be extended by resuming it with more epochs.
        """
        data = self.to_dict()
        for name in _NOT_FINGERPRINTED:
            data.pop(name)
        if self.schedule == "constant":
            data.pop("epochs")
        return data


def _require(name: str, value: Any, ok: Callable[[Any], bool], expected: str) -> None:
    try:
        valid = bool(ok(value))
    except TypeError:
        valid = False
    if not valid:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclass
class RunResult:
    """How a run ended and what it reached.

    Attributes:
        config: the run's :class:`TrainConfig` as a dictionary.
        status: one of :data:`STATUSES`.
        metric: name of the primary metric; ``higher_is_better`` its direction.
        epochs_completed: epochs trained and evaluated.
        steps: optimizer steps taken (up to the last completed epoch for an interrupted run).
        best_metric: best primary metric over the completed epochs, ``best_epoch`` where.
        final_metric: primary metric after the last completed epoch.
        final_train_loss: mean training loss over the last completed epoch.
        target: the target of the primary metric.
        time_to_target: training seconds (evaluation excluded) until the target was first met.
        epochs_to_target: epochs until then.
        train_seconds: training seconds over all completed epochs.
        diverged_at_step: the optimizer step whose loss was not finite, for a diverged run.
        history: one record per completed epoch (as logged in ``metrics.jsonl``).
        out_dir: where the run's files are.
        model: the trained model (not serialised), when the run ended in this process.
    """

    config: dict[str, Any]
    status: str
    metric: str
    higher_is_better: bool
    epochs_completed: int
    steps: int
    best_metric: float | None
    best_epoch: int | None
    final_metric: float | None
    final_train_loss: float | None
    target: float | None
    time_to_target: float | None
    epochs_to_target: int | None
    train_seconds: float
    diverged_at_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    out_dir: str | None = None
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary, without the model."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        """Inverse of :meth:`to_dict`."""
        known = {f.name for f in fields(cls)} - {"model"}
        return cls(**{k: v for k, v in data.items() if k in known})


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimizer steps per epoch: whole batches only; ``ValueError`` if not even one fits."""
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size ({batch_size}) exceeds the number of training examples ({num_examples})"
        )
    return num_examples // batch_size


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> Tensor:
    """The example indices of each optimizer step of ``epoch``: ``int64 [steps, batch_size]``.

    A fresh permutation per epoch from a generator seeded by (seed, epoch), so that the order
    depends on nothing else (and a resumed run needs no sampler state). The remainder that does not
    fill a whole batch is left out, a different remainder each epoch.
    """
    steps = steps_per_epoch(num_examples, batch_size)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)[: steps * batch_size].view(steps, -1)


def accumulate_gradients(
    model: nn.Module,
    task: Task,
    split: Split,
    index: Tensor,
    micro_batch_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> Tensor:
    """Add the gradient of the mean loss over ``split[index]`` to ``.grad``, in micro-batches.

    Each micro-batch's mean loss is weighted by its share of the batch, so the sum over
    micro-batches is the batch's mean loss and so is its gradient. Returns that loss, detached.
    ``no_sync`` (DDP's ``model.no_sync``) wraps every micro-batch but the last, so that gradients
    are communicated once per optimizer step.
    """
    total = index.numel()
    loss_sum = torch.zeros((), dtype=torch.float64, device=index.device)
    micros = index.split(micro_batch_size)
    for i, micro in enumerate(micros):
        inputs, targets = split.select(micro)
        last = i == len(micros) - 1
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            with autocast() if autocast is not None else contextlib.nullcontext():
                output = task.forward(model, inputs)
            loss = task.loss(output, targets) * (micro.numel() / total)
            loss.backward()
        loss_sum += loss.detach().double()
    return loss_sum


def make_optimizer(config: TrainConfig, model: nn.Module) -> Optimizer:
    """The optimizer of ``config`` from :func:`valleys.optim.create_optimizer`, lr scaled."""
    from valleys.optim import create_optimizer

    lr = scale_lr(config.lr, config.batch_size, config.base_batch_size, config.lr_scaling)
    return create_optimizer(
        config.optimizer,
        model,
        lr=lr,
        batch_size=config.batch_size,
        weight_decay=config.weight_decay,
        **config.optimizer_args,
    )


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


def init_distributed(device: str) -> torch.device:
    """Join the process group ``torchrun`` describes (if not yet joined); return this rank's device.

    NCCL and the rank's own GPU (``LOCAL_RANK``) when ``device`` is CUDA, gloo otherwise.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    wanted = torch.device(device)
    if wanted.type == "cuda":
        wanted = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(wanted)
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise RuntimeError(
                "--dist needs the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, ...): "
                "launch with `torchrun --nproc_per_node=N -m valleys.commands.main train ... --dist ddp`"
            )
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    return wanted


@dataclass
class _Ranks:
    """This process's place in a data-parallel run (world 1, rank 0 when not distributed)."""

    strategy: str | None = None
    world: int = 1
    rank: int = 0

    @property
    def lead(self) -> bool:
        """Rank 0, the one that writes files and prints."""
        return self.rank == 0

    def local(self, index: Tensor) -> Tensor:
        """This rank's slice of a global batch's indices."""
        per_rank = index.numel() // self.world
        return index[self.rank * per_rank : (self.rank + 1) * per_rank]

    def mean(self, value: Tensor) -> Tensor:
        """``value`` averaged across ranks (every rank's share of the batch is the same size)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        dist.all_reduce(value)
        return value / self.world

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards on their own before the root: the elements of the outermost
    ``nn.ModuleList`` objects (the layers of Hugging Face's GPT-2 and BERT, any stack of blocks kept in a
    list), the usual per-block wrapping. Models without such a list are one unit, the root."""
    units: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside or not isinstance(module, nn.ModuleList):
            continue
        for block in module:
            units.append(block)
            inside.update(id(m) for m in block.modules())
    return units


def _wrap(
    model: nn.Module, ranks: _Ranks, device: torch.device
) -> tuple[nn.Module, Callable[[], contextlib.AbstractContextManager[Any]] | None]:
    """The model to train (wrapped for the strategy) and its ``no_sync`` context factory."""
    if ranks.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
        return wrapped, wrapped.no_sync
    if ranks.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # In place: the module's parameters become DTensors sharded over all ranks. Each block
        # is its own unit, so that the forward and backward gather one block's parameters at a
        # time (and overlap that with compute) instead of the whole model's.
        for block in shard_units(model):
            fully_shard(block)
        sharded: Any = fully_shard(model)

        @contextlib.contextmanager
        def no_sync() -> Iterator[None]:
            sharded.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                sharded.set_requires_gradient_sync(True)

        return sharded, no_sync
    return model, None


@dataclass
class _Progress:
    """What a checkpoint must carry besides the model, optimizer, scheduler and RNG states."""

    epoch: int = 0
    step: int = 0
    train_seconds: float = 0.0
    time_to_target: float | None = None
    epochs_to_target: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _reached(value: float, target: float, higher_is_better: bool) -> bool:
    return value >= target if higher_is_better else value <= target


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _prepare_out_dir(out: Path, resume: bool) -> None:
    if resume:
        return
    taken = [name for name in (CHECKPOINT_FILE, RESULT_FILE) if (out / name).exists()]
    if taken:
        raise FileExistsError(
            f"{out} already holds a run ({', '.join(taken)}): resume it, or choose another "
            "output directory"
        )


def _resumed_records(out: Path, progress: _Progress) -> list[dict[str, Any]]:
    """The log of a resumed run: step records up to its checkpoint, then its epoch records."""
    path = out / METRICS_FILE
    steps = read_metrics(path, kind="step") if path.is_file() else []
    steps = [r for r in steps if r.get("step", 0) <= progress.step]
    # Each epoch record goes after the step record that ended its epoch.
    records = [*steps, *progress.history]
    return sorted(records, key=lambda r: (r.get("step", 0), r.get("kind") == "epoch"))


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
            it, an ``out_dir`` that already holds a run is refused rather than overwritten.
        task: the task, already built (e.g. shared by many runs); built from ``config`` if None.
        quiet: no progress bar and no per-epoch lines.
        log: receives the per-epoch lines instead of stderr.
        on_epoch: called with each epoch's record after it is stored (for sweeps and pruning).
        distributed: ``"ddp"`` or ``"fsdp"`` to run as one rank of a ``torchrun`` job (see
            :data:`DISTRIBUTED`; the process group is joined if it is not yet); ``config.batch_size``
            stays the global batch and must be a multiple of the world size. Every rank returns
            the same result; only rank 0 writes files.

    Returns:
        The result; also written to ``out_dir/result.json`` before returning. A run whose loss
        becomes NaN or infinite stops and is returned with status ``"diverged"`` and the metrics of
        its last good epoch.

    Raises:
        ValueError: an invalid configuration (the message names the field).
        FileExistsError: ``out_dir`` holds a run and ``resume`` is False.
        CheckpointError: the checkpoint is corrupt or belongs to another configuration.
        KeyboardInterrupt: after writing ``result.json`` with status ``"interrupted"``; the last
            checkpoint is left as it was.
    """
    config.validate()
    ranks = _Ranks()
    device = torch.device(config.device)
    if distributed is not None:
        if distributed not in DISTRIBUTED:
            raise ValueError(
                f"unknown distributed strategy {distributed!r}; valid: {', '.join(DISTRIBUTED)}"
            )
        import torch.distributed as dist

        device = init_distributed(config.device)
        ranks = _Ranks(distributed, dist.get_world_size(), dist.get_rank())
        if config.batch_size % ranks.world != 0:
            raise ValueError(
                f"batch_size ({config.batch_size}) must be a multiple of the world size "
                f"({ranks.world}): each rank takes batch_size / world_size examples per step"
            )
    if task is None:
        task = build_task(config.task, config.task_options)
    elif task.name != config.task:
        raise ValueError(f"task {task.name!r} was given for a configuration of {config.task!r}")
    train_split, test_split = task.train.to(device), task.test.to(device)
    epoch_steps = steps_per_epoch(len(train_split), config.batch_size)
    total_steps = epoch_steps * config.epochs
    target = config.target if config.target is not None else task.target
    micro = min(
        config.batch_size // ranks.world, config.micro_batch_size or DEFAULT_MICRO_BATCH_SIZE
    )
    quiet = quiet or not ranks.lead

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _prepare_out_dir(out, resume)
        # No rank may find the files rank 0 is about to write.
        ranks.barrier()

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    amp = autocast if config.bf16 else None

    with _deterministic(device):
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        model = task.build_model().to(device)
        wrapped, no_sync = _wrap(model, ranks, device)
        optimizer = make_optimizer(config, model)
        scheduler = build_schedule(
            config.schedule,
            optimizer,
            total_steps,
            warmup_steps=min(total_steps, round(config.warmup_epochs * epoch_steps)),
            power=config.poly_power,
        )
        progress = _Progress()
        checkpoint_path = out / CHECKPOINT_FILE if out is not None else None
        if resume and checkpoint_path is not None and checkpoint_path.exists():
            payload = load_checkpoint(checkpoint_path, fingerprint=config.fingerprint())
            try:
                load_model_and_optimizer(payload, checkpoint_path.parent, model, optimizer)
                scheduler.load_state_dict(payload["scheduler"])
                progress = _Progress(**payload["progress"])
                set_rng_state(payload["rng"])
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(
                    f"checkpoint {checkpoint_path} does not fit this run's model or optimizer "
                    f"({exc})"
                ) from exc

        metrics_log = None
        if out is not None and ranks.lead:
            write_json_atomic(out / CONFIG_FILE, config.to_dict())
            metrics_log = MetricsLog(
                out / METRICS_FILE,
                history=_resumed_records(out, progress) if resume else (),
                tensorboard_dir=out / "tensorboard",
            )

        def finish(status: str, diverged_at: int | None = None) -> RunResult:
            result = _result(config, task, progress, status, target, diverged_at, out, model)
            if out is not None and ranks.lead:
                write_json_atomic(out / RESULT_FILE, result.to_dict())
            return result

        try:
            status, diverged_at = _run_epochs(
                config=config,
                task=task,
                model=wrapped,
                optimizer=optimizer,
                scheduler=scheduler,
                train_split=train_split,
                test_split=test_split,
                micro=micro,
                amp=amp,
                ranks=ranks,
                no_sync=no_sync,
                progress=progress,
                target=target,
                checkpoint_path=checkpoint_path,
                metrics_log=metrics_log,
                quiet=quiet,
                log=log,
                on_epoch=on_epoch,
            )
        except KeyboardInterrupt:
            # Report what the checkpoint holds: the steps of a half-done epoch are lost with it.
            progress.step = progress.history[-1]["step"] if progress.history else 0
            finish("interrupted")
            raise
        finally:
            if metrics_log is not None:
                metrics_log.close()
        return finish(status, diverged_at)


def _run_epochs(
    *,
    config: TrainConfig,
    task: Task,
    model: nn.Module,
    optimizer: Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_split: Split,
    test_split: Split,
    micro: int,
    amp: Callable[[], contextlib.AbstractContextManager[Any]] | None,
    ranks: _Ranks,
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] | None,
    progress: _Progress,
    target: float | None,
    checkpoint_path: Path | None,
    metrics_log: MetricsLog | None,
    quiet: bool,
    log: Callable[[str], None] | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> tuple[str, int | None]:
    """Train from ``progress.epoch + 1`` to ``config.epochs``; return (status, diverged step).

    ``model`` is the wrapped model under DDP/FSDP; only rank 0 has a ``metrics_log`` and writes
    ``checkpoint_path`` (every rank writes its shards of an FSDP checkpoint).
    """
    metric = task.metric
    device = next(model.parameters()).device
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        model.train()
        batches = epoch_batches(len(train_split), config.batch_size, config.seed, epoch)
        bar = progress_bar(
            len(batches),
            unit="step",
            quiet=quiet,
            description=f"epoch {epoch}/{config.epochs}",
            leave=False,
        )
        loss_sum = 0.0
        started = time.perf_counter()
        for index in batches.to(device):
            optimizer.zero_grad(set_to_none=True)
            local = ranks.local(index)
            loss_t = accumulate_gradients(model, task, train_split, local, micro, amp, no_sync)
            loss = ranks.mean(loss_t).item()
            lr = scheduler.get_last_lr()[0]
            step_record: dict[str, Any] = {
                "kind": "step",
                "step": progress.step + 1,
                "epoch": epoch,
                "loss": loss,
                "lr": lr,
            }
            if not math.isfinite(loss):
                bar.close()
                if metrics_log is not None:
                    metrics_log.write(step_record)
                if not quiet:
                    emit(
                        f"epoch {epoch}: loss {loss} at step {progress.step + 1}: diverged",
                        bar,
                        log,
                    )
                return "diverged", progress.step + 1
            if config.clip_grad_norm is not None:
                norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
                step_record["grad_norm"] = _full(norm).item()
            optimizer.step()
            scheduler.step()
            progress.step += 1
            loss_sum += loss
            if metrics_log is not None:
                metrics_log.write(step_record)
            bar.update(1)
            elapsed = time.perf_counter() - started
            postfix = {"loss": f"{loss:.4f}"}
            if progress.history:
                postfix[metric] = f"{progress.history[-1][f'test_{metric}']:.4f}"
            postfix["ex/s"] = f"{bar.n * config.batch_size / max(elapsed, 1e-9):.0f}"
            bar.set_postfix(postfix, refresh=False)
        epoch_seconds = time.perf_counter() - started
        bar.close()
        progress.train_seconds += epoch_seconds

        eval_started = time.perf_counter()
        # Every rank evaluates all of the test set: the same metrics everywhere, no reduction.
        evaluated = _unwrapped(model)
        metrics = task.evaluate(
            evaluated, test_split, batch_size=config.eval_batch_size, autocast=amp
        )
        eval_seconds = time.perf_counter() - eval_started
        if not (_finite(metrics["loss"]) and _finite(metrics[metric])):
            if not quiet:
                emit(f"epoch {epoch}: test loss {metrics['loss']}: diverged", bar, log)
            return "diverged", progress.step

        record = {
            "kind": "epoch",
            "epoch": epoch,
            "step": progress.step,
            "train_loss": loss_sum / len(batches),
            "test_loss": metrics["loss"],
            f"test_{metric}": metrics[metric],
            "lr": scheduler.get_last_lr()[0],
            "epoch_seconds": epoch_seconds,
            "eval_seconds": eval_seconds,
            "train_seconds": progress.train_seconds,
            "examples_per_second": len(batches) * config.batch_size / max(epoch_seconds, 1e-9),
        }
        progress.epoch = epoch
        progress.history.append(record)
        if (
            target is not None
            and progress.time_to_target is None
            and _reached(metrics[metric], target, task.higher_is_better)
        ):
            progress.time_to_target = progress.train_seconds
            progress.epochs_to_target = epoch
        if checkpoint_path is not None:
            payload = {
                "fingerprint": config.fingerprint(),
                "epoch": epoch,
                "scheduler": scheduler.state_dict(),
                "rng": get_rng_state(),
                "progress": asdict(progress),
            }
            if ranks.strategy == "fsdp":
                shards = f"{SHARDED_PREFIX}{epoch}"
                save_sharded(checkpoint_path.parent / shards, model, optimizer)
                payload.update(model=None, optimizer=None, sharded=shards)
            else:
                payload.update(
                    model=_unwrapped(model).state_dict(), optimizer=optimizer.state_dict()
                )
            if ranks.lead:
                save_checkpoint(checkpoint_path, payload)
                remove_stale_shards(checkpoint_path.parent, payload.get("sharded"))
        if metrics_log is not None:
            metrics_log.write(record)
        if not quiet:
            emit(
                f"epoch {epoch}/{config.epochs}: train loss {record['train_loss']:.4f}, "
                f"test loss {metrics['loss']:.4f}, test {metric} {metrics[metric]:.4f}, "
                f"{record['examples_per_second']:.0f} ex/s",
                bar,
                log,
            )
        if on_epoch is not None:
            on_epoch(record)
    return "completed", None


def _unwrapped(model: nn.Module) -> nn.Module:
    """The user's module inside a DistributedDataParallel wrapper (FSDP2 wraps in place)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def _full(t: Tensor) -> Tensor:
    """A DTensor (e.g. FSDP's gradient norm) as the whole tensor; a plain one as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _result(
    config: TrainConfig,
    task: Task,
    progress: _Progress,
    status: str,
    target: float | None,
    diverged_at: int | None,
    out: Path | None,
    model: nn.Module,
) -> RunResult:
    key = f"test_{task.metric}"
    values = [(r[key], r["epoch"]) for r in progress.history]
    pick = max if task.higher_is_better else min
    best = pick(values, key=lambda item: item[0]) if values else None
    last = progress.history[-1] if progress.history else None
    return RunResult(
        config=config.to_dict(),
        status=status,
        metric=task.metric,
        higher_is_better=task.higher_is_better,
        epochs_completed=progress.epoch,
        steps=progress.step,
        best_metric=best[0] if best else None,
        best_epoch=best[1] if best else None,
        final_metric=last[key] if last else None,
        final_train_loss=last["train_loss"] if last else None,
        target=target,
        time_to_target=progress.time_to_target,
        epochs_to_target=progress.epochs_to_target,
        train_seconds=progress.train_seconds,
        diverged_at_step=diverged_at,
        history=list(progress.history),
        out_dir=str(out) if out is not None else None,
        model=model,
    )


def load_result(run_dir: str | os.PathLike[str]) -> RunResult:
    """The stored result of the run in ``run_dir``."""
    path = Path(run_dir) / RESULT_FILE
    return RunResult.from_dict(json.loads(path.read_text()))
