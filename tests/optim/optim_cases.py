"""The one table of (optimizer, configuration) cases that every optimizer test draws from.

Each case builds an optimizer from parameters plus overrides (``foreach``, ``lr``,
``weight_decay``, ``maximize``, ``max_grad_norm``) and, where one exists, the independent
reference of ``optim_reference.py`` with the same hyperparameters. What a case supports is a field
of it (``has_foreach``, ``complex_params``, ...), so that tests select and skip by capability;
tests that have always run an optimizer at its constructor defaults (compiled steps, convergence,
distributed runs, ``state_dtype``) find those configurations in its fields too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
import torch
from optim_reference import E, RefALTO, RefEAdam, RefESGD
from torch import Tensor
from torch.optim import Optimizer

from valleys.optim import ALTO, ESGD, EAdam, EAdamW, Explore, Lamb, create_optimizer


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


Overrides = Mapping[str, Any]


@dataclass(frozen=True)
class Variant:
    """A configuration that one test runs: the optimizer at its constructor defaults plus
    ``overrides`` (what that test has always run, whatever the case's own configuration)."""

    id: str
    overrides: Overrides = field(default_factory=dict)
    grouped_decay: float | None = None
    """Pass a model's parameters as ``valleys.optim.param_groups(model, grouped_decay)``."""


@dataclass(frozen=True)
class Convergence:
    """How ``test_convergence.py`` runs a case on its classic functions: from the optimizer's
    defaults plus ``overrides``, with a learning rate per function, to within ``tolerance`` of the
    minimiser."""

    lrs: Mapping[str, float]
    tolerance: float
    overrides: Overrides = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[..., Optimizer]
    """``build(params, **kwargs)``: the optimizer with exactly these arguments (its class, or
    Explore around a base class: :func:`_explored`)."""
    config: Overrides
    """This case's arguments, to which :meth:`make` adds a test's overrides: foreach, fused (where
    ``fuses``), lr, weight_decay, maximize, max_grad_norm (where ``clips``)."""
    reference: Callable[[], Reference] | None
    lr: float
    """A learning rate at which a small least-squares problem converges."""
    explores: bool
    state_keys: frozenset[str]
    """The full-size state tensors per parameter."""
    clips: bool = True
    """Whether ``max_grad_norm`` is an argument: true of this package's optimizers, not of Explore,
    which leaves clipping to the user."""
    fuses: bool = False
    """Whether ``fused=True`` is an argument (the compiled path of ALTO, Lamb, EAdam(W), ESGD, and
    of Explore's transform)."""
    has_foreach: bool = True
    """Whether ``foreach=True`` is a path of its own (not when the base is torch's fused AdamW)."""
    complex_params: bool = True
    """Whether complex parameters are supported (not by torch's Adafactor or fused AdamW)."""
    bf16_params: bool = True
    """Whether bf16 parameters run on the CPU (not torch's fused AdamW in every torch version)."""
    state_dtype: Overrides | None = None
    """Where ``state_dtype`` is an argument: the overrides of the defaults that
    ``test_state_dtype.py`` runs."""
    compiled: tuple[Variant, ...] = ()
    """Configurations whose whole training step runs under ``torch.compile`` (with a tensor lr)."""
    convergence: Convergence | None = None
    distributed: tuple[Variant, ...] = ()
    """Configurations run under DDP and FSDP2 and compared with one process."""

    def make(self, params: Any, **overrides: Any) -> Optimizer:
        """The optimizer of this case, with ``overrides`` of its configuration."""
        return self.build(params, **{**self.config, **overrides})

    def make_default(self, params: Any, **overrides: Any) -> Optimizer:
        """The optimizer at its constructor defaults, with ``overrides``."""
        return self.build(params, **overrides)

    def __str__(self) -> str:
        return self.id


def _preset(name: str) -> Callable[..., Optimizer]:
    """The registry's preset ``name``, built by ``create_optimizer`` from parameters or groups."""
    return functools.partial(create_optimizer, name)


def _explored(base: type[Optimizer], **base_config: Any) -> Callable[..., Optimizer]:
    """Explore around ``base`` configured with ``base_config`` (e.g. torch's ``fused=True``).

    ``explore_alpha`` and ``explore_beta`` are Explore's α and β (its group keys' names: bases such
    as RMSprop own an ``alpha``); ``fused`` selects Explore's compiled transform; ``foreach`` goes
    to both unless the base is fused; every other argument is the base's.
    """

    def build(
        params: Any, foreach: bool | None = None, fused: bool | None = None, **kwargs: Any
    ) -> Optimizer:
        explore_kwargs = {
            key.removeprefix("explore_"): kwargs.pop(key)
            for key in ("explore_alpha", "explore_beta")
            if key in kwargs
        }
        if foreach is not None and "fused" not in base_config:
            kwargs["foreach"] = foreach
        optimizer = base(params, **kwargs, **base_config)
        return Explore(optimizer, foreach=foreach, fused=fused, **explore_kwargs)

    return build


CONVERGENCE_FUNCTIONS = ("rosenbrock", "beale", "quadratic")
"""The classic test functions of ``test_convergence.py``, which ``Convergence.lrs`` names."""

ALTO_CONFIG = dict(lr=0.02, betas=(0.99, 0.9, 0.99), alpha=-5.0, weight_decay=0.01)
LAMB_CODE = dict(eps=1e-6, eps2=0.0, eps3=0.0, trust_ratio="decayed", max_grad_norm=1.0)
"""The oracle's settings for LAMB's reference code (PAPER.md, "What 'Lamb' means"): clip to 1,
eps 1e-6, trust ratio |p|/|r| (1 where a norm is 0) only where the weight decay is not 0."""
PAPER_WALK: dict[str, dict[str, Any]] = {
    "lamb_paper": dict(betas=(0.0, 0.9, 0.999), alpha=0.0, bias_correction=False, **LAMB_CODE),
    "lamb_paper_bc": dict(betas=(0.0, 0.9, 0.999), alpha=0.0, **LAMB_CODE),
    "lamb_paper_bc_v99": dict(betas=(0.0, 0.9, 0.99), alpha=0.0, **LAMB_CODE),
    "alto_reference": dict(betas=(0.99, 0.9, 0.99), alpha=-5.0, **LAMB_CODE),
}
"""RefALTO's settings for each preset of the registry's walk from the paper's Lamb to its reference
ALTO, every number written out from PAPER.md (not read from ``valleys.optim.alto.PAPER_PRESETS``);
the learning rate and weight decay are the test's."""
ADAMW_CONFIG = dict(lr=0.01, weight_decay=0.01)
LARGE_BATCH_E = dict(explore_alpha=-5.0, explore_beta=0.99)
DISTRIBUTED_CONFIG = dict(lr=1e-2, max_grad_norm=0.05)

ALTO_STATE = frozenset({"exp_avg", "exp_avg_sq", "grad_ema"})
ADAM_STATE = frozenset({"exp_avg", "exp_avg_sq"})
ESGD_STATE = frozenset({"momentum_buffer", "grad_ema"})
E_STATE = frozenset({"grad_ema"})

CASES: list[Case] = [
    Case(
        "alto",
        ALTO,
        ALTO_CONFIG,
        lambda: RefALTO(**ALTO_CONFIG),
        lr=0.02,
        explores=True,
        state_keys=ALTO_STATE,
        fuses=True,
        state_dtype={"lr": 0.01},
        compiled=(
            Variant("alto_loop", {"foreach": False}),
            Variant("alto_foreach", {"foreach": True}),
            Variant("alto_fused", {"fused": True}),
        ),
        convergence=Convergence(
            {"rosenbrock": 0.03, "beale": 0.003, "quadratic": 0.01}, 1e-4, {"weight_decay": 0.0}
        ),
        distributed=(
            Variant("alto", {**DISTRIBUTED_CONFIG, "weight_decay": 1e-2}),
            Variant("alto_groups", DISTRIBUTED_CONFIG, grouped_decay=1e-2),
            # Sharded parameters with the trust ratio take the multi-tensor kernel whatever is asked.
            Variant("alto_fused", {**DISTRIBUTED_CONFIG, "fused": True}),
        ),
    ),
    Case(
        "alto_small_batch",
        ALTO,
        dict(lr=0.02, betas=(0.01, 0.9, 0.99), alpha=0.5, max_grad_norm=None),
        lambda: RefALTO(lr=0.02, betas=(0.01, 0.9, 0.99), alpha=0.5, max_grad_norm=None),
        lr=0.02,
        explores=True,
        state_keys=ALTO_STATE,
        fuses=True,
    ),
    Case(
        "alto_vanilla_no_trust",
        ALTO,
        dict(**ALTO_CONFIG, bias_correction=False, trust_ratio=False),
        lambda: RefALTO(**ALTO_CONFIG, bias_correction=False, trust_ratio=False),
        lr=0.005,
        explores=True,
        state_keys=ALTO_STATE,
        fuses=True,
    ),
    Case(
        "lamb",
        Lamb,
        dict(lr=0.02, betas=(0.9, 0.99), weight_decay=0.01),
        lambda: RefALTO(lr=0.02, betas=(0.0, 0.9, 0.99), alpha=0.0, weight_decay=0.01),
        lr=0.02,
        explores=False,
        state_keys=ADAM_STATE,
        fuses=True,
        state_dtype={"lr": 0.01},
        compiled=(Variant("lamb"),),
        convergence=Convergence(
            {"rosenbrock": 0.1, "beale": 0.003, "quadratic": 0.003}, 1e-4, {"weight_decay": 0.0}
        ),
        distributed=(Variant("lamb", DISTRIBUTED_CONFIG),),
    ),
    # The walk from the paper's Lamb to its reference ALTO, by registry name.
    Case(
        "lamb_paper",
        _preset("lamb_paper"),
        dict(lr=0.02, weight_decay=0.01),
        lambda: RefALTO(lr=0.02, weight_decay=0.01, **PAPER_WALK["lamb_paper"]),
        lr=0.02,
        explores=False,
        state_keys=ADAM_STATE,
        fuses=True,
        state_dtype={"lr": 0.01},
    ),
    Case(
        # Plain parameters without weight decay: no trust ratio at all, Adam at the raw lr.
        "lamb_paper_bc_no_decay",
        _preset("lamb_paper_bc"),
        dict(lr=0.005, weight_decay=0.0),
        lambda: RefALTO(lr=0.005, weight_decay=0.0, **PAPER_WALK["lamb_paper_bc"]),
        lr=0.02,
        explores=False,
        state_keys=ADAM_STATE,
        fuses=True,
    ),
    Case(
        "lamb_paper_bc_v99",
        _preset("lamb_paper_bc_v99"),
        dict(lr=0.02, weight_decay=0.01),
        lambda: RefALTO(lr=0.02, weight_decay=0.01, **PAPER_WALK["lamb_paper_bc_v99"]),
        lr=0.02,
        explores=False,
        state_keys=ADAM_STATE,
        fuses=True,
    ),
    Case(
        "alto_reference",
        _preset("alto_reference"),
        dict(lr=0.02, weight_decay=0.01),
        lambda: RefALTO(lr=0.02, weight_decay=0.01, **PAPER_WALK["alto_reference"]),
        lr=0.02,
        explores=True,
        state_keys=ALTO_STATE,
        fuses=True,
        state_dtype={"lr": 0.01},
        compiled=(Variant("alto_reference_fused", {"fused": True}),),
        distributed=(Variant("alto_reference_groups", DISTRIBUTED_CONFIG, grouped_decay=1e-2),),
    ),
    Case(
        "eadam",
        EAdam,
        dict(lr=0.01, betas=(0.99, 0.9, 0.999), alpha=-5.0, weight_decay=0.01),
        lambda: RefEAdam(lr=0.01, betas=(0.99, 0.9, 0.999), alpha=-5.0, weight_decay=0.01),
        lr=0.01,
        explores=True,
        state_keys=ALTO_STATE,
        fuses=True,
        convergence=Convergence(dict.fromkeys(CONVERGENCE_FUNCTIONS, 0.1), 1e-8),
    ),
    Case(
        "eadamw",
        EAdamW,
        dict(lr=0.01, betas=(0.9, 0.9, 0.999), alpha=-2.0, weight_decay=0.05),
        lambda: RefEAdam(
            lr=0.01, betas=(0.9, 0.9, 0.999), alpha=-2.0, weight_decay=0.05, decoupled=True
        ),
        lr=0.01,
        explores=True,
        state_keys=ALTO_STATE,
        fuses=True,
        state_dtype={"lr": 0.01},
        compiled=(Variant("eadamw_fused", {"fused": True}),),
        convergence=Convergence(
            dict.fromkeys(CONVERGENCE_FUNCTIONS, 0.1), 1e-8, {"weight_decay": 0.0}
        ),
        distributed=(Variant("eadamw", DISTRIBUTED_CONFIG),),
    ),
    Case(
        "esgd",
        ESGD,
        dict(lr=0.05, momentum=0.9, weight_decay=1e-3, alpha=-5.0, beta=0.99),
        lambda: RefESGD(lr=0.05, momentum=0.9, alpha=-5.0, beta=0.99, weight_decay=1e-3),
        lr=0.02,
        explores=True,
        state_keys=ESGD_STATE,
        fuses=True,
        state_dtype={"lr": 0.01, "momentum": 0.9},
        compiled=(Variant("esgd"), Variant("esgd_fused", {"momentum": 0.9, "fused": True})),
        convergence=Convergence(
            dict.fromkeys(CONVERGENCE_FUNCTIONS, 1e-3), 2e-3, {"momentum": 0.9}
        ),
        distributed=(Variant("esgd", {**DISTRIBUTED_CONFIG, "momentum": 0.9}),),
    ),
    Case(
        "esgd_nesterov",
        ESGD,
        dict(lr=0.05, momentum=0.5, nesterov=True, alpha=0.5, beta=0.01),
        lambda: RefESGD(lr=0.05, momentum=0.5, nesterov=True, alpha=0.5, beta=0.01),
        lr=0.02,
        explores=True,
        state_keys=ESGD_STATE,
        fuses=True,
    ),
    Case(
        "esgd_dampening_no_momentum_buffer",
        ESGD,
        dict(lr=0.05, momentum=0.0, dampening=0.1, alpha=-5.0, beta=0.99),
        lambda: RefESGD(lr=0.05, momentum=0.0, dampening=0.1, alpha=-5.0, beta=0.99),
        lr=0.02,
        explores=True,
        state_keys=frozenset({"grad_ema"}),
        fuses=True,
    ),
    Case(
        # Plain SGD: no state at all.
        "esgd_without_e_or_momentum",
        ESGD,
        dict(lr=0.05, alpha=0.0),
        lambda: RefESGD(lr=0.05, momentum=0.0, alpha=0.0, beta=0.99),
        lr=0.02,
        explores=False,
        state_keys=frozenset(),
        fuses=True,
    ),
    Case(
        # torch SGD adds its L2 term after E (ESGD before), so the oracle drops weight decay.
        "explore_sgd",
        _explored(torch.optim.SGD),
        dict(**LARGE_BATCH_E, lr=0.05, momentum=0.9),
        lambda: RefESGD(lr=0.05, momentum=0.9, alpha=-5.0, beta=0.99),
        lr=0.02,
        explores=True,
        state_keys=E_STATE,
        clips=False,
        fuses=True,
    ),
    Case(
        "explore_adamw",
        _explored(torch.optim.AdamW),
        dict(**LARGE_BATCH_E, **ADAMW_CONFIG),
        lambda: RefEAdam(
            lr=0.01, betas=(0.99, 0.9, 0.999), alpha=-5.0, weight_decay=0.01, decoupled=True
        ),
        lr=0.01,
        explores=True,
        state_keys=E_STATE,
        clips=False,
        fuses=True,
        compiled=(Variant("explore_adamw"),),
        convergence=Convergence(
            dict.fromkeys(CONVERGENCE_FUNCTIONS, 0.1), 1e-8, {"weight_decay": 0.0}
        ),
        distributed=(Variant("explore_adamw", {"lr": 1e-2}),),
    ),
    Case(
        "explore_adamw_fused",
        _explored(torch.optim.AdamW, fused=True),
        dict(**LARGE_BATCH_E, **ADAMW_CONFIG),
        lambda: RefEAdam(
            lr=0.01, betas=(0.99, 0.9, 0.999), alpha=-5.0, weight_decay=0.01, decoupled=True
        ),
        lr=0.01,
        explores=True,
        state_keys=E_STATE,
        clips=False,
        fuses=True,
        has_foreach=False,
        complex_params=False,
        bf16_params=False,
    ),
    Case(
        "explore_rmsprop",
        _explored(torch.optim.RMSprop),
        dict(explore_alpha=0.5, explore_beta=0.01, lr=0.005),
        lambda: RefWrapped(lambda ps: torch.optim.RMSprop(ps, lr=0.005), 0.5, 0.01),
        lr=0.005,
        explores=True,
        state_keys=E_STATE,
        clips=False,
    ),
    Case(
        "explore_adagrad",
        _explored(torch.optim.Adagrad),
        dict(**LARGE_BATCH_E, lr=0.1),
        lambda: RefWrapped(lambda ps: torch.optim.Adagrad(ps, lr=0.1), -5.0, 0.99),
        lr=0.1,
        explores=True,
        state_keys=E_STATE,
        clips=False,
    ),
]

if hasattr(torch.optim, "Adafactor"):
    CASES.append(
        Case(
            "explore_adafactor",
            _explored(torch.optim.Adafactor),
            dict(**LARGE_BATCH_E, lr=0.01),
            lambda: RefWrapped(lambda ps: torch.optim.Adafactor(ps, lr=0.01), -5.0, 0.99),
            lr=0.01,
            explores=True,
            state_keys=E_STATE,
            clips=False,
            complex_params=False,
        )
    )

CASE_IDS = [c.id for c in CASES]


def case_params(where: Callable[[Case], bool]) -> list[Any]:
    """The cases that ``where`` selects, as pytest parameters named by their ids."""
    return [pytest.param(case, id=case.id) for case in CASES if where(case)]


def variant_params(variants: Callable[[Case], Iterable[Variant]]) -> list[Any]:
    """``(case, variant)`` for every variant that ``variants`` lists of a case, as pytest
    parameters named by the variants' ids."""
    return [pytest.param(case, v, id=v.id) for case in CASES for v in variants(case)]
