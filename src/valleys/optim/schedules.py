r"""Schedules of E's α and β1 over steps, as ``torch.optim.lr_scheduler`` schedules the lr.

A scheduler sets one of E's hyperparameters, ``"alpha"`` or ``"beta1"``, in every parameter group
of an optimizer that applies E (ALTO, EAdam(W), ESGD, :class:`~valleys.optim.Explore`), from the
number of times its :meth:`~EScheduler.step` was called (:math:`k = 0` at construction):

=================  =========================================================================
:class:`ConstantE`  :math:`v` for the first :math:`K` steps (all of them when None), then :math:`b`
:class:`LinearE`    :math:`s + (t - s)\min(k, K)/K`
:class:`CosineE`    :math:`t + (s - t)\,(1 + \cos(\pi\min(k, K)/K))/2`
:class:`LambdaE`    :math:`b \cdot f(k)`
=================  =========================================================================

with :math:`b` each group's value when the scheduler was created, and :math:`s`, :math:`t` the
start and the end (None: :math:`b`), so that ``LinearE(opt, "alpha", start=0.0, total_steps=K)``
warms each group's α in from 0 and ``CosineE(opt, "beta1", end=0.9, total_steps=K)`` decays β1
to 0.9. Groups find their keys through :func:`~valleys.optim._e_group.e_keys` (``alpha`` /
``betas[0]``, ``beta``, ``explore_alpha`` / ``explore_beta``), never the optimizer's class.

**Stability.** E is stable only for :math:`|\alpha| < 1/(1-\beta_1)`. A scheduler refuses a value
outside E's domain on its own (a non-finite α, β1 outside [0, 1)); the pair of α and β1 is
checked by the optimizer's next ``step()``, which raises a ``ValueError`` naming the bound before
it uses an unstable pair: α and β1 may be scheduled by two schedulers that step one after the
other, so a pair that only exists between their two ``step()`` calls is never refused. An α that
auto-E adapts (:mod:`valleys.optim.auto_e`) cannot be scheduled; its β1 can, and the adapting α is
then clamped into the new bound at once.

**Compilation.** The fused kernels take α, β1, the lr and the weight decay as 0-d tensors, so a
schedule never recompiles them; only reaching 0 does (α = 0 switches E off, and E's buffer is
not advanced while it is; a weight decay of 0 drops its term).

``state_dict()`` saves the step count, the base and last values and the schedule's settings
(a :class:`LambdaE`'s function is not saved); ``load_state_dict`` restores them and writes the
last values into the optimizer's groups again, so that the order in which an optimizer and its
schedulers are restored does not matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from torch.optim import Optimizer

from . import auto_e
from ._e_group import EKeys, e_keys
from ._validation import check_beta

__all__ = ["ConstantE", "CosineE", "EScheduler", "Hyperparameter", "LambdaE", "LinearE"]

Hyperparameter = Literal["alpha", "beta1"]


class EScheduler:
    """Base of E's schedulers: sets ``hyperparameter`` of every group to :meth:`value` of the step
    count and the group's base value. Subclasses implement :meth:`value`.

    Args:
        optimizer: an optimizer whose every group applies E.
        hyperparameter: ``"alpha"`` or ``"beta1"``.
        last_epoch: the index of the last step taken, as in torch's LR schedulers (-1: start).
    """

    def __init__(
        self, optimizer: Optimizer, hyperparameter: Hyperparameter = "alpha", last_epoch: int = -1
    ) -> None:
        if hyperparameter not in ("alpha", "beta1"):
            raise ValueError(
                f"Invalid hyperparameter: {hyperparameter!r}; expected 'alpha' or 'beta1'"
            )
        self.optimizer = optimizer
        self.hyperparameter = hyperparameter
        self._keys = [
            _schedulable_keys(optimizer, i, hyperparameter) for i in range(len(self._groups))
        ]
        self.base_values = [self._read(g, k) for g, k in zip(self._groups, self._keys, strict=True)]
        self.last_epoch = last_epoch
        self._last_values: list[float] = []
        self.step()

    @property
    def _groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def value(self, step: int, base: float) -> float:
        """The value at ``step`` for a group whose base value is ``base``."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance one step and set every group's value."""
        self.last_epoch += 1
        self._apply([self.value(self.last_epoch, base) for base in self.base_values])

    def get_last_value(self) -> list[float]:
        """The values the last :meth:`step` set, one per group."""
        return list(self._last_values)

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state: everything but the optimizer (and a :class:`LambdaE`'s
        function)."""
        return {k: v for k, v in self.__dict__.items() if k not in _NOT_SAVED}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` and set the groups' values to the restored last ones."""
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in _NOT_SAVED})
        self._apply(self._last_values)

    def _read(self, group: dict[str, Any], keys: EKeys) -> float:
        return group[keys.alpha] if self.hyperparameter == "alpha" else keys.beta(group)

    def _apply(self, values: list[float]) -> None:
        for group, keys, value in zip(self._groups, self._keys, values, strict=True):
            _check_value(self.hyperparameter, value, keys)
            if self.hyperparameter == "alpha":
                group[keys.alpha] = value
                continue
            keys.set_beta(group, value)
            if auto_e.is_auto(group, keys):
                auto_e.clamp_alpha_(group, keys)
        self._last_values = list(values)


_NOT_SAVED = frozenset({"optimizer", "_keys", "fn"})


def _schedulable_keys(optimizer: Optimizer, index: int, hyperparameter: str) -> EKeys:
    """The E keys of group ``index``, refusing a group without E or with an adapting α."""
    group = optimizer.param_groups[index]
    keys = e_keys(group)
    if keys is None:
        raise ValueError(
            f"param group {index} of {type(optimizer).__name__} does not apply E (it has no "
            "alpha, explore_alpha); E's schedulers need every group to apply E"
        )
    if hyperparameter == "alpha" and auto_e.is_auto(group, keys):
        raise ValueError(
            f"param group {index} adapts {keys.alpha} (auto-E, {keys.target}="
            f"{group[keys.target]!r}); schedule its beta1 or fix its alpha instead"
        )
    return keys


def _check_value(hyperparameter: str, value: float, keys: EKeys) -> None:
    """Refuse a value outside E's domain on its own (the pair is checked at the step)."""
    if hyperparameter == "beta1":
        check_beta(keys.beta_name, value)
    elif not (isinstance(value, int | float) and math.isfinite(value)):
        raise ValueError(
            f"Invalid {keys.alpha} from a schedule: {value!r}; expected a finite number"
        )


def _check_total_steps(total_steps: int) -> None:
    if not (isinstance(total_steps, int) and total_steps >= 1):
        raise ValueError(f"Invalid total_steps: {total_steps!r}; expected an integer >= 1")


class ConstantE(EScheduler):
    """``value`` for the first ``total_steps`` steps (every step when None), then each group's base
    value: e.g. ``ConstantE(opt, "alpha", 0.0, total_steps=K)`` keeps E off for K steps."""

    def __init__(
        self,
        optimizer: Optimizer,
        hyperparameter: Hyperparameter,
        value: float,
        total_steps: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        if total_steps is not None:
            _check_total_steps(total_steps)
        self.constant, self.total_steps = value, total_steps
        super().__init__(optimizer, hyperparameter, last_epoch)

    def value(self, step: int, base: float) -> float:
        if self.total_steps is None or step < self.total_steps:
            return self.constant
        return base


class _Ramp(EScheduler):
    """From ``start`` to ``end`` over ``total_steps`` steps, then ``end``; None: the base value."""

    def __init__(
        self,
        optimizer: Optimizer,
        hyperparameter: Hyperparameter,
        start: float | None = None,
        end: float | None = None,
        total_steps: int = 1,
        last_epoch: int = -1,
    ) -> None:
        _check_total_steps(total_steps)
        self.start, self.end, self.total_steps = start, end, total_steps
        super().__init__(optimizer, hyperparameter, last_epoch)

    def value(self, step: int, base: float) -> float:
        start = base if self.start is None else self.start
        end = base if self.end is None else self.end
        return end + (start - end) * self._remaining(min(step, self.total_steps) / self.total_steps)

    def _remaining(self, fraction: float) -> float:
        """The share of the way still to go after ``fraction`` of the steps (1 → 0)."""
        raise NotImplementedError


class LinearE(_Ramp):
    """A straight line from ``start`` to ``end`` (None: each group's base value) over
    ``total_steps`` steps, then ``end``: a warm-in or a decay."""

    def _remaining(self, fraction: float) -> float:
        return 1.0 - fraction


class CosineE(_Ramp):
    """A half cosine from ``start`` to ``end`` (None: each group's base value) over
    ``total_steps`` steps, then ``end``: flat at both ends."""

    def _remaining(self, fraction: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * fraction))


class LambdaE(EScheduler):
    """Each group's base value times ``fn(step)``, as ``torch.optim.lr_scheduler.LambdaLR``."""

    def __init__(
        self,
        optimizer: Optimizer,
        hyperparameter: Hyperparameter,
        fn: Callable[[int], float],
        last_epoch: int = -1,
    ) -> None:
        self.fn = fn
        super().__init__(optimizer, hyperparameter, last_epoch)

    def value(self, step: int, base: float) -> float:
        return base * self.fn(step)
