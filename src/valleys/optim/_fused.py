r"""The fused path: ALTO/Lamb, EAdam(W) and ESGD steps as one ``torch.compile``\ d kernel per tensor.

Each step is memory-bound, so what matters is how often each buffer crosses the memory bus. The
per-tensor loop and the foreach path run one kernel per operation and re-read ``p``, ``g``, ``m``,
``v`` and E's buffer many times; here Inductor fuses a tensor's whole update into one loop over
its elements. With the trust ratio, that loop also accumulates the two norms and writes the update;
a second loop scales it and writes the parameter: about 48 bytes of traffic per fp32 parameter for
ALTO, against 28 for a fused AdamW.

Compilation is kept out of the hot path:

- tensors are passed flattened to 1-D and compiled with ``dynamic=True``, so every size shares one
  graph (sizes 0 and 1 get their own), and as plain tensors rather than views, so that the rank
  of the parameter they view does not make a graph of its own either;
- ``lr``, the bias corrections, weight decay and E's scalars (from α and β1) are 0-d tensor
  inputs, so LR, α and β1 schedules, auto-E and the step counter never recompile; the kernels are
  keyed on structural flags only (whether weight decay is on, the trust ratio, ``maximize``, ...),
  and the moment factors β2, β3 and the ε are compile-time constants;
- each static configuration (and whether clipping is on) gets its own compiled function (see
  :func:`_kernel`), so a model with several parameter groups does not run into Dynamo's
  per-function recompile limit; were it reached, the kernel runs uncompiled for the new inputs;
- nothing is compiled at import time, only on the first step that needs a configuration.

The bias corrections :math:`1/(1-\beta_2^k)` and :math:`1/\sqrt{1-\beta_3^k}` are computed for a
whole group at once outside the kernels: inside, Inductor would recompute the ``pow`` for every
vector of elements.

With E's telemetry on (``e_sums``, see ``_telemetry.py``), a kernel compiled for it also returns
its tensor's three sums of squares, accumulated in the loop that already reads g and computes ĝ.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from ._e import grad_hat
from ._kernel_inputs import EScalars, _scalar_tensor, _step_scalars, _variable_scalars
from ._ops import Number, _group_by_device_and_dtype, _moments_, _opmath, _scaled, _trust_ratio
from ._telemetry import perturbation_sums

_KERNELS: dict[tuple[Any, ...], Callable[..., Any]] = {}

LARGE_BYTES = 32 << 20
"""Tensors from this size up run ALTO without a temporary of their size (see :func:`_fused_alto`).
glibc serves allocations of 32 MiB and more (its largest mmap threshold on 64-bit) straight from
the OS and returns them on free, so such a temporary costs page faults on every step; smaller
ones reuse heap memory."""

CHUNK = 1 << 18
"""Elements per chunk of a large tensor: five buffers of this many fp32 values (5 MiB) stay in
the cache between the two loops Inductor makes of a chunk."""


def _kernel(
    factory: Callable[..., Callable[..., Any]], config: tuple[Any, ...], tensors: tuple[Any, ...]
) -> Callable[..., Any]:
    """The compiled per-tensor kernel ``factory(*config)`` for ``tensors`` (their device type and
    dtype, and which optional inputs are None), created on first use and kept.

    The structural flags and the constant hyperparameters of ``config`` are closure constants,
    compiled in as constants (see :func:`_constant_floats`); what a schedule may change is a 0-d
    tensor argument instead (``_kernel_inputs.py``), so it never adds a configuration. Dynamo
    caches compiled graphs on the *code object* and stops compiling (falling back to eager)
    after a few recompiles per code object, so each configuration gets a fresh copy of the
    kernel's code and with it its own cache. Inductor's size asserts are off: they cost more per
    call than the arguments' checks they repeat. When an enclosing ``torch.compile`` is tracing
    the optimizer step, the kernel is returned uncompiled: the outer compile fuses it.

    Not ``fullgraph=True``: these kernels are shared by every optimizer in the process with the
    same flags, so a long-lived one (a notebook, a study worker) may bring more input
    variants (sizes 0 and 1, non-contiguous layouts of any rank) than Dynamo's recompile limit.
    With ``fullgraph=True`` the next one raises; without, Dynamo does what ``torch.compile`` users
    know: it logs the limit once and runs new variants eagerly (the same math), the compiled ones
    staying compiled. That the kernels trace without graph breaks is tested.
    """
    if torch.compiler.is_compiling():
        return factory(*config)
    key = (factory.__name__, *config, *tensors)
    kernel = _KERNELS.get(key)
    if kernel is None:
        fn = factory(*config)
        name = f"{fn.__name__}_{len(_KERNELS)}"
        code = fn.__code__.replace(co_name=name)
        copy = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
        kernel = torch.compile(copy, dynamic=True, options={"size_asserts": False})
        _KERNELS[key] = kernel
    return kernel


def _constant_floats() -> AbstractContextManager[Any]:
    """A context in which Dynamo compiles Python floats as constants.

    Newer torch versions default to ``specialize_float=False``, which turns every float the kernel
    reads (here: its hyperparameters) into a tensor created on each call, a cost of about 2 µs per
    float per tensor per step. Entered once per group and step, not per tensor; not entered while
    an enclosing ``torch.compile`` traces the step.
    """
    if torch.compiler.is_compiling() or getattr(torch._dynamo.config, "specialize_float", True):
        return contextlib.nullcontext()
    return torch._dynamo.config.patch(specialize_float=True)


def _flat(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """1-D aliases of one parameter's tensors (one graph for every shape) when all of them are
    contiguous; otherwise the tensors as they are (e.g. a transposed parameter with a contiguous
    gradient), so that their shapes still match.

    ``detach`` makes each alias a tensor of its own rather than a view: Dynamo guards on the
    shape of a view input's base, so every rank of parameter would compile another graph.
    """
    if all(t is None or t.is_contiguous() for t in tensors):
        return tuple(None if t is None else t.view(-1).detach() for t in tensors)
    return tensors


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _explore(
    grad: Tensor, grad_ema: Tensor, coefficient: Tensor, ema_factor: Tensor, from_grad: Tensor
) -> Tensor:
    r""":math:`\hat g` (:func:`valleys.optim._e.grad_hat`), and E's buffer advanced in place,
    :math:`e \leftarrow e + (1-\beta_1)(g - e)`, from the scalars of
    :func:`~valleys.optim._kernel_inputs._e_scalars`."""
    ghat = grad_hat(grad, grad_ema, coefficient)
    grad_ema.copy_(ema_factor * (grad - grad_ema) + torch.where(from_grad, grad, grad_ema))
    return ghat


# --------------------------------------------------------------------------------------------- ALTO


def _alto_update(
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    m_scale: Tensor | None,
    v_scale: Tensor | None,
    eps: float,
    weight_decay: Tensor | None,
) -> Tensor:
    r""":math:`r = \hat m / (\sqrt{\hat v} + \epsilon_1) + \lambda\theta`; no bias correction when
    the scales are None, no decay term when ``weight_decay`` is None."""
    if m_scale is not None and v_scale is not None:
        update = exp_avg * m_scale / (exp_avg_sq.sqrt() * v_scale + eps)
    else:
        update = exp_avg / (exp_avg_sq.sqrt() + eps)
    if weight_decay is not None:
        update = update + weight_decay * param
    return update


def _alto_moments(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    grad_ema: Tensor | None,
    grad_scale: Tensor | None,
    e_scalars: EScalars | None,
    beta2: float,
    beta3: float,
    maximize: bool,
    telemetry: bool,
) -> Tensor | None:
    """Clip, E (with :func:`_e_scalars`), and the two moments, in place; E's telemetry sums when
    ``telemetry``."""
    grad = _scaled(grad, grad_scale, maximize)
    if grad_ema is None or e_scalars is None:
        _moments_(exp_avg, exp_avg_sq, grad, beta2, beta3)
        return None
    ghat = _explore(grad, grad_ema, *e_scalars)
    _moments_(exp_avg, exp_avg_sq, ghat, beta2, beta3)
    return perturbation_sums(grad, ghat) if telemetry else None


def _alto_kernel(
    beta2: float,
    beta3: float,
    eps: float,
    eps2: float,
    eps3: float,
    trust_ratio: bool,
    maximize: bool,
    telemetry: bool,
) -> Callable[..., Tensor | None]:
    """One tensor's ALTO step for fixed flags: the math of ``_single_tensor_alto`` with the bias
    corrections passed in as multipliers (None: no bias correction), E's scalars and the weight
    decay as 0-d tensors (None: off); returns E's telemetry sums when ``telemetry``."""

    def alto_tensor(
        param: Tensor,
        grad: Tensor,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        grad_ema: Tensor | None,
        lr: Tensor,
        grad_scale: Tensor | None,
        m_scale: Tensor | None,
        v_scale: Tensor | None,
        e_scalars: EScalars | None,
        weight_decay: Tensor | None,
    ) -> Tensor | None:
        sums = _alto_moments(
            param, grad, exp_avg, exp_avg_sq, grad_ema, grad_scale, e_scalars, beta2, beta3,
            maximize, telemetry,
        )  # fmt: skip
        update = _alto_update(param, exp_avg, exp_avg_sq, m_scale, v_scale, eps, weight_decay)
        if trust_ratio:
            dtype = _opmath(param.dtype)
            update = update * _trust_ratio(
                torch.linalg.vector_norm(param, dtype=dtype),
                torch.linalg.vector_norm(update, dtype=dtype),
                eps2,
                eps3,
            )
        param.sub_(update * lr)
        return sums

    return alto_tensor


def _alto_chunk_kernel(
    beta2: float,
    beta3: float,
    eps: float,
    maximize: bool,
    telemetry: bool,
) -> Callable[..., tuple[Tensor, Tensor, Tensor | None]]:
    """For a chunk of a large tensor: clip, E and the moments in place; return the chunk's sums of
    squares of the parameter and of the update (the trust ratio's norms, in pieces), and E's
    telemetry sums when ``telemetry``."""

    def alto_chunk(
        param: Tensor,
        grad: Tensor,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        grad_ema: Tensor | None,
        grad_scale: Tensor | None,
        m_scale: Tensor | None,
        v_scale: Tensor | None,
        e_scalars: EScalars | None,
        weight_decay: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        sums = _alto_moments(
            param, grad, exp_avg, exp_avg_sq, grad_ema, grad_scale, e_scalars, beta2, beta3,
            maximize, telemetry,
        )  # fmt: skip
        update = _alto_update(param, exp_avg, exp_avg_sq, m_scale, v_scale, eps, weight_decay)
        dtype = _opmath(param.dtype)
        return param.to(dtype).square().sum(), update.to(dtype).square().sum(), sums

    return alto_chunk


def _alto_apply_kernel(eps: float, eps2: float, eps3: float) -> Callable[..., None]:
    """For a large tensor whose moments are updated: move the parameter by the trust-ratio-scaled
    update, recomputed from the moments."""

    def alto_apply(
        param: Tensor,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        lr: Tensor,
        m_scale: Tensor | None,
        v_scale: Tensor | None,
        param_sq: Tensor,
        update_sq: Tensor,
        weight_decay: Tensor | None,
    ) -> None:
        ratio = _trust_ratio(param_sq.sqrt(), update_sq.sqrt(), eps2, eps3)
        update = _alto_update(param, exp_avg, exp_avg_sq, m_scale, v_scale, eps, weight_decay)
        param.sub_(update * (ratio * lr))

    return alto_apply


def _fused_alto(
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
    r"""ALTO with one compiled kernel per tensor.

    With the trust ratio, the update is needed twice: for its norm, then to move the parameter.
    For ordinary tensors the kernel writes it to a temporary in its first loop and reads it back in
    the second, the least traffic. A temporary of :data:`LARGE_BYTES` or more would be mapped from
    the OS page by page on every step, so large contiguous tensors instead run in two phases: the
    moments and partial norms chunk by chunk (each chunk's second read comes from the cache), then
    one loop that recomputes the update from the moments and moves the parameter.
    """
    telemetry = e_sums is not None and grad_emas is not None
    for (device, dtype), idx in _group_by_device_and_dtype(params).items():
        lr_t, m_scales, v_scales = _step_scalars(
            [steps[i] for i in idx], lr, device, dtype, beta2, beta3, bias_correction
        )
        variable = _variable_scalars(grad_emas, alpha, beta1, weight_decay, lr_t)
        tensors = (device.type, dtype, grad_scale is None, bias_correction)
        kernel = _kernel(
            _alto_kernel, (beta2, beta3, eps, eps2, eps3, trust_ratio, maximize, telemetry), tensors
        )
        with _constant_floats():
            for j, i in enumerate(idx):
                views = _flat(
                    params[i],
                    grads[i],
                    exp_avgs[i],
                    exp_avg_sqs[i],
                    grad_emas[i] if grad_emas is not None else None,
                )
                scales = (m_scales[j], v_scales[j])
                large = _nbytes(params[i]) >= LARGE_BYTES and views[0].dim() == 1
                if trust_ratio and large and not torch.compiler.is_compiling():
                    chunk = _kernel(
                        _alto_chunk_kernel, (beta2, beta3, eps, maximize, telemetry), tensors
                    )
                    apply = _kernel(_alto_apply_kernel, (eps, eps2, eps3), tensors)
                    sums = _alto_two_phase(chunk, apply, views, lr_t, grad_scale, scales, variable)
                else:
                    sums = kernel(*views, lr_t, grad_scale, *scales, *variable)
                if e_sums is not None and sums is not None:
                    e_sums.append(sums)


def _alto_two_phase(
    chunk: Callable[..., tuple[Tensor, Tensor, Tensor | None]],
    apply: Callable[..., None],
    views: tuple[Tensor | None, ...],
    lr: Tensor,
    grad_scale: Tensor | None,
    scales: tuple[Tensor | None, Tensor | None],
    variable: tuple[EScalars | None, Tensor | None],
) -> Tensor | None:
    """ALTO on one large 1-D tensor: moments and partial norms by chunks, then the step; E's
    telemetry sums of the whole tensor when the chunks return them."""
    p, g, m, v, e = views
    assert p is not None and g is not None and m is not None and v is not None
    chunks = [t.split(CHUNK) for t in (p, g, m, v)]
    e_chunks = e.split(CHUNK) if e is not None else [None] * len(chunks[0])
    results = [
        chunk(pc, gc, mc, vc, ec, grad_scale, *scales, *variable)
        for pc, gc, mc, vc, ec in zip(*chunks, e_chunks, strict=True)
    ]
    param_sq, update_sq = torch.stack([torch.stack(r[:2]) for r in results]).sum(0)
    apply(p, m, v, lr, *scales, param_sq, update_sq, variable[1])
    e_sums = [r[2] for r in results if r[2] is not None]
    return torch.stack(e_sums).sum(0) if e_sums else None


# -------------------------------------------------------------------------------------------- EAdam


def _eadam_kernel(
    beta2: float,
    beta3: float,
    eps: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    telemetry: bool,
) -> Callable[..., Tensor | None]:
    """One tensor's EAdam(W) step for fixed flags: the math of ``_single_tensor_eadam`` with the
    bias corrections passed in as multipliers, E's scalars and the weight decay as 0-d tensors
    (None: off); returns E's telemetry sums when ``telemetry``."""

    def eadam_tensor(
        param: Tensor,
        grad: Tensor,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        grad_ema: Tensor | None,
        lr: Tensor,
        grad_scale: Tensor | None,
        m_scale: Tensor,
        v_scale: Tensor,
        e_scalars: EScalars | None,
        weight_decay: Tensor | None,
    ) -> Tensor | None:
        grad = _scaled(grad, grad_scale, maximize)
        if weight_decay is not None:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad + weight_decay * param
        ghat = grad
        if grad_ema is not None and e_scalars is not None:
            ghat = _explore(grad, grad_ema, *e_scalars)
        _moments_(exp_avg, exp_avg_sq, ghat, beta2, beta3)
        param.sub_(exp_avg * (m_scale * lr) / (exp_avg_sq.sqrt() * v_scale + eps))
        return perturbation_sums(grad, ghat) if telemetry else None

    return eadam_tensor


def _fused_eadam(
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
    """EAdam(W) with one compiled kernel per tensor (one loop over its elements)."""
    telemetry = e_sums is not None and grad_emas is not None
    config = (beta2, beta3, eps, decoupled_weight_decay, maximize, telemetry)
    for (device, dtype), idx in _group_by_device_and_dtype(params).items():
        lr_t, m_scales, v_scales = _step_scalars(
            [steps[i] for i in idx], lr, device, dtype, beta2, beta3, bias_correction=True
        )
        variable = _variable_scalars(grad_emas, alpha, beta1, weight_decay, lr_t)
        kernel = _kernel(_eadam_kernel, config, (device.type, dtype, grad_scale is None))
        with _constant_floats():
            for j, i in enumerate(idx):
                sums = kernel(
                    *_flat(
                        params[i],
                        grads[i],
                        exp_avgs[i],
                        exp_avg_sqs[i],
                        grad_emas[i] if grad_emas is not None else None,
                    ),
                    lr_t,
                    grad_scale,
                    m_scales[j],
                    v_scales[j],
                    *variable,
                )
                if e_sums is not None and sums is not None:
                    e_sums.append(sums)


# --------------------------------------------------------------------------------------------- ESGD


def _esgd_kernel(
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    telemetry: bool,
    first: bool,
) -> Callable[..., Tensor | None]:
    """One tensor's ESGD step for fixed flags: the math of ``_single_tensor_esgd``, with E's
    scalars and the weight decay as 0-d tensors (None: off). ``first``: the momentum buffer is
    new (uninitialised) and starts as the gradient. Returns E's telemetry sums when
    ``telemetry``."""

    def esgd_tensor(
        param: Tensor,
        grad: Tensor,
        momentum_buffer: Tensor | None,
        grad_ema: Tensor | None,
        lr: Tensor,
        grad_scale: Tensor | None,
        e_scalars: EScalars | None,
        weight_decay: Tensor | None,
    ) -> Tensor | None:
        grad = _scaled(grad, grad_scale, maximize)
        if weight_decay is not None:
            grad = grad + weight_decay * param
        update = grad
        if grad_ema is not None and e_scalars is not None:
            update = _explore(grad, grad_ema, *e_scalars)
        sums = perturbation_sums(grad, update) if telemetry else None
        if momentum_buffer is not None:
            if first:
                momentum_buffer.copy_(update)
            else:
                momentum_buffer.mul_(momentum).add_(update, alpha=1 - dampening)
            update = update + momentum * momentum_buffer if nesterov else momentum_buffer
        param.sub_(update * lr)
        return sums

    return esgd_tensor


def _fused_esgd(
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
    """ESGD with one compiled kernel per tensor; new momentum buffers are created here (the
    caller stores them back into the state), their first step copies the gradient in."""
    telemetry = e_sums is not None and grad_emas is not None
    config = (momentum, dampening, nesterov, maximize, telemetry)
    for (device, dtype), idx in _group_by_device_and_dtype(params).items():
        lr_t = _scalar_tensor(lr, _opmath(dtype), device)
        variable = _variable_scalars(grad_emas, alpha, beta, weight_decay, lr_t)
        tensors = (device.type, dtype, grad_scale is None)
        kernels = {
            first: _kernel(_esgd_kernel, (*config, first), tensors) for first in (False, True)
        }
        with _constant_floats():
            for i in idx:
                first = momentum != 0 and momentum_buffers[i] is None
                if first:
                    momentum_buffers[i] = torch.empty_like(grads[i])
                sums = kernels[first](
                    *_flat(
                        params[i],
                        grads[i],
                        momentum_buffers[i] if momentum != 0 else None,
                        grad_emas[i] if grad_emas is not None else None,
                    ),
                    lr_t,
                    grad_scale,
                    *variable,
                )
                if e_sums is not None and sums is not None:
                    e_sums.append(sums)


# ------------------------------------------------------------------------------------------ Explore


def _explore_kernel(telemetry: bool) -> Callable[..., Tensor | None]:
    r"""Write E's :math:`\hat g` (:func:`valleys.optim._e.grad_hat`) into ``out``, in one pass,
    with the coefficient :math:`c` as a 0-d tensor; return E's telemetry sums when
    ``telemetry``."""

    def explore_tensor(
        out: Tensor, grad: Tensor, grad_ema: Tensor, coefficient: Tensor
    ) -> Tensor | None:
        ghat = grad_hat(grad, grad_ema, coefficient)
        out.copy_(ghat)
        return perturbation_sums(grad, ghat) if telemetry else None

    return explore_tensor


def fused_grad_hat(
    grads: list[Tensor],
    emas: list[Tensor],
    coefficient: Number,
    out: list[Tensor],
    e_sums: list[Tensor] | None = None,
) -> None:
    """:func:`valleys.optim._e.grad_hat_multi` with one compiled kernel per tensor (Explore's
    fused path): reads ``g`` and ``e`` once, writes ``ĝ`` into ``out``; appends E's telemetry
    sums to ``e_sums`` when given."""
    for (device, dtype), idx in _group_by_device_and_dtype(grads).items():
        kernel = _kernel(_explore_kernel, (e_sums is not None,), (device.type, dtype))
        c = _scalar_tensor(coefficient, _opmath(dtype), device)
        with _constant_floats():
            for i in idx:
                sums = kernel(*_flat(out[i], grads[i], emas[i]), c)
                if e_sums is not None and sums is not None:
                    e_sums.append(sums)
