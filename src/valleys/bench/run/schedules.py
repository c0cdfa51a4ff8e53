"""Learning-rate schedules and batch-size scaling rules for the training loop.

Every schedule is a :class:`torch.optim.lr_scheduler.LambdaLR` stepped once per *optimizer* step
(not per micro-batch, not per epoch), so its state round-trips through ``state_dict`` like any other
torch scheduler and a resumed run continues on the same curve.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from valleys.optim import CosineE, EScheduler, LinearE

__all__ = [
    "E_SCHEDULES",
    "SCALING_RULES",
    "SCHEDULES",
    "build_e_schedule",
    "build_schedule",
    "lr_factor",
    "scale_lr",
]

SCHEDULES: tuple[str, ...] = ("constant", "step", "poly", "cosine")
"""Schedule names: constant; ×0.1 at each quarter (the paper's CIFAR runs); warmup + polynomial
decay to zero (Lamb's recipe); cosine decay to zero."""

E_SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")
"""How E's α follows a run: constant; a straight line or a half cosine from the optimizer's α down
to 0 over the run's optimizer steps (explore early, settle late; the last step is E off)."""

SCALING_RULES: tuple[str, ...] = ("none", "linear", "sqrt")
"""How the base learning rate grows with the batch size (Goyal et al.: linear; Lamb: square root)."""


def _check_schedule_args(name: str, total_steps: int, warmup_steps: int, power: float) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power}")


def lr_factor(
    name: str, step: int, total_steps: int, *, warmup_steps: int = 0, power: float = 1.0
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Warmup is linear from ``1 / warmup_steps`` to 1 over the first ``warmup_steps`` steps and applies
    to every schedule; the decay then runs over the remaining steps.

    Args:
        name: one of :data:`SCHEDULES`.
        step: the optimizer step about to be taken, counted from 0.
        total_steps: the number of optimizer steps in the whole run.
        warmup_steps: steps of linear warmup.
        power: exponent of the polynomial decay (``"poly"`` only).
    """
    _check_schedule_args(name, total_steps, warmup_steps, power)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if name == "constant":
        return 1.0
    if name == "step":
        # Milestones at 1/4, 2/4, 3/4 of the run, as in the paper's CIFAR recipe.
        return 0.1 ** min(3, (4 * step) // total_steps)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if name == "poly":
        return (1.0 - progress) ** power
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(
    name: str,
    optimizer: Optimizer,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    power: float = 1.0,
) -> LambdaLR:
    """Return a :class:`LambdaLR` following :func:`lr_factor` for ``optimizer``.

    Raises:
        ValueError: for an unknown schedule name (the message lists the valid ones) or a bad number.
    """
    _check_schedule_args(name, total_steps, warmup_steps, power)

    def factor(step: int) -> float:
        return lr_factor(name, step, total_steps, warmup_steps=warmup_steps, power=power)

    return LambdaLR(optimizer, factor)


def build_e_schedule(name: str, optimizer: Optimizer, total_steps: int) -> EScheduler | None:
    """The :class:`~valleys.optim.EScheduler` of E's α that ``name`` (:data:`E_SCHEDULES`) asks
    for, stepped once per optimizer step like the lr's; None for ``"constant"``.

    Raises:
        ValueError: an unknown name (the message lists the valid ones), or an optimizer whose
            groups do not all apply E with a fixed α.
    """
    if name not in E_SCHEDULES:
        raise ValueError(
            f"unknown E schedule {name!r}; valid E schedules: {', '.join(E_SCHEDULES)}"
        )
    if name == "constant":
        return None
    ramp = LinearE if name == "linear" else CosineE
    return ramp(optimizer, "alpha", end=0.0, total_steps=max(1, total_steps))


def scale_lr(lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
    """Scale ``lr`` (tuned at ``base_batch_size``) to ``batch_size`` by ``rule``.

    Raises:
        ValueError: for an unknown rule (the message lists the valid ones) or a non-positive size.
    """
    if rule not in SCALING_RULES:
        raise ValueError(
            f"unknown lr scaling rule {rule!r}; valid rules: {', '.join(SCALING_RULES)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if base_batch_size < 1:
        raise ValueError(f"base_batch_size must be >= 1, got {base_batch_size}")
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    return lr
