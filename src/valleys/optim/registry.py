"""Optimizers by name, with capability metadata, and ``create_optimizer``.

Names: ``alto``, ``alto_vanilla``, ``lamb``, ``eadam``, ``eadamw``, ``esgd``; every torch optimizer
that steps on gradients alone (``sgd``, ``adam``, ``adamw``, ``adagrad``, ``rmsprop``, ...); and
``e_<torch name>`` (``e_adamw``, ``e_sgd``, ...) for that optimizer wrapped in :class:`Explore`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .alto import ALTO, Lamb
from .eadam import EAdam, EAdamW
from .esgd import ESGD
from .explore import Explore
from .groups import param_groups

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


@dataclass(frozen=True)
class OptimizerInfo:
    """What the registry knows about one optimizer name."""

    name: str
    description: str
    factory: Callable[..., Optimizer]
    explores: bool
    """Whether it applies E (has α and β1)."""
    layerwise: bool
    """Whether it scales updates by a per-tensor trust ratio."""
    e_style: str | None = None
    """How α, β1 are passed: ``"betas"`` (``alpha`` and ``betas[0]``) or ``"beta"`` (``alpha``,
    ``beta``); None when it does not explore."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Keyword defaults the factory adds (overridable)."""


def explore_defaults(batch_size: int | None) -> dict[str, float]:
    """The paper's α and β1 for a batch size: (−5, 0.99) from 1024 up, (0.5, 0.01) below.

    None means "large batch", the defaults of the optimizer classes.
    """
    if batch_size is not None and batch_size < LARGE_BATCH:
        return {"alpha": 0.5, "beta": 0.01}
    return {"alpha": -5.0, "beta": 0.99}


def _torch_class(name: str) -> type[Optimizer] | None:
    return getattr(torch.optim, name, None)


def _build_registry() -> dict[str, OptimizerInfo]:
    infos = [
        OptimizerInfo(
            "alto", "ALTO: E + LAMB with bias correction (Algorithm 2)", ALTO, True, True, "betas"
        ),
        OptimizerInfo(
            "alto_vanilla",
            "ALTO without bias correction (Algorithm 1)",
            ALTO,
            True,
            True,
            "betas",
            {"bias_correction": False},
        ),
        OptimizerInfo("lamb", "LAMB: ALTO's kernel with α = 0", Lamb, False, True),
        OptimizerInfo("eadam", "Adam on E's gradient (Algorithm 4)", EAdam, True, False, "betas"),
        OptimizerInfo("eadamw", "AdamW on E's gradient", EAdamW, True, False, "betas"),
        OptimizerInfo(
            "esgd",
            "SGD with momentum 0.9 on E's gradient (Algorithm 3)",
            ESGD,
            True,
            False,
            "beta",
            dict(_SGD_DEFAULTS),
        ),
    ]
    for cls_name in _TORCH_OPTIMIZERS:
        cls = _torch_class(cls_name)
        if cls is None:
            continue
        name = cls_name.lower()
        extra = _SGD_DEFAULTS if name == "sgd" else {}
        label = f"torch.optim.{cls_name}" + (" (momentum 0.9)" if extra else "")
        infos.append(OptimizerInfo(name, label, cls, False, False, None, dict(extra)))
        infos.append(
            OptimizerInfo(
                f"e_{name}",
                f"{label} wrapped in Explore (E)",
                cls,
                True,
                False,
                "beta",
                dict(extra),
            )
        )
    return {info.name: info for info in infos}


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
        model_or_params: a model (its parameters are split by :func:`param_groups`: no weight decay
            and no trust ratio for norms, biases and 1-D tensors) or parameters / param groups.
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
        e = explore_defaults(batch_size)
        if info.e_style == "betas":
            kwargs.setdefault("alpha", e["alpha"])
            if "betas" not in kwargs:
                default_betas = _default(info.factory, "betas")
                kwargs["betas"] = (e["beta"], *default_betas[1:])
        elif info.factory is ESGD:
            kwargs.setdefault("alpha", e["alpha"])
            kwargs.setdefault("beta", e["beta"])
        else:
            explore_kwargs = {
                "alpha": kwargs.pop("alpha", e["alpha"]),
                "beta": kwargs.pop("beta", e["beta"]),
            }
            if "explore_foreach" in kwargs:
                explore_kwargs["foreach"] = kwargs.pop("explore_foreach")

    if isinstance(model_or_params, nn.Module):
        decay = (
            weight_decay
            if weight_decay is not None
            else _default(info.factory, "weight_decay", 0.0)
        )
        params: Any = param_groups(model_or_params, decay)
    else:
        params = list(model_or_params)
        if weight_decay is not None:
            kwargs["weight_decay"] = weight_decay

    optimizer = info.factory(params, lr=lr, **kwargs)
    if explore_kwargs:
        return Explore(optimizer, **explore_kwargs)
    return optimizer


def _default(factory: Callable[..., Optimizer], arg: str, fallback: Any = None) -> Any:
    """The default of a constructor argument, read from its signature."""
    parameter = inspect.signature(factory).parameters.get(arg)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return fallback
    return parameter.default
