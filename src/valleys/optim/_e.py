r"""E's gradient transform, written once per kernel style: per tensor and with foreach kernels.

The E transform (Zhao et al., "Exploring Landscapes for Better Minima along Valleys", NeurIPS 2025,
Algorithm 2) replaces the gradient :math:`g_k` by

.. math::
    a_k = \beta_1 a_{k-1} + (1 - \beta_1)(g_k - g_{k-1}), \qquad \hat g_k = g_k + \alpha a_k,

with :math:`a_0 = g_0 = 0`. Because :math:`a_k = (1 - \beta_1)(g_k - e_{k-1})`, where
:math:`e_k = \beta_1 e_{k-1} + (1 - \beta_1) g_k` is the zero-initialised EMA of the raw gradients,

.. math::
    \hat g_k = g_k + c\,(g_k - e_{k-1}), \qquad c = \alpha (1 - \beta_1),

so E needs one state tensor (``e``), not the previous gradient and ``a``.

The transform is two steps, :func:`grad_hat` (ĝ from g and e; e is only read) and
:func:`advance_` (e's update), because :class:`~valleys.optim.Explore` may advance e only once its
base optimizer's step has succeeded. The optimizers built on E take both at once
(:func:`explore_single`, :func:`explore_multi`); the compiled kernels of ``_fused.py`` trace the
per-tensor functions. With ``sums`` (a list; see ``_telemetry.py``) they also add up E's telemetry
from the g and ĝ at hand. Nothing here reads a tensor's value on the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._telemetry import perturbation_sums, perturbation_sums_multi, stacked_norms, sums_from_norms

__all__ = [
    "advance_",
    "advance_multi_",
    "explore_multi",
    "explore_single",
    "ghat_coefficient",
    "grad_hat",
    "grad_hat_multi",
]


def ghat_coefficient(alpha: float | Tensor, beta: float) -> float | Tensor:
    r""":math:`c = \alpha(1-\beta)`, the factor of :math:`g - e` in :math:`\hat g`."""
    return alpha * (1 - beta)


def grad_hat(
    grad: Tensor, ema: Tensor, coefficient: float | Tensor, out: Tensor | None = None
) -> Tensor:
    r""":math:`\hat g = g + c\,(g - e)`, written into ``out`` (a new tensor when None)."""
    return torch.sub(grad, ema, out=out).mul_(coefficient).add_(grad)


def advance_(ema: Tensor, grad: Tensor, beta: float) -> None:
    r""":math:`e \leftarrow \beta e + (1-\beta) g`, in place."""
    ema.lerp_(grad, 1 - beta)


def explore_single(
    grad: Tensor, ema: Tensor, alpha: float | Tensor, beta: float, sums: list[Tensor] | None = None
) -> Tensor:
    r"""Return :math:`\hat g` as a new tensor and advance ``ema`` in place; ``grad`` is only read.
    ``sums``: append the tensor's telemetry sums to it."""
    ghat = grad_hat(grad, ema, ghat_coefficient(alpha, beta))
    if sums is not None:
        sums.append(perturbation_sums(grad, ghat))
    advance_(ema, grad, beta)
    return ghat


def grad_hat_multi(
    grads: list[Tensor],
    emas: list[Tensor],
    coefficient: float | Tensor,
    out: list[Tensor] | None = None,
) -> list[Tensor]:
    r""":func:`grad_hat` for lists of tensors, written into ``out`` (new tensors when None)."""
    if isinstance(coefficient, Tensor):
        # Auto-E's device coefficient: foreach lerp takes its weight as a host scalar, which
        # would read the tensor on the host; a difference, a scaling and a sum do not.
        diffs = torch._foreach_sub(grads, emas)
        torch._foreach_mul_(diffs, coefficient)
        if out is None:
            torch._foreach_add_(diffs, grads)
            return diffs
        torch._foreach_copy_(out, grads)
        torch._foreach_add_(out, diffs)
        return out
    # lerp(g, e, -c) = g + c (g - e): one pass over g and e instead of a difference, a scaling
    # and a sum.
    if out is None:
        return torch._foreach_lerp(grads, emas, -coefficient)
    torch._foreach_copy_(out, grads)
    torch._foreach_lerp_(out, emas, -coefficient)
    return out


def advance_multi_(emas: list[Tensor], grads: list[Tensor], beta: float) -> None:
    """:func:`advance_` for lists of tensors."""
    torch._foreach_lerp_(emas, grads, 1 - beta)


def explore_multi(
    grads: list[Tensor],
    emas: list[Tensor],
    alpha: float | Tensor,
    beta: float,
    owned: bool = False,
    sums: list[Tensor] | None = None,
) -> list[Tensor]:
    r""":func:`explore_single` for lists of tensors: :math:`\hat g` for each gradient, advancing
    each EMA; one list of temporaries at most.

    ``owned``: the gradients are this step's own temporaries (clipped or negated copies), and
    :math:`\hat g` is computed in them. The raw gradient is then gone once :math:`d = g - e_{k-1}`
    is formed, so :math:`\hat g = g + c\,d` is evaluated as the equal
    :math:`e_k + (\beta + c)\,d` (since :math:`g = e_k + \beta d`). ``sums``: append the
    lists' telemetry sums to it (there from the norms of :math:`g`, :math:`d` and :math:`\hat g`,
    since :math:`\hat g - g = c\,d`).
    """
    c = ghat_coefficient(alpha, beta)
    if not owned:
        ghats = grad_hat_multi(grads, emas, c)
        if sums is not None:
            sums.append(perturbation_sums_multi(grads, ghats))
        advance_multi_(emas, grads, beta)
        return ghats
    grad_norms = stacked_norms(grads) if sums is not None else None
    torch._foreach_sub_(grads, emas)
    diff_norms = stacked_norms(grads) * abs(c) if sums is not None else None
    torch._foreach_add_(emas, grads, alpha=1 - beta)
    torch._foreach_mul_(grads, beta + c)
    torch._foreach_add_(grads, emas)
    if sums is not None and grad_norms is not None and diff_norms is not None:
        sums.append(sums_from_norms(grad_norms, stacked_norms(grads), diff_norms))
    return grads
