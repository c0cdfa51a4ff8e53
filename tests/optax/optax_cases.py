"""One table of (valleys.optax chain, torch optimizer) pairs that must take the same steps.

Each case builds both sides from the same hyperparameters; masked cases give torch the parameter
groups the masks stand for (no weight decay and no trust ratio for the 1-D bias).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optax
import torch

from valleys import optax as vx
from valleys.optim import ALTO, ESGD, EAdam, EAdamW, Explore, Lamb

SHAPES = {"b": (3,), "k": (2, 3, 2), "w": (5, 3)}
"""Leaves in the order jax.tree.leaves gives a dict's (sorted keys); torch gets the same order."""

MASK = {"b": False, "k": True, "w": True}
# optax evaluates a schedule in float32 (its step count is int32) even with x64, where an ulp
# already shows at 1e-8: values exact in binary keep the float64 comparison exact.
SCHEDULE = optax.linear_schedule(1 / 16, 1 / 32, transition_steps=4)


def groups(params: list[torch.Tensor], masked: bool, **no_decay: Any) -> list[dict[str, Any]]:
    """torch's parameter groups for ``MASK`` (the bias alone, with ``no_decay``'s keys)."""
    if not masked:
        return [{"params": params}]
    return [{"params": params[1:]}, {"params": params[:1], **no_decay}]


@dataclass(frozen=True)
class Case:
    name: str
    jax: Callable[[optax.ScalarOrSchedule], optax.GradientTransformation]
    torch: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    learning_rate: optax.ScalarOrSchedule = 5e-2


_NO_DECAY = {"weight_decay": 0.0, "trust_ratio": False}

CASES = [
    Case("alto_defaults", lambda lr: vx.alto(lr), lambda ps: ALTO(ps, lr=5e-2, foreach=False)),
    Case(
        "alto_masked_schedule",
        lambda lr: vx.alto(lr, weight_decay=1e-2, weight_decay_mask=MASK, trust_ratio_mask=MASK),
        lambda ps: ALTO(groups(ps, True, **_NO_DECAY), lr=5e-2, weight_decay=1e-2, foreach=False),
        SCHEDULE,
    ),
    Case(
        "alto_vanilla_exploit_no_clip",
        lambda lr: vx.alto(lr, (0.01, 0.9, 0.999), 0.5, bias_correction=False, max_grad_norm=None),
        lambda ps: ALTO(
            ps,
            5e-2,
            (0.01, 0.9, 0.999),
            0.5,
            bias_correction=False,
            max_grad_norm=None,
            foreach=False,
        ),
    ),
    Case("lamb_defaults", lambda lr: vx.lamb(lr), lambda ps: Lamb(ps, lr=5e-2, foreach=False)),
    Case(
        "lamb_masked_clip_2",
        lambda lr: vx.lamb(lr, max_grad_norm=2.0, weight_decay_mask=MASK, trust_ratio_mask=MASK),
        lambda ps: Lamb(groups(ps, True, **_NO_DECAY), lr=5e-2, max_grad_norm=2.0, foreach=False),
    ),
    Case(
        "eadam_l2_clip",
        lambda lr: vx.eadam(lr, weight_decay=1e-2, max_grad_norm=1.0),
        lambda ps: EAdam(ps, lr=5e-2, weight_decay=1e-2, max_grad_norm=1.0, foreach=False),
    ),
    Case("eadamw_defaults", lambda lr: vx.eadamw(lr), lambda ps: EAdamW(ps, 5e-2, foreach=False)),
    Case(
        "eadamw_masked_schedule",
        lambda lr: vx.eadamw(lr, weight_decay=0.1, weight_decay_mask=MASK),
        lambda ps: EAdamW(
            groups(ps, True, weight_decay=0.0), lr=5e-2, weight_decay=0.1, foreach=False
        ),
        SCHEDULE,
    ),
    Case("esgd_defaults", lambda lr: vx.esgd(lr), lambda ps: ESGD(ps, lr=5e-2, foreach=False)),
    Case(
        "esgd_nesterov_l2_clip",
        lambda lr: vx.esgd(lr, 0.9, 0.5, 0.01, 1e-3, True, max_grad_norm=1.0),
        lambda ps: ESGD(
            ps, 5e-2, 0.9, 0.5, 0.01, 0.0, 1e-3, True, max_grad_norm=1.0, foreach=False
        ),
    ),
    Case(
        "esgd_momentum_masked",
        lambda lr: vx.esgd(lr, momentum=0.9, weight_decay=1e-2, weight_decay_mask=MASK),
        lambda ps: ESGD(
            groups(ps, True, weight_decay=0.0),
            lr=5e-2,
            momentum=0.9,
            weight_decay=1e-2,
            foreach=False,
        ),
    ),
    Case(
        "e_transform_then_optax_adam",
        lambda lr: optax.chain(vx.e_transform(-5.0, 0.99), optax.adam(lr)),
        lambda ps: Explore(torch.optim.Adam(ps, lr=5e-2, foreach=False), alpha=-5.0, beta=0.99),
    ),
]
