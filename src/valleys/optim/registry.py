"""Optimizers by name, with what the harness needs to know about them, and ``create_optimizer``.

Names: ``alto``, ``alto_vanilla``, ``lamb``, ``eadam``, ``eadamw``, ``esgd``; every torch optimizer
that steps on gradients alone (``sgd``, ``adam``, ``adamw``, ``adagrad``, ``rmsprop``, ...); and
``e_<torch name>`` (``e_adamw``, ``e_sgd``, ...) for that optimizer wrapped in :class:`Explore`;
and today's peers (:func:`_peer_entries`: ``muon``, ``adan``, ``mars``, ``lion``, ``soap``,
``adopt``, ``sf_adamw``), whose packages are imported only when one is built.
The walk from the Lamb of the paper's tables to its reference ALTO, one change per step
(:func:`_paper_entries`): ``lamb_paper``, ``lamb_paper_bc``, ``lamb_paper_bc_v99``,
``alto_reference``.

Everything outside this module asks an :class:`OptimizerInfo` instead of branching on names or
classes: a new optimizer is one entry in :func:`_build_registry`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn
from torch.optim import Optimizer

from ._validation import e_stable
from .alto import ALTO, PAPER_PRESETS, Lamb
from .eadam import EAdam, EAdamW
from .esgd import ESGD
from .explore import Explore
from .groups import param_groups
from .hybrid import MuonAdamW, muon_param_groups
from .peers import PeerClass

__all__ = [
    "LARGE_BATCH",
    "OptimizerInfo",
    "available_optimizers",
    "create_optimizer",
    "explore_defaults",
    "optimizer_info",
]

LARGE_BATCH = 1024
"""The paper's boundary between its small- and large-batch defaults of α and β1."""

_TORCH_OPTIMIZERS = (
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
)
"""torch.optim classes usable by name (LBFGS re-evaluates closures; SparseAdam is sparse-only)."""

_SGD_DEFAULTS: dict[str, Any] = {"momentum": 0.9}

Family = Literal["sgd", "adaptive", "layerwise", "sign"]
"""The kind of update, which decides the lr scale: plain gradient steps (SGD, ESGD), per-coordinate
normalised steps (Adam and kin), per-tensor trust-ratio steps (LAMB, ALTO), or sign steps of size
lr in every coordinate (Lion), which need a 3–10× smaller lr than Adam's."""

EStyle = Literal["betas", "beta", "explore"]
"""How E's α and β1 reach the constructor: ``alpha`` and ``betas[0]`` (ALTO, EAdam), ``alpha`` and
``beta`` (ESGD), or the :class:`Explore` wrapper's ``alpha`` and ``beta`` around ``factory``."""


@dataclass(frozen=True)
class OptimizerInfo:
    """What the registry knows about one optimizer name.

    The harness speaks of E's parameters as ``alpha`` and ``beta1`` only; :meth:`e_kwargs` turns
    them into this optimizer's constructor arguments.
    """

    name: str
    description: str
    factory: Callable[..., Optimizer]
    """The class (for ``e_style == "explore"``: the class :class:`Explore` wraps)."""
    family: Family
    base: str
    """The registry name of the same optimizer without E (its own name when it does not explore)."""
    e_style: EStyle | None = None
    """How α and β1 are passed; None when it does not explore."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Keyword defaults the factory gets on top of its own (overridable)."""
    modes: bool = False
    """Whether the optimizer has ``train()`` and ``eval()`` modes that move the parameters between
    the point gradients are taken at and the point to evaluate (Schedule-Free): steps need train
    mode; evaluation, flatness and checkpoints need eval mode. Built in train mode."""
    group_params: Callable[[nn.Module, float], list[dict[str, Any]]] = param_groups
    """How a model's parameters are grouped, given the decay group's weight decay."""

    @property
    def explores(self) -> bool:
        """Whether it applies E (has α and β1)."""
        return self.e_style is not None

    @property
    def layerwise(self) -> bool:
        """Whether it scales updates by a per-tensor trust ratio."""
        return self.family == "layerwise"

    @property
    def clips(self) -> bool:
        """Whether it clips the global gradient norm unless told otherwise."""
        return self.default_clip is not None

    @property
    def default_clip(self) -> float | None:
        """The global gradient-norm clip it applies unless told otherwise; None: none. A default
        of 0 is some packages' way of saying none (pytorch_optimizer's Adan)."""
        return self.default("max_grad_norm") or None

    def default(self, arg: str, fallback: Any = None) -> Any:
        """The value ``arg`` takes when not given: the entry's default, else the constructor's."""
        if arg in self.defaults:
            return self.defaults[arg]
        parameter = inspect.signature(self.factory).parameters.get(arg)
        if parameter is None or parameter.default is inspect.Parameter.empty:
            return fallback
        return parameter.default

    def accepts(self, arg: str) -> bool:
        """Whether the constructor takes ``arg`` (E's ``alpha`` and ``beta1`` when it explores)."""
        if arg in ("alpha", "beta1"):
            return self.explores
        return arg in inspect.signature(self.factory).parameters

    def e_kwargs(self, alpha: float | None = None, beta1: float | None = None) -> dict[str, Any]:
        """Constructor arguments setting E's α and β1 (those given), this optimizer's way.

        β1 through ``betas`` keeps the other moments at their defaults. Empty when nothing is
        given; ``ValueError`` when something is given to an optimizer that does not explore.
        """
        if alpha is None and beta1 is None:
            return {}
        if not self.explores:
            raise ValueError(f"{self.name} does not apply E: it takes no alpha or beta1")
        kwargs: dict[str, Any] = {} if alpha is None else {"alpha": float(alpha)}
        if beta1 is not None:
            if self.e_style == "betas":
                kwargs["betas"] = (float(beta1), *tuple(self.default("betas"))[1:])
            else:
                kwargs["beta"] = float(beta1)
        return kwargs

    def stable(self, alpha: float, beta1: float) -> bool:
        """Whether (α, β1) lies in E's stable region |α| < 1/(1 − β1), 0 ≤ β1 < 1."""
        return e_stable(alpha, beta1)


def explore_defaults(batch_size: int | None) -> dict[str, float]:
    """The paper's α and β1 for a batch size: (−5, 0.99) from 1024 up, (0.5, 0.01) below.

    None means "large batch", the defaults of the optimizer classes.
    """
    if batch_size is not None and batch_size < LARGE_BATCH:
        return {"alpha": 0.5, "beta1": 0.01}
    return {"alpha": -5.0, "beta1": 0.99}


def _build_registry() -> dict[str, OptimizerInfo]:
    infos = [
        OptimizerInfo(
            "alto",
            "ALTO: E + LAMB with bias correction (Algorithm 2)",
            ALTO,
            "layerwise",
            "lamb",
            "betas",
        ),
        OptimizerInfo(
            "alto_vanilla",
            "ALTO without bias correction (Algorithm 1)",
            ALTO,
            "layerwise",
            "lamb",
            "betas",
            {"bias_correction": False},
        ),
        OptimizerInfo("lamb", "LAMB: ALTO's kernel with α = 0", Lamb, "layerwise", "lamb"),
        OptimizerInfo(
            "eadam", "Adam on E's gradient (Algorithm 4)", EAdam, "adaptive", "adam", "betas"
        ),
        OptimizerInfo("eadamw", "AdamW on E's gradient", EAdamW, "adaptive", "adamw", "betas"),
        OptimizerInfo(
            "esgd",
            "SGD with momentum 0.9 on E's gradient (Algorithm 3)",
            ESGD,
            "sgd",
            "sgd",
            "beta",
            dict(_SGD_DEFAULTS),
        ),
    ]
    for cls_name in _TORCH_OPTIMIZERS:
        cls = getattr(torch.optim, cls_name, None)
        if cls is None:
            continue
        name = cls_name.lower()
        family: Family = "sgd" if cls is torch.optim.SGD else "adaptive"
        extra = _SGD_DEFAULTS if family == "sgd" else {}
        label = f"torch.optim.{cls_name}" + (" (momentum 0.9)" if extra else "")
        infos.append(OptimizerInfo(name, label, cls, family, name, None, dict(extra)))
        infos.append(
            OptimizerInfo(
                f"e_{name}",
                f"{label} wrapped in Explore (E)",
                cls,
                family,
                name,
                "explore",
                dict(extra),
            )
        )
    infos.extend(_paper_entries())
    infos.extend(_peer_entries())
    return {info.name: info for info in infos}


def _paper_entries() -> list[OptimizerInfo]:
    """The walk from the paper's Lamb to its reference ALTO (``lamb_paper``, ``lamb_paper_bc``,
    ``lamb_paper_bc_v99``, ``alto_reference``), one change per step; each update is written out
    in :data:`valleys.optim.alto.PAPER_PRESETS` and in its description."""
    return [
        OptimizerInfo(
            preset.name,
            preset.description,
            preset.optimizer,
            "layerwise",
            preset.base,
            "betas" if preset.base != preset.name else None,
            dict(preset.settings),
        )
        for preset in PAPER_PRESETS
    ]


def _peer_entries() -> list[OptimizerInfo]:
    """Today's peers (PAPER.md, last section), and ``e_<peer>`` where E has a gradient to change.

    Every peer decays weights decoupled from its update (AdamW's way): λ = 0.01, AdamW's default,
    on AdamW's lr scale; λ = 0.1 for Lion, whose lr is ~10× smaller, so that lr·λ per step stays.
    MARS runs on every tensor (``optimize_1d``): its own AdamW for 1-D tensors would have an lr
    and a weight decay of its own that neither the lr grid nor the no-decay group reach.
    Adan and MARS already step on gradient differences, E's ingredient, so E is not stacked on
    them; Schedule-Free is not wrapped either (:class:`Explore` has no train/eval modes).
    """
    explored = _explorable_peers()
    wrapped = [
        replace(
            info,
            name=f"e_{info.name}",
            description=f"{info.description}, wrapped in Explore (E)",
            e_style="explore",
        )
        for info in explored
    ]
    return [*explored, *_other_peers(), *wrapped]


_DECOUPLED: dict[str, Any] = {"weight_decay": 0.01, "weight_decouple": True}
"""pytorch-optimizer's switch to AdamW's decoupled weight decay, with AdamW's λ."""


def _explorable_peers() -> list[OptimizerInfo]:
    """The peers that also come as ``e_<peer>``."""
    return [
        OptimizerInfo(
            "muon",
            "Muon on the hidden matrices, AdamW on the rest (torch.optim.Muon, match_rms_adamw)",
            MuonAdamW,
            "adaptive",
            "muon",
            defaults={"weight_decay": 0.01},
            group_params=muon_param_groups,
        ),
        OptimizerInfo(
            "lion",
            "Lion: sign of an interpolated momentum (pytorch-optimizer)",
            PeerClass("pytorch-optimizer", "pytorch_optimizer", "Lion"),
            "sign",
            "lion",
            defaults={"weight_decay": 0.1},
        ),
        OptimizerInfo(
            "soap",
            "SOAP: Adam in Shampoo's eigenbasis (pytorch-optimizer)",
            PeerClass("pytorch-optimizer", "pytorch_optimizer", "SOAP"),
            "adaptive",
            "soap",
            defaults={"weight_decay": 0.01},
        ),
        OptimizerInfo(
            "adopt",
            "ADOPT: Adam normalising by the previous second moment (pytorch-optimizer)",
            PeerClass("pytorch-optimizer", "pytorch_optimizer", "ADOPT"),
            "adaptive",
            "adopt",
            defaults=dict(_DECOUPLED),
        ),
    ]


def _other_peers() -> list[OptimizerInfo]:
    """The peers E is not stacked on (see :func:`_peer_entries`)."""
    return [
        OptimizerInfo(
            "adan",
            "Adan: Nesterov momentum on an EMA of gradient differences (pytorch-optimizer)",
            PeerClass("pytorch-optimizer", "pytorch_optimizer", "Adan"),
            "adaptive",
            "adan",
            defaults=dict(_DECOUPLED),
        ),
        OptimizerInfo(
            "mars",
            "MARS-AdamW: AdamW on g + γβ/(1−β)(g − g_prev) (pytorch-optimizer)",
            PeerClass("pytorch-optimizer", "pytorch_optimizer", "MARS"),
            "adaptive",
            "mars",
            defaults={"weight_decay": 0.01, "optimize_1d": True},
        ),
        OptimizerInfo(
            "sf_adamw",
            "Schedule-Free AdamW (schedulefree; train/eval modes)",
            PeerClass("schedulefree", "schedulefree", "AdamWScheduleFree"),
            "adaptive",
            "sf_adamw",
            defaults={"weight_decay": 0.01},
            modes=True,
        ),
    ]


_REGISTRY = _build_registry()


def available_optimizers() -> list[str]:
    """All registered names, sorted."""
    return sorted(_REGISTRY)


def optimizer_info(name: str) -> OptimizerInfo:
    """The registry entry for ``name`` (case-insensitive, ``-`` read as ``_``)."""
    key = name.strip().lower().replace("-", "_")
    try:
        return _REGISTRY[key]
    except KeyError:
        raise ValueError(
            f"Unknown optimizer {name!r}; valid names: {', '.join(available_optimizers())}"
        ) from None


def create_optimizer(
    name: str,
    model_or_params: nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    *,
    lr: float,
    batch_size: int | None = None,
    weight_decay: float | None = None,
    **overrides: Any,
) -> Optimizer:
    """Build a registered optimizer the way the paper would configure it.

    Args:
        name: a name from :func:`available_optimizers`.
        model_or_params: a model (its parameters are split by the entry's ``group_params``,
            :func:`param_groups` unless said otherwise: no weight decay and no trust ratio for
            norms, biases and 1-D tensors; ``muon`` puts the hidden matrices apart) or parameters /
            param groups. An optimizer with train/eval ``modes`` is returned in train mode.
        lr: the learning rate.
        batch_size: picks E's α and β1 by the paper's rule (:func:`explore_defaults`) for the
            optimizers that explore; None keeps the large-batch defaults.
        weight_decay: the decay group's weight decay; None keeps the optimizer's default.
        **overrides: any constructor argument (``alpha``, ``beta``/``betas``, ``eps``, ...); they
            win over the batch-size rule.
    """
    info = optimizer_info(name)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"Invalid batch_size: {batch_size!r}; expected a positive integer")
    kwargs: dict[str, Any] = {**info.defaults, **overrides}
    explore_kwargs: dict[str, Any] = {}
    if info.explores:
        rule = explore_defaults(batch_size)
        e_given = {"alpha", "beta", "betas"} & kwargs.keys()
        e = info.e_kwargs(
            alpha=None if "alpha" in kwargs else rule["alpha"],
            beta1=None if {"beta", "betas"} & e_given else rule["beta1"],
        )
        kwargs = {**e, **kwargs}
        if info.e_style == "explore":
            explore_kwargs = {"alpha": kwargs.pop("alpha"), "beta": kwargs.pop("beta")}
            # E's own options belong to the wrapper, not to the optimizer it wraps.
            if "explore_foreach" in kwargs:
                explore_kwargs["foreach"] = kwargs.pop("explore_foreach")
            if "target_perturbation" in kwargs:
                explore_kwargs["target_perturbation"] = kwargs.pop("target_perturbation")

    if isinstance(model_or_params, nn.Module):
        decay = weight_decay if weight_decay is not None else info.default("weight_decay", 0.0)
        params: Any = info.group_params(model_or_params, decay)
    else:
        params = list(model_or_params)
        if weight_decay is not None:
            kwargs["weight_decay"] = weight_decay

    optimizer = info.factory(params, lr=lr, **kwargs)
    if info.modes:
        optimizer.train()  # type: ignore[attr-defined]
    if explore_kwargs:
        return Explore(optimizer, **explore_kwargs)
    return optimizer
