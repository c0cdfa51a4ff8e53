"""The table of (optimizer, configuration) cases that every generic optimizer test runs over.

Each case builds an optimizer from parameters plus overrides (``foreach``, ``lr``,
``weight_decay``, ``maximize``, ``max_grad_norm``) and, where one exists, the independent
reference of ``optim_reference.py`` with the same hyperparameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from optim_reference import E, RefALTO, RefEAdam, RefESGD
from torch import Tensor
from torch.optim import Optimizer

from valleys.optim import ALTO, ESGD, EAdam, EAdamW, Explore, Lamb


class Reference(Protocol):
    def step(self, params: list[Tensor], grads: list[Tensor]) -> None: ...


@dataclass
class RefWrapped:
    """Explore's oracle: the base torch optimizer stepping on the two-buffer E gradient."""

    base: Callable[[list[Tensor]], Optimizer]
    alpha: float
    beta: float

    def __post_init__(self) -> None:
        self.e = E(self.alpha, self.beta)
        self.opt: Optimizer | None = None

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        if self.opt is None:
            self.opt = self.base(params)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            p.grad = self.e(i, g)
        self.opt.step()


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[..., Optimizer]
    """``make(params, **overrides)``; overrides: foreach, fused (where ``fuses``), lr, weight_decay,
    maximize, max_grad_norm."""
    reference: Callable[[], Reference] | None
    lr: float
    """A learning rate at which a small least-squares problem converges."""
    explores: bool
    state_keys: frozenset[str]
    """The full-size state tensors per parameter."""
    clips: bool = True
    """Whether ``max_grad_norm`` is an argument (Explore leaves clipping to the user)."""
    fuses: bool = False
    """Whether ``fused=True`` is an argument (the compiled path of ALTO, Lamb, EAdam(W), ESGD, and
    of Explore's transform)."""

    def __str__(self) -> str:
        return self.id


def _native(cls: type[Optimizer], **config: Any) -> Callable[..., Optimizer]:
    def make(params: Any, **overrides: Any) -> Optimizer:
        return cls(params, **{**config, **overrides})

    return make


def _explore(
    base: type[Optimizer], alpha: float, beta: float, **config: Any
) -> Callable[..., Optimizer]:
    def make(
        params: Any, foreach: bool | None = None, fused: bool | None = None, **overrides: Any
    ) -> Optimizer:
        # ``fused`` selects Explore's compiled transform; the base keeps its own configuration.
        base_kwargs = {**config, **overrides}
        if foreach is not None and "fused" not in base_kwargs:
            base_kwargs["foreach"] = foreach
        return Explore(
            base(params, **base_kwargs), alpha=alpha, beta=beta, foreach=foreach, fused=fused
        )

    return make


ALTO_CONFIG = dict(lr=0.02, betas=(0.99, 0.9, 0.99), alpha=-5.0, weight_decay=0.01)
SGD_CONFIG = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
ADAMW_CONFIG = dict(lr=0.01, weight_decay=0.01)

ALTO_STATE = frozenset({"exp_avg", "exp_avg_sq", "grad_ema"})
ADAM_STATE = frozenset({"exp_avg", "exp_avg_sq"})

CASES: list[Case] = [
    Case(
        "alto",
        _native(ALTO, **ALTO_CONFIG),
        lambda: RefALTO(**ALTO_CONFIG),
        lr=0.02,
        explores=True,
        state_keys=ALTO_STATE,
        fuses=True,
    ),
    Case(
        "alto_small_batch",
        _native(ALTO, lr=0.02, betas=(0.01, 0.9, 0.99), alpha=0.5, max_grad_norm=None),
        lambda: RefALTO(lr=0.02, betas=(0.01, 0.9, 0.99), alpha=0.5, max_grad_norm=None),
        lr=0.02,
        explores=True,
        state_keys=ALTO_STATE,
        fuses=True,
    ),
    Case(
        "alto_vanilla_no_trust",
        _native(ALTO, **ALTO_CONFIG, bias_correction=False, trust_ratio=False),
        lambda: RefALTO(**ALTO_CONFIG, bias_correction=False, trust_ratio=False),
        lr=0.005,
        explores=True,
        state_keys=ALTO_STATE,
        fuses=True,
    ),
    Case(
        "lamb",
        _native(Lamb, lr=0.02, betas=(0.9, 0.99), weight_decay=0.01),
        lambda: RefALTO(lr=0.02, betas=(0.0, 0.9, 0.99), alpha=0.0, weight_decay=0.01),
        lr=0.02,
        explores=False,
        state_keys=ADAM_STATE,
        fuses=True,
    ),
    Case(
        "eadam",
        _native(EAdam, lr=0.01, betas=(0.99, 0.9, 0.999), alpha=-5.0, weight_decay=0.01),
        lambda: RefEAdam(lr=0.01, betas=(0.99, 0.9, 0.999), alpha=-5.0, weight_decay=0.01),
        lr=0.01,
        explores=True,
        state_keys=ALTO_STATE,
        fuses=True,
    ),
    Case(
        "eadamw",
        _native(EAdamW, lr=0.01, betas=(0.9, 0.9, 0.999), alpha=-2.0, weight_decay=0.05),
        lambda: RefEAdam(
            lr=0.01, betas=(0.9, 0.9, 0.999), alpha=-2.0, weight_decay=0.05, decoupled=True
        ),
        lr=0.01,
        explores=True,
        state_keys=ALTO_STATE,
        fuses=True,
    ),
    Case(
        "esgd",
        _native(ESGD, **SGD_CONFIG, alpha=-5.0, beta=0.99),
        lambda: RefESGD(lr=0.05, momentum=0.9, alpha=-5.0, beta=0.99, weight_decay=1e-3),
        lr=0.02,
        explores=True,
        state_keys=frozenset({"momentum_buffer", "grad_ema"}),
        fuses=True,
    ),
    Case(
        "esgd_nesterov",
        _native(ESGD, lr=0.05, momentum=0.5, nesterov=True, alpha=0.5, beta=0.01),
        lambda: RefESGD(lr=0.05, momentum=0.5, nesterov=True, alpha=0.5, beta=0.01),
        lr=0.02,
        explores=True,
        state_keys=frozenset({"momentum_buffer", "grad_ema"}),
        fuses=True,
    ),
    Case(
        "esgd_dampening_no_momentum_buffer",
        _native(ESGD, lr=0.05, momentum=0.0, dampening=0.1, alpha=-5.0, beta=0.99),
        lambda: RefESGD(lr=0.05, momentum=0.0, dampening=0.1, alpha=-5.0, beta=0.99),
        lr=0.02,
        explores=True,
        state_keys=frozenset({"grad_ema"}),
        fuses=True,
    ),
    Case(
        # Plain SGD: no state at all.
        "esgd_without_e_or_momentum",
        _native(ESGD, lr=0.05, alpha=0.0),
        lambda: RefESGD(lr=0.05, momentum=0.0, alpha=0.0, beta=0.99),
        lr=0.02,
        explores=False,
        state_keys=frozenset(),
        fuses=True,
    ),
    Case(
        # torch SGD adds its L2 term after E (ESGD before), so the oracle drops weight decay.
        "explore_sgd",
        _explore(torch.optim.SGD, -5.0, 0.99, lr=0.05, momentum=0.9),
        lambda: RefESGD(lr=0.05, momentum=0.9, alpha=-5.0, beta=0.99),
        lr=0.02,
        explores=True,
        state_keys=frozenset({"grad_ema"}),
        clips=False,
        fuses=True,
    ),
    Case(
        "explore_adamw",
        _explore(torch.optim.AdamW, -5.0, 0.99, **ADAMW_CONFIG),
        lambda: RefEAdam(
            lr=0.01, betas=(0.99, 0.9, 0.999), alpha=-5.0, weight_decay=0.01, decoupled=True
        ),
        lr=0.01,
        explores=True,
        state_keys=frozenset({"grad_ema"}),
        clips=False,
        fuses=True,
    ),
    Case(
        "explore_adamw_fused",
        _explore(torch.optim.AdamW, -5.0, 0.99, **ADAMW_CONFIG, fused=True),
        lambda: RefEAdam(
            lr=0.01, betas=(0.99, 0.9, 0.999), alpha=-5.0, weight_decay=0.01, decoupled=True
        ),
        lr=0.01,
        explores=True,
        state_keys=frozenset({"grad_ema"}),
        clips=False,
        fuses=True,
    ),
    Case(
        "explore_rmsprop",
        _explore(torch.optim.RMSprop, 0.5, 0.01, lr=0.005),
        lambda: RefWrapped(lambda ps: torch.optim.RMSprop(ps, lr=0.005), 0.5, 0.01),
        lr=0.005,
        explores=True,
        state_keys=frozenset({"grad_ema"}),
        clips=False,
    ),
    Case(
        "explore_adagrad",
        _explore(torch.optim.Adagrad, -5.0, 0.99, lr=0.1),
        lambda: RefWrapped(lambda ps: torch.optim.Adagrad(ps, lr=0.1), -5.0, 0.99),
        lr=0.1,
        explores=True,
        state_keys=frozenset({"grad_ema"}),
        clips=False,
    ),
]

if hasattr(torch.optim, "Adafactor"):
    CASES.append(
        Case(
            "explore_adafactor",
            _explore(torch.optim.Adafactor, -5.0, 0.99, lr=0.01),
            lambda: RefWrapped(lambda ps: torch.optim.Adafactor(ps, lr=0.01), -5.0, 0.99),
            lr=0.01,
            explores=True,
            state_keys=frozenset({"grad_ema"}),
            clips=False,
        )
    )

CASE_IDS = [c.id for c in CASES]
