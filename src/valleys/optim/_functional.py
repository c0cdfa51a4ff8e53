r"""The optimizers' kernels (per-tensor loop, foreach) and the functions that pick a path.

Every update is written with one signature per path: ``_single_tensor_*`` is a plain per-tensor
loop, the readable ground truth, and ``_multi_tensor_*`` does the same work with
``torch._foreach_*`` kernels (fewer, larger launches: the fast path on accelerators). ALTO/Lamb,
EAdam(W) and ESGD also have ``_fused_*`` kernels in ``_fused.py`` (``torch.compile``\ d, one fused
loop per tensor: the fast path on the CPU). The public functions ``alto``, ``eadam``, ``esgd`` and
``explore`` pick one. Tests hold every faster path equal to the loop.

The kernels are compositions of E's transform (``_e.py``, where its math is derived) and the
building blocks of ``_ops.py``; ``_fused.py`` builds on the same two modules, and only this one
chooses between the paths.

No function here reads a tensor's value on the host: step counters, bias corrections, trust ratios
and clip factors stay on the device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from ._e import explore_multi, explore_single
from ._fused import _fused_alto, _fused_eadam, _fused_esgd
from ._ops import (
    Number,
    _adam_update_multi,
    _add_multi,
    _apply_lr_,
    _apply_lr_multi_,
    _bias_correction,
    _group_by_device_and_dtype,
    _moments_,
    _moments_multi_,
    _opmath,
    _scaled,
    _scaled_multi,
    _trust_ratio,
)

__all__ = ["alto", "clip_coefficient", "eadam", "esgd", "explore", "global_grad_norm"]

NormReducer = Callable[[Tensor, list[int]], Tensor]
"""Maps local sums of squares (last dimension: the tensors at the given indices) to full ones."""


def explore(
    grads: list[Tensor],
    emas: list[Tensor],
    *,
    alpha: Number,
    beta: float,
    foreach: bool = False,
) -> list[Tensor]:
    r"""E's gradient transform: return :math:`\hat g_k` for each gradient, advance each EMA.

    The gradients are left untouched; the EMAs move to :math:`e_k`.
    """
    if foreach:
        return explore_multi(grads, emas, alpha, beta)
    return [explore_single(g, e, alpha, beta) for g, e in zip(grads, emas, strict=True)]


def global_grad_norm(grads: list[Tensor]) -> Tensor:
    r"""The 2-norm of all gradients together, as a 0-d tensor on the first gradient's device.

    Computed as ``torch.nn.utils.clip_grad_norm_`` does: per-tensor norms, then the norm of those.
    """
    device = grads[0].device
    dtype = _opmath(grads[0].dtype)
    norms = []
    for (_, dt), idx in _group_by_device_and_dtype(grads).items():
        bucket = torch._foreach_norm([grads[i] for i in idx], 2, dtype=_opmath(dt))
        norms.append(torch.stack(bucket).to(device, dtype))
    return torch.linalg.vector_norm(torch.cat(norms))


def clip_coefficient(total_norm: Tensor, max_norm: float) -> Tensor:
    r""":math:`\min(1, c / (\lVert g \rVert_2 + 10^{-6}))`, the factor of global-norm clipping.

    The ``1e-6`` is ``torch.nn.utils.clip_grad_norm_``'s, so that the two clip identically.
    """
    return torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)


# --------------------------------------------------------------------------------------------- ALTO


def _single_tensor_alto(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    grad_emas: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: Number,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: Number,
    eps: float,
    weight_decay: float,
    eps2: float,
    eps3: float,
    bias_correction: bool,
    trust_ratio: bool,
    grad_scale: Tensor | None,
    maximize: bool,
    e_sums: list[Tensor] | None = None,
) -> None:
    for i, param in enumerate(params):
        grad = _scaled(grads[i], grad_scale, maximize)
        exp_avg, exp_avg_sq, step = exp_avgs[i], exp_avg_sqs[i], steps[i]
        if grad_emas is not None:
            grad = explore_single(grad, grad_emas[i], alpha, beta1, e_sums)
        step += 1

        _moments_(exp_avg, exp_avg_sq, grad, beta2, beta3)

        if bias_correction:
            dtype = _opmath(param.dtype)
            denom = (exp_avg_sq / _bias_correction(beta3, step, dtype)).sqrt_().add_(eps)
            update = (exp_avg / _bias_correction(beta2, step, dtype)).div_(denom)
        else:
            update = exp_avg / exp_avg_sq.sqrt().add_(eps)
        if weight_decay != 0:
            update.add_(param, alpha=weight_decay)
        if trust_ratio:
            dtype = _opmath(param.dtype)
            update.mul_(
                _trust_ratio(
                    torch.linalg.vector_norm(param, dtype=dtype),
                    torch.linalg.vector_norm(update, dtype=dtype),
                    eps2,
                    eps3,
                )
            )
        _apply_lr_(param, update, lr)


def _multi_tensor_alto(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    grad_emas: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: Number,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: Number,
    eps: float,
    weight_decay: float,
    eps2: float,
    eps3: float,
    bias_correction: bool,
    trust_ratio: bool,
    grad_scale: Tensor | None,
    maximize: bool,
    e_sums: list[Tensor] | None = None,
    reduce_norms: NormReducer | None = None,
) -> None:
    for key, idx in _group_by_device_and_dtype(params).items():
        p = [params[i] for i in idx]
        m = [exp_avgs[i] for i in idx]
        v = [exp_avg_sqs[i] for i in idx]
        s = [steps[i] for i in idx]
        g, owned = _scaled_multi([grads[i] for i in idx], grad_scale, maximize)
        if grad_emas is not None:
            g = explore_multi(g, [grad_emas[i] for i in idx], alpha, beta1, owned, e_sums)
        torch._foreach_add_(s, 1)

        _moments_multi_(m, v, g, beta2, beta3)
        del g  # frees ĝ before the update's temporary is allocated

        dtype = _opmath(key[1])
        update = _adam_update_multi(
            m, v, s, beta2=beta2, beta3=beta3, eps=eps, bias_correction=bias_correction,
            dtype=dtype,
        )  # fmt: skip
        if weight_decay != 0:
            torch._foreach_add_(update, p, alpha=weight_decay)
        if trust_ratio:
            norms = torch.stack(
                [
                    torch.stack(torch._foreach_norm(p, 2, dtype=dtype)),
                    torch.stack(torch._foreach_norm(update, 2, dtype=dtype)),
                ]
            )
            if reduce_norms is not None:
                # Shards: the norms of θ and r of every tensor in one collective.
                norms = reduce_norms(norms.square(), idx).sqrt()
            ratios = _trust_ratio(norms[0], norms[1], eps2, eps3)
            torch._foreach_mul_(update, ratios.unbind(0))
        _apply_lr_multi_(p, update, lr)


def alto(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    grad_emas: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: Number,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: Number,
    eps: float,
    weight_decay: float,
    eps2: float,
    eps3: float,
    bias_correction: bool,
    trust_ratio: bool,
    grad_scale: Tensor | None = None,
    maximize: bool = False,
    foreach: bool = False,
    fused: bool = False,
    e_sums: list[Tensor] | None = None,
    reduce_norms: NormReducer | None = None,
) -> None:
    r"""One ALTO step (Algorithm 2 of the paper) on a list of tensors, in place.

    .. math::
        u_k &= g_k + \alpha a_k \quad\text{(E; skipped when ``grad_emas`` is None: Lamb)} \\
        m_k &= \beta_2 m_{k-1} + (1-\beta_2) u_k, \qquad v_k = \beta_3 v_{k-1} + (1-\beta_3) u_k^2 \\
        r_k &= \frac{m_k / (1-\beta_2^k)}{\sqrt{v_k / (1-\beta_3^k)} + \epsilon_1} + \lambda\theta_k \\
        \theta_{k+1} &= \theta_k - \eta\, r_k\,
            \frac{\phi(\lVert\theta_k\rVert)}{\lVert r_k\rVert + \epsilon_2\phi(\lVert\theta_k\rVert)},
            \qquad \phi(x) = x + \epsilon_3

    Without ``bias_correction`` (ALTO Vanilla, Algorithm 1) the divisions by :math:`1-\beta^k` are
    dropped; without ``trust_ratio`` the last factor is 1 (the optimizers decide it per group, e.g.
    only where :math:`\lambda \ne 0`). With :math:`\epsilon_2 = \epsilon_3 = 0` that factor is
    :math:`\lVert\theta_k\rVert / \lVert r_k\rVert`, and 1 where either norm is 0 (LAMB's rule,
    as the reference code runs it). ``grad_scale`` multiplies the raw
    gradients first (global-norm clipping); ``steps`` are per-tensor counters, advanced here.
    ``foreach`` and ``fused`` pick the multi-tensor or the compiled kernels (at most one of them).
    ``e_sums``: a list to which E's telemetry sums are appended (``_telemetry.py``; as in
    ``eadam`` and ``esgd``); None computes none.

    ``reduce_norms`` is for tensors that are local shards of larger ones (FSDP2): it maps the
    shards' sums of squares, shape ``(2, n)`` (θ's and r's of the ``n`` tensors at the given
    indices), to the full tensors'. With the trust ratio on, it forces the multi-tensor kernel,
    whose norms of all tensors are computed together before any is applied, so that one
    collective serves a whole (device, dtype) bucket.
    """
    if reduce_norms is not None and trust_ratio:
        kernel: Callable[..., None] = functools.partial(
            _multi_tensor_alto, reduce_norms=reduce_norms
        )
    else:
        kernel = _pick_kernel("alto", foreach, fused)
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        grad_emas,
        steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        beta3=beta3,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        eps2=eps2,
        eps3=eps3,
        bias_correction=bias_correction,
        trust_ratio=trust_ratio,
        grad_scale=grad_scale,
        maximize=maximize,
        e_sums=e_sums,
    )


# -------------------------------------------------------------------------------------------- EAdam


def _single_tensor_eadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    grad_emas: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: Number,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: Number,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    grad_scale: Tensor | None,
    maximize: bool,
    e_sums: list[Tensor] | None = None,
) -> None:
    for i, param in enumerate(params):
        grad = _scaled(grads[i], grad_scale, maximize)
        exp_avg, exp_avg_sq, step = exp_avgs[i], exp_avg_sqs[i], steps[i]
        step += 1
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        if grad_emas is not None:
            grad = explore_single(grad, grad_emas[i], alpha, beta1, e_sums)

        _moments_(exp_avg, exp_avg_sq, grad, beta2, beta3)

        dtype = _opmath(param.dtype)
        denom = (exp_avg_sq.sqrt() / _bias_correction(beta3, step, dtype).sqrt()).add_(eps)
        update = (exp_avg / _bias_correction(beta2, step, dtype)).div_(denom)
        _apply_lr_(param, update, lr)


def _multi_tensor_eadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    grad_emas: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: Number,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: Number,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    grad_scale: Tensor | None,
    maximize: bool,
    e_sums: list[Tensor] | None = None,
) -> None:
    for key, idx in _group_by_device_and_dtype(params).items():
        p = [params[i] for i in idx]
        m = [exp_avgs[i] for i in idx]
        v = [exp_avg_sqs[i] for i in idx]
        s = [steps[i] for i in idx]
        g, owned = _scaled_multi([grads[i] for i in idx], grad_scale, maximize)
        torch._foreach_add_(s, 1)
        if weight_decay != 0:
            if decoupled_weight_decay:
                torch._foreach_mul_(p, 1 - lr * weight_decay)
            else:
                g, owned = _add_multi(g, owned, p, weight_decay)
        if grad_emas is not None:
            g = explore_multi(g, [grad_emas[i] for i in idx], alpha, beta1, owned, e_sums)

        _moments_multi_(m, v, g, beta2, beta3)
        del g  # frees ĝ before the update's temporary is allocated

        update = _adam_update_multi(
            m, v, s, beta2=beta2, beta3=beta3, eps=eps, bias_correction=True,
            dtype=_opmath(key[1]),
        )  # fmt: skip
        _apply_lr_multi_(p, update, lr)


def eadam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    grad_emas: list[Tensor] | None,
    steps: list[Tensor],
    *,
    lr: Number,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: Number,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    grad_scale: Tensor | None = None,
    maximize: bool = False,
    foreach: bool = False,
    fused: bool = False,
    e_sums: list[Tensor] | None = None,
) -> None:
    r"""One EAdam / EAdamW step (Algorithm 4 of the paper) on a list of tensors, in place.

    .. math::
        g_k &\leftarrow g_k + \lambda\theta_k \quad\text{(EAdam; EAdamW instead decays }
            \theta_k \leftarrow (1-\eta\lambda)\theta_k\text{)} \\
        u_k &= g_k + \alpha a_k \\
        m_k &= \beta_2 m_{k-1} + (1-\beta_2) u_k, \qquad v_k = \beta_3 v_{k-1} + (1-\beta_3) u_k^2 \\
        \theta_{k+1} &= \theta_k - \eta\,\frac{m_k / (1-\beta_2^k)}{\sqrt{v_k/(1-\beta_3^k)} + \epsilon}

    With ``grad_emas=None`` (or α = 0) this is exactly torch's Adam / AdamW. ``foreach`` and
    ``fused`` pick the multi-tensor or the compiled kernels (at most one of them).
    """
    kernel = _pick_kernel("eadam", foreach, fused)
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        grad_emas,
        steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        beta3=beta3,
        alpha=alpha,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        grad_scale=grad_scale,
        maximize=maximize,
        e_sums=e_sums,
    )


# --------------------------------------------------------------------------------------------- ESGD


def _single_tensor_esgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    grad_emas: list[Tensor] | None,
    *,
    lr: Number,
    momentum: float,
    dampening: float,
    nesterov: bool,
    alpha: Number,
    beta: float,
    weight_decay: float,
    grad_scale: Tensor | None,
    maximize: bool,
    e_sums: list[Tensor] | None = None,
) -> None:
    for i, param in enumerate(params):
        grad = _scaled(grads[i], grad_scale, maximize)
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if grad_emas is not None:
            grad = explore_single(grad, grad_emas[i], alpha, beta, e_sums)
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = torch.clone(grad).detach()
                momentum_buffers[i] = buf
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        _apply_lr_(param, grad, lr, owned=False)


def _multi_tensor_esgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    grad_emas: list[Tensor] | None,
    *,
    lr: Number,
    momentum: float,
    dampening: float,
    nesterov: bool,
    alpha: Number,
    beta: float,
    weight_decay: float,
    grad_scale: Tensor | None,
    maximize: bool,
    e_sums: list[Tensor] | None = None,
) -> None:
    for _, idx in _group_by_device_and_dtype(params).items():
        p = [params[i] for i in idx]
        g, owned = _scaled_multi([grads[i] for i in idx], grad_scale, maximize)
        if weight_decay != 0:
            g, owned = _add_multi(g, owned, p, weight_decay)
        if grad_emas is not None:
            g, owned = (
                explore_multi(g, [grad_emas[i] for i in idx], alpha, beta, owned, e_sums),
                True,
            )
        if momentum != 0:
            bufs: list[Tensor] = []
            for j, i in enumerate(idx):
                buf = momentum_buffers[i]
                if buf is None:
                    buf = torch.clone(g[j]).detach()
                    momentum_buffers[i] = buf
                else:
                    buf.mul_(momentum).add_(g[j], alpha=1 - dampening)
                bufs.append(buf)
            g, owned = _add_multi(g, owned, bufs, momentum) if nesterov else (bufs, False)
        _apply_lr_multi_(p, g, lr, owned)


def esgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    grad_emas: list[Tensor] | None,
    *,
    lr: Number,
    momentum: float,
    dampening: float,
    nesterov: bool,
    alpha: Number,
    beta: float,
    weight_decay: float,
    grad_scale: Tensor | None = None,
    maximize: bool = False,
    foreach: bool = False,
    fused: bool = False,
    e_sums: list[Tensor] | None = None,
) -> None:
    r"""One ESGD step (Algorithm 3 of the paper, with torch SGD's options) in place.

    .. math::
        u_k &= (g_k + \lambda\theta_k) + \alpha a_k \\
        m_k &= \mu\, m_{k-1} + (1 - \tau) u_k \quad (m_1 = u_1), \qquad
        \theta_{k+1} = \theta_k - \eta\,(u_k + \mu m_k \text{ if Nesterov else } m_k)

    The paper's ESGD has τ = 0 (no dampening). ``momentum_buffers`` entries that are None are
    created here (the caller stores them back into the state). ``foreach`` and ``fused`` pick the
    multi-tensor or the compiled kernels (at most one of them).
    """
    kernel = _pick_kernel("esgd", foreach, fused)
    kernel(
        params,
        grads,
        momentum_buffers,
        grad_emas,
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        alpha=alpha,
        beta=beta,
        weight_decay=weight_decay,
        grad_scale=grad_scale,
        maximize=maximize,
        e_sums=e_sums,
    )


# ---------------------------------------------------------------------------------------- utilities


def _pick_kernel(name: str, foreach: bool, fused: bool) -> Callable[..., None]:
    """The per-tensor loop, the foreach or the fused kernel of ``alto``, ``eadam`` or ``esgd``."""
    if foreach and fused:
        raise ValueError("foreach and fused cannot both be True; pick one path")
    if fused:
        return {"alto": _fused_alto, "eadam": _fused_eadam, "esgd": _fused_esgd}[name]
    if foreach:
        return {
            "alto": _multi_tensor_alto,
            "eadam": _multi_tensor_eadam,
            "esgd": _multi_tensor_esgd,
        }[name]
    return {
        "alto": _single_tensor_alto,
        "eadam": _single_tensor_eadam,
        "esgd": _single_tensor_esgd,
    }[name]
