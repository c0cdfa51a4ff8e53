r"""Where E's α, β1 and auto-E's target live in a parameter group: one mapping for every optimizer.

ALTO and EAdam(W) keep E's hyperparameters as ``alpha`` and ``betas[0]``, ESGD as ``alpha`` and
``beta``, and :class:`~valleys.optim.Explore` as ``explore_alpha`` and ``explore_beta`` (namespaced
because its base optimizer may own an ``alpha``, as RMSprop does). Schedules and auto-E find them
with :func:`e_keys`, which asks the group's keys, never the optimizer's class.

α is a Python float, or under auto-E a 0-d tensor on the parameters' device that the optimizer
updates in place after each step (:mod:`valleys.optim.auto_e`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["EKeys", "e_active", "e_keys"]


@dataclass(frozen=True)
class EKeys:
    """The names of E's hyperparameters in one kind of parameter group."""

    prefix: str
    """``""``, or ``"explore_"`` for :class:`~valleys.optim.Explore`'s keys."""
    beta_key: str
    """``"betas"`` (β1 is its first entry), ``"beta"`` or ``"explore_beta"``."""
    beta_name: str
    """β1 as the optimizer's arguments and error messages name it."""

    @property
    def alpha(self) -> str:
        """The key of α."""
        return f"{self.prefix}alpha"

    @property
    def target(self) -> str:
        """The key of auto-E's target perturbation ρ (None: α is fixed or scheduled)."""
        return f"{self.prefix}target_perturbation"

    def beta(self, group: dict[str, Any]) -> float:
        """β1 of ``group``."""
        value = group[self.beta_key]
        return value[0] if self.beta_key == "betas" else value

    def set_beta(self, group: dict[str, Any], value: float) -> None:
        """Make ``value`` β1 of ``group`` (a new ``betas`` tuple where β1 is its first entry)."""
        if self.beta_key == "betas":
            group["betas"] = (value, *group["betas"][1:])
        else:
            group[self.beta_key] = value


_EXPLORE = EKeys("explore_", "explore_beta", "beta")
_BETAS = EKeys("", "betas", "beta1")
_BETA = EKeys("", "beta", "beta")


def e_keys(group: dict[str, Any]) -> EKeys | None:
    """The keys of E's hyperparameters in ``group``; None for a group without E (Lamb, a plain
    torch optimizer). Explore's keys are looked for first: its base optimizer's own ``alpha``
    (RMSprop's) is not E's."""
    if "explore_alpha" in group:
        return _EXPLORE
    if "alpha" in group and "betas" in group:
        return _BETAS
    if "alpha" in group and "beta" in group:
        return _BETA
    return None


def e_active(alpha: float | Tensor) -> bool:
    """Whether E transforms a group's gradients: α ≠ 0, read from the Python value; an auto-E α
    (a tensor, whose magnitude never reaches 0) always does, without reading it on the host."""
    return isinstance(alpha, Tensor) or alpha != 0
