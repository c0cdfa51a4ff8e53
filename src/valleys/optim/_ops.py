r"""The pieces the optimizers' kernels are built from, each per tensor and for lists of tensors.

Gradient scaling (clipping, ``maximize``), Adam's moments and update, the trust ratio and applying
the learning rate. The loop and foreach kernels of ``_functional.py`` call them directly, the
compiled kernels of ``_fused.py`` trace the per-tensor ones. E's transform is in ``_e.py``.

An ``owned`` flag says whether tensors are this step's own temporaries, which may be overwritten;
the user's gradients and the optimizer's state never are.
"""

from __future__ import annotations

import torch
from torch import Tensor

Number = float | Tensor


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """The dtype for scalars derived from tensors of ``dtype``: float64 stays, anything else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bias_correction(beta: float, step: Tensor, dtype: torch.dtype) -> Tensor:
    """``1 - beta**step`` as a 0-d tensor on ``step``'s device."""
    return 1 - torch.pow(beta, step.to(dtype))


def _group_by_device_and_dtype(
    tensors: list[Tensor],
) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices of ``tensors`` bucketed by (device, dtype): foreach kernels need uniform lists."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault((t.device, t.dtype), []).append(i)
    return buckets


def _scaled(grad: Tensor, grad_scale: Tensor | None, maximize: bool) -> Tensor:
    """The gradient the update uses: clipped by ``grad_scale`` and negated under ``maximize``.

    Never modifies ``grad`` (the user's ``p.grad``)."""
    if grad_scale is not None:
        return grad * (-grad_scale if maximize else grad_scale)
    return -grad if maximize else grad


def _scaled_multi(
    grads: list[Tensor], grad_scale: Tensor | None, maximize: bool
) -> tuple[list[Tensor], bool]:
    """The gradients the update uses (see :func:`_scaled`), and whether they are new temporaries
    that the rest of the step may overwrite (the user's gradients never are)."""
    if grad_scale is not None:
        return torch._foreach_mul(grads, -grad_scale if maximize else grad_scale), True
    if maximize:
        return torch._foreach_neg(grads), True
    return grads, False


def _add_multi(
    tensors: list[Tensor], owned: bool, others: list[Tensor], alpha: float
) -> tuple[list[Tensor], bool]:
    """``tensors + alpha * others``, in place when ``tensors`` are owned temporaries; the result
    is always owned."""
    if owned:
        torch._foreach_add_(tensors, others, alpha=alpha)
        return tensors, True
    return torch._foreach_add(tensors, others, alpha=alpha), True


def _moments_(
    exp_avg: Tensor, exp_avg_sq: Tensor, grad: Tensor, beta2: float, beta3: float
) -> None:
    r""":math:`m \leftarrow \beta_2 m + (1-\beta_2) u`, :math:`v \leftarrow \beta_3 v + (1-\beta_3) u^2`,
    in place (also traced into the compiled kernels)."""
    exp_avg.lerp_(grad, 1 - beta2)
    exp_avg_sq.mul_(beta3).addcmul_(grad, grad, value=1 - beta3)


def _moments_multi_(
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    grads: list[Tensor],
    beta2: float,
    beta3: float,
) -> None:
    """:func:`_moments_` for lists of tensors."""
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)
    torch._foreach_mul_(exp_avg_sqs, beta3)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta3)


def _trust_ratio(param_norm: Tensor, update_norm: Tensor, eps2: float, eps3: float) -> Tensor:
    r""":math:`\phi(\lVert\theta\rVert) / (\lVert r\rVert + \epsilon_2 \phi(\lVert\theta\rVert))`,
    :math:`\phi(x) = x + \epsilon_3`.

    With :math:`\epsilon_2 = \epsilon_3 = 0` this is :math:`\lVert\theta\rVert / \lVert r\rVert`,
    which is undefined where either norm is 0; there it is 1, LAMB's rule (You et al., ICLR 2020,
    as the NUS-HPC-AI-Lab code and the paper's reference ALTO run it): a zero-initialised tensor
    takes a plain step. Chosen on the device (``torch.where``), never on the host. Either ε > 0
    keeps the paper's formula as it is, bit for bit."""
    if eps2 == 0 and eps3 == 0:
        defined = (param_norm > 0) & (update_norm > 0)
        return torch.where(defined, param_norm / update_norm, 1.0)
    phi = param_norm + eps3
    return phi / (update_norm + eps2 * phi)


def _adam_update_multi(
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    beta2: float,
    beta3: float,
    eps: float,
    bias_correction: bool,
    dtype: torch.dtype,
) -> list[Tensor]:
    r""":math:`\hat m / (\sqrt{\hat v} + \epsilon)` as one new list of tensors: the denominator is
    built in it and turned into the quotient in place (:math:`m \cdot (1/d)`), so that the step
    holds one temporary of the parameters' size here rather than two."""
    if bias_correction:
        steps_t = [x.to(dtype) for x in steps]
        bc2 = torch._foreach_pow(beta2, steps_t)
        bc3 = torch._foreach_pow(beta3, steps_t)
        for bc in (bc2, bc3):
            torch._foreach_neg_(bc)
            torch._foreach_add_(bc, 1)
        torch._foreach_sqrt_(bc3)
        update = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(update, bc3)
    else:
        update = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(update, eps)
    torch._foreach_reciprocal_(update)
    torch._foreach_mul_(update, exp_avgs)
    if bias_correction:
        torch._foreach_div_(update, bc2)
    return update


def _apply_lr_(param: Tensor, update: Tensor, lr: Number, owned: bool = True) -> None:
    """``param -= lr * update``; ``update`` is overwritten only when ``owned``."""
    if isinstance(lr, Tensor):
        param.sub_(update.mul_(lr) if owned else update * lr)
    else:
        param.add_(update, alpha=-lr)


def _apply_lr_multi_(
    params: list[Tensor], updates: list[Tensor], lr: Number, owned: bool = True
) -> None:
    """``params -= lr * updates``; ``updates`` are overwritten only when ``owned`` (this step's
    own temporaries, not state such as momentum buffers)."""
    if not isinstance(lr, Tensor):
        torch._foreach_add_(params, updates, alpha=-lr)
        return
    if owned:
        torch._foreach_mul_(updates, lr)
    else:
        updates = torch._foreach_mul(updates, lr)
    torch._foreach_sub_(params, updates)
