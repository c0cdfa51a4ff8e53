r"""Auto-E: E's α adapted online so that E's relative perturbation stays near a target ρ.

E moves a group's gradients by :math:`\hat g - g = c\,(g - e_{k-1})`, :math:`c = \alpha(1-\beta_1)`,
so its relative perturbation (over all of the group's tensors together) is

.. math::
    p_k = \frac{\lVert \hat g_k - g_k \rVert}{\lVert g_k \rVert} = |c_k|\, r_k, \qquad
    r_k = \frac{\lVert g_k - e_{k-1} \rVert}{\lVert g_k \rVert}.

Passing ``alpha="auto"`` and ``target_perturbation=ρ`` to ALTO, EAdam(W), ESGD or
:class:`~valleys.optim.Explore` makes α follow, per group, after every step :math:`k`

.. math::
    x_k &= \log|\alpha_k|, \qquad u_k = \operatorname{clip}(\log\rho - \log p_k,\ -L,\ L) \\
    x_{k+1} &= \operatorname{clip}\bigl(x_k + \gamma u_k,\
        \log\alpha_{\min},\ \log\tfrac{1-\delta}{1-\beta_1}\bigr), \qquad
    \alpha_{k+1} = \operatorname{sign}(\alpha_0)\, e^{x_{k+1}}

with the gain :math:`\gamma` = :data:`GAIN`, the step bound :math:`L` = :data:`MAX_LOG_ERROR` and
the margin :math:`\delta` = :data:`MARGIN`.

**Why it is stable.** Since :math:`\log p_k = x_k + \log((1-\beta_1) r_k)`, away from the clips

.. math::
    x_{k+1} - x^*_k = (1-\gamma)(x_k - x^*_k), \qquad x^*_k = \log\rho - \log((1-\beta_1) r_k),

where :math:`x^*_k` is the α that would have met ρ exactly at step :math:`k`: :math:`x` is an
exponential moving average of :math:`x^*` with weight :math:`\gamma`. For :math:`0 < \gamma \le 1`
it converges geometrically and without overshoot when :math:`r` is steady, averages a noisy
:math:`r` over about :math:`1/\gamma` steps, and stays bounded for any bounded :math:`r`. The clip
:math:`L` bounds every change to a factor :math:`e^{\pm\gamma L}` whatever one step measures (a
spike, zero gradients: NaN counts as no error), so α moves slowly next to the optimizer it
perturbs. The upper clip keeps :math:`|c| \le 1-\delta`, inside E's stable region
:math:`|\alpha| < 1/(1-\beta_1)` at every step whatever ρ asks, and :math:`\alpha_{\min}` keeps
the logarithm finite; the sign never changes, so α never crosses 0 (where E would switch off).

**Cost and synchronisation.** :math:`\lVert g\rVert^2` and :math:`\lVert \hat g - g\rVert^2` are
the sums E's telemetry adds up in the kernels' own passes (``_telemetry.py``): no extra pass over
memory. α is a 0-d tensor on the parameters' device, updated in place from the step's sums by a
few scalar operations: ``step()`` never reads it on the host. The α a step uses is the one in the
group before that step (``group["alpha"]``, Explore's ``group["explore_alpha"]``), and
``state_dict`` saves a copy of it.

**Sign and start.** ``alpha="auto"`` explores (α < 0, the paper's large-batch side) from
:math:`|\alpha_0| = \rho/(1-\beta_1)`, which meets ρ exactly at the first step (where
:math:`e_0 = 0`, so :math:`r_1 = 1`); a number with ``target_perturbation`` starts from it and
keeps its sign (``create_optimizer(..., batch_size=B, target_perturbation=ρ)`` so takes the sign
of the paper's batch-size rule: exploit below 1024, explore from 1024 up).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._e_group import EKeys, e_keys
from ._ops import _opmath
from ._sharding import sharded_norms
from ._validation import check_alpha

__all__ = ["AUTO", "GAIN", "MARGIN", "MAX_LOG_ERROR", "update_alpha_"]

AUTO = "auto"
"""The ``alpha`` that asks for auto-E."""

GAIN = 0.1
r""":math:`\gamma`: the weight of one step's measurement (a time constant of about 10 steps)."""

MAX_LOG_ERROR = 1.0
r""":math:`L`: α changes by a factor of at most :math:`e^{\gamma L} \approx 1.105` per step."""

MARGIN = 0.05
r""":math:`\delta`: :math:`|c| = |\alpha|(1-\beta_1)` stays at most :math:`1-\delta`."""

MIN_COEFFICIENT = 1e-6
r""":math:`\alpha_{\min}(1-\beta_1)`: the smallest :math:`|c|` auto-E goes down to."""


def _bounds(beta: float) -> tuple[float, float]:
    """The smallest and the largest |α| auto-E uses with this β1."""
    return MIN_COEFFICIENT / (1 - beta), (1 - MARGIN) / (1 - beta)


def is_auto(group: dict[str, Any], keys: EKeys) -> bool:
    """Whether auto-E adapts ``group``'s α (it has a target perturbation)."""
    return group.get(keys.target) is not None


def prepare_group(group: dict[str, Any]) -> None:
    """Validate E's α (and auto-E's target) of a new group whose β1 is valid; under auto-E, make
    α the group's own 0-d tensor on its parameters' device."""
    keys = e_keys(group)
    if keys is None:
        return
    alpha, beta = group[keys.alpha], keys.beta(group)
    if not is_auto(group, keys):
        check_alpha(alpha, beta, keys.beta_name)
        return
    target = group[keys.target]
    if not (isinstance(target, int | float) and math.isfinite(target) and target > 0):
        raise ValueError(
            f"Invalid {keys.target}: {target!r}; expected a number > 0 (E's relative "
            "perturbation ‖ĝ − g‖/‖g‖ to aim for)"
        )
    if isinstance(alpha, Tensor):
        # A group that already adapts (added again, or loaded): keep its value.
        alpha = alpha.detach()
    elif alpha == AUTO:
        alpha = -min(target / (1 - beta), _bounds(beta)[1])
    else:
        check_alpha(alpha, beta, keys.beta_name)
        if alpha == 0:
            raise ValueError(
                f"Invalid {keys.alpha}: 0 with {keys.target}; auto-E takes its sign from a "
                f"nonzero start, or pass {keys.alpha}='auto'"
            )
    params = group["params"]
    device = params[0].device if params else None
    dtype = _opmath(params[0].dtype) if params else torch.float32
    group[keys.alpha] = torch.as_tensor(alpha, dtype=dtype, device=device).clone()


def _check_auto_alpha(group: dict[str, Any], keys: EKeys) -> Tensor:
    alpha = group[keys.alpha]
    if not isinstance(alpha, Tensor):
        raise ValueError(
            f"Invalid {keys.alpha}: {alpha!r} in a group with {keys.target}="
            f"{group[keys.target]!r}; auto-E adapts it (a 0-d tensor): set {keys.target}=None "
            "to fix or schedule α"
        )
    return alpha


def clamp_alpha_(group: dict[str, Any], keys: EKeys) -> None:
    """Keep an adapting α inside the stable region of the group's current β1 (which a schedule
    may have changed since α was last updated), in place on the device."""
    low, high = _bounds(keys.beta(group))
    alpha = _check_auto_alpha(group, keys)
    alpha.copy_(torch.copysign(alpha.abs().clamp(low, high), alpha))


def update_alpha_(alpha: Tensor, total: Tensor, beta: float, target: float) -> None:
    r"""One step of the control law (module docstring), in place: ``total`` holds the step's
    telemetry sums :math:`(\lVert g\rVert^2, \lVert\hat g\rVert^2, \lVert\hat g - g\rVert^2)`
    over the group's tensors, taken with this α; nothing is read on the host."""
    log_p = 0.5 * (total[2].log() - total[0].log())
    error = (math.log(target) - log_p).nan_to_num(0.0).clamp(-MAX_LOG_ERROR, MAX_LOG_ERROR)
    low, high = _bounds(beta)
    magnitude = (alpha.abs().log() + GAIN * error).exp().clamp(low, high)
    alpha.copy_(torch.copysign(magnitude, alpha))


def begin_group(group: dict[str, Any], e_sums: list[Tensor] | None) -> list[Tensor] | None:
    """Check a group's E hyperparameters before its step and return the list its kernels add E's
    sums to: the telemetry list (None: off), or the group's own under auto-E.

    A fixed or scheduled α outside E's stable region for the current β1 is refused here, where
    both have their values for this step (schedules of α and of β1 step one after the other);
    an adapting α is clamped into it."""
    keys = e_keys(group)
    if keys is None:
        return e_sums
    if is_auto(group, keys):
        clamp_alpha_(group, keys)
        return []
    check_alpha(group[keys.alpha], keys.beta(group), keys.beta_name)
    return e_sums


def end_group(
    group: dict[str, Any], sums: list[Tensor] | None, e_sums: list[Tensor] | None
) -> None:
    """After a group's step: under auto-E, hand its sums to the telemetry list and update α."""
    keys = e_keys(group)
    if keys is None or not is_auto(group, keys) or not sums:
        return
    if e_sums is not None:
        e_sums.extend(sums)
    alpha = group[keys.alpha]
    total = torch.stack([s.to(alpha.device, alpha.dtype) for s in sums]).sum(0)
    sharded = sharded_norms(group["params"])
    if sharded is not None:
        # FSDP2: each rank summed its shards; every rank must adapt the same α from the whole.
        total = sharded.reduce_total(total)
    update_alpha_(alpha, total, keys.beta(group), group[keys.target])


def saved_groups(groups: list[dict[str, Any]]) -> None:
    """In a state dict's param groups: replace each adapting α by a copy, so that the saved value
    is the one at saving time, not a view of the live one."""
    for group in groups:
        keys = e_keys(group)
        if keys is not None and isinstance(group[keys.alpha], Tensor):
            group[keys.alpha] = group[keys.alpha].detach().clone()


def loaded_groups(groups: list[dict[str, Any]]) -> None:
    """After loading param groups: put each adapting α on its group's parameters' device."""
    for group in groups:
        keys = e_keys(group)
        if keys is not None and isinstance(group[keys.alpha], Tensor) and group["params"]:
            group[keys.alpha] = group[keys.alpha].to(group["params"][0].device)
