"""What defines a training run, how it ended, and the names of the files it writes.

:class:`TrainConfig` is validated here without loading any data, so that the command line, a
study and a comparison all reject a bad option before anything runs. A run directory holds
``config.json``, ``metrics.jsonl`` (see :mod:`valleys.bench.run.metrics_log`), ``checkpoint.pt``
(rewritten atomically after every epoch), ``result.json`` (written when the run ends:
completed, diverged or interrupted; :class:`RunResult` is the last of these) and, with
``tensorboard``, the TensorBoard event files of ``metrics.jsonl`` in ``tensorboard/``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from valleys.bench.run.checkpoint import read_json
from valleys.bench.run.metrics_log import require_tensorboard
from valleys.bench.run.schedules import E_SCHEDULES, SCALING_RULES, SCHEDULES
from valleys.bench.tasks import TaskOptions, check_task_options

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "DEFAULT_MICRO_BATCH_SIZE",
    "METRICS_FILE",
    "RESULT_FILE",
    "STATUSES",
    "TENSORBOARD_DIR",
    "RunResult",
    "TrainConfig",
    "check_optimizer_name",
    "load_config",
    "load_result",
]

DEFAULT_MICRO_BATCH_SIZE = 1024
"""Examples per forward/backward pass when ``micro_batch_size`` is unset. Larger micro-batches
buy little speed on a CPU and cost memory linearly."""

STATUSES = ("completed", "diverged", "interrupted")
"""How a run ended."""

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
TENSORBOARD_DIR = "tensorboard"

EFFECTIVE_CLIP = "effective_clip_grad_norm"
"""The key of :attr:`TrainConfig.effective_clip_grad_norm` in ``to_dict()`` (config.json, results):
derived, so ``from_dict`` ignores it and files without it still load."""

# Fields that do not change the trajectory: a run may resume with other values of these.
_NOT_FINGERPRINTED = ("target", "eval_batch_size", "device", "tensorboard")


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
        e_schedule: how E's α follows the run, one of
            :data:`valleys.bench.run.schedules.E_SCHEDULES` (an optimizer with E and a fixed α).
        base_batch_size: the batch size at which ``lr`` applies unscaled.
        clip_grad_norm: clip the global gradient norm to this value, once, for any optimizer
            (None: each optimizer's own setting; see :attr:`effective_clip_grad_norm`).
        weight_decay: the decay group's weight decay (None: the optimizer's default).
        optimizer_args: further constructor arguments (``alpha``, ``betas``, ...).
        bf16: run forward passes under bfloat16 autocast.
        target: target of the primary metric for "time to target" (None: the task's default).
        device: torch device to train on.
        task_options: data and model choices for the task.
        tensorboard: also write the metrics as TensorBoard events (needs ``tensorboard``).
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
    e_schedule: str = "constant"
    base_batch_size: int = 256
    clip_grad_norm: float | None = None
    weight_decay: float | None = None
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    bf16: bool = False
    target: float | None = None
    device: str = "cpu"
    task_options: TaskOptions = field(default_factory=TaskOptions)
    tensorboard: bool = False

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
            if "max_grad_norm" in self.optimizer_args:
                raise ValueError(
                    "clip_grad_norm and optimizer_args max_grad_norm both set the gradient clip; "
                    "give one of them"
                )
        if self.weight_decay is not None:
            _require("weight_decay", self.weight_decay, lambda v: v >= 0, ">= 0")
        if self.target is not None:
            _require("target", self.target, math.isfinite, "a finite number")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; valid schedules: {', '.join(SCHEDULES)}"
            )
        self._check_e_schedule()
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
        if self.tensorboard:
            require_tensorboard()

    def _check_e_schedule(self) -> None:
        from valleys.optim import optimizer_info

        if self.e_schedule not in E_SCHEDULES:
            raise ValueError(
                f"unknown E schedule {self.e_schedule!r}; valid E schedules: "
                f"{', '.join(E_SCHEDULES)}"
            )
        if self.e_schedule == "constant":
            return
        if not optimizer_info(self.optimizer).explores:
            raise ValueError(
                f"e_schedule {self.e_schedule!r} schedules E's alpha; optimizer "
                f"{self.optimizer!r} does not apply E"
            )
        if self.optimizer_args.get("target_perturbation") is not None:
            raise ValueError(
                "e_schedule and target_perturbation both set E's alpha (a schedule, or auto-E); "
                "give one of them"
            )

    @property
    def effective_micro_batch_size(self) -> int:
        """Examples per forward/backward pass actually used."""
        return self.micro_batch_per_rank(1)

    def micro_batch_per_rank(self, world: int) -> int:
        """Examples per forward/backward pass on each of ``world`` ranks sharing every batch."""
        return min(self.batch_size // world, self.micro_batch_size or DEFAULT_MICRO_BATCH_SIZE)

    @property
    def clips_inside(self) -> bool:
        """Whether the optimizer clips the global gradient norm itself (takes ``max_grad_norm``,
        per the registry): ``clip_grad_norm`` is then passed to it, never applied on top."""
        from valleys.optim import optimizer_info

        return optimizer_info(self.optimizer).accepts("max_grad_norm")

    @property
    def effective_clip_grad_norm(self) -> float | None:
        """The one global gradient-norm clip of this run: ``clip_grad_norm`` when set, else the
        optimizer's own (``max_grad_norm`` in ``optimizer_args``, else the registry's
        ``default_clip``); None: none, also for a given 0."""
        from valleys.optim import optimizer_info

        if self.clip_grad_norm is not None or not self.clips_inside:
            return self.clip_grad_norm
        own = self.optimizer_args.get("max_grad_norm", optimizer_info(self.optimizer).default_clip)
        return own or None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (``task_options`` nested), with the derived
        :attr:`effective_clip_grad_norm` under :data:`EFFECTIVE_CLIP`."""
        return {**asdict(self), EFFECTIVE_CLIP: self.effective_clip_grad_norm}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; ``ValueError`` names unknown keys."""
        data = dict(data)
        data.pop(EFFECTIVE_CLIP, None)
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

        ``epochs`` matters only when a schedule (the lr's or E's) depends on the run's length: a
        constant run may be extended by resuming it with more epochs.
        """
        data = asdict(self)
        for name in _NOT_FINGERPRINTED:
            data.pop(name)
        if self.e_schedule == "constant":
            # Left out at its default, so that checkpoints from before the option still resume.
            data.pop("e_schedule")
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


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """The :class:`TrainConfig` stored in the file ``path`` (a run's ``config.json``).

    Raises:
        ValueError: the file is not JSON, or not a configuration; the message names the file.
    """
    data = read_json(path)
    try:
        return TrainConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a valid run configuration: {exc}") from None


def load_result(run_dir: str | os.PathLike[str]) -> RunResult:
    """The stored result of the run in ``run_dir``."""
    path = Path(run_dir) / RESULT_FILE
    data = read_json(path)
    try:
        return RunResult.from_dict(data)
    except TypeError as exc:
        raise ValueError(f"{path} is not a valid run result: {exc}") from None
