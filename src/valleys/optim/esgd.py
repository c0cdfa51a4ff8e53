r"""ESGD: SGD with momentum on E's transformed gradient (Algorithm 3 of the paper)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from . import _functional as F
from . import auto_e
from ._base import (
    Params,
    ValleyOptimizer,
    as_real,
    group_lr,
    resolve_paths,
    state_dtype_for,
    update_grad,
    zeros_state,
)
from ._e_group import e_active
from ._sharding import as_dtensor_like
from ._validation import check_beta

__all__ = ["ESGD"]


class ESGD(ValleyOptimizer):
    r"""SGD on E's gradient (Zhao et al., NeurIPS 2025, Algorithm 3), with torch SGD's options.

    .. math::
        u_k &= (g_k + \lambda\theta_k) + \alpha a_k, \qquad
            a_k = \beta a_{k-1} + (1-\beta)(g_k - g_{k-1}) \\
        m_k &= \mu\, m_{k-1} + (1-\tau) u_k \quad (m_1 = u_1) \\
        \theta_{k+1} &= \theta_k - \eta\,(u_k + \mu m_k \text{ if Nesterov, else } m_k)

    The paper's ESGD is τ = 0 (no dampening; μ is its β2, and μ = 0 means no momentum). With α = 0
    this is ``torch.optim.SGD``.

    Args:
        params: parameters, or dicts defining parameter groups.
        lr: learning rate η (a float, or a 0-d tensor).
        momentum: μ.
        alpha: E's α; 0 turns E off for a group. Stability needs |α| < 1/(1 − β). ``"auto"``:
            auto-E (see ``target_perturbation``).
        beta: E's β (β1 in the paper).
        dampening: τ, as in torch SGD.
        weight_decay: λ, an L2 penalty added to the gradient before E.
        nesterov: Nesterov momentum (needs μ > 0 and τ = 0).
        target_perturbation: auto-E's ρ: α adapts after every step so that E's relative
            perturbation ‖ĝ − g‖/‖g‖ stays near ρ, from ``alpha`` (its sign and start;
            ``"auto"``: explore, from ρ/(1 − β)), inside E's stable region
            (:mod:`valleys.optim.auto_e`); α is then a 0-d tensor in the group. None: α as given.
        max_grad_norm: clip the global gradient norm first, on the device; None: no clipping.
        maximize: maximise the objective.
        foreach: multi-tensor kernels; None picks them on accelerators, the loop on the CPU.
        fused: one ``torch.compile``\ d kernel per tensor (compiled on first use; the fastest path
            on the CPU); exclusive with ``foreach=True``. None means False.

    State per parameter: ``momentum_buffer`` while μ ≠ 0, ``grad_ema`` while α ≠ 0.
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        alpha: float | Literal["auto"] = -5.0,
        beta: float = 0.99,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        target_perturbation: float | None = None,
        max_grad_norm: float | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            alpha=alpha,
            beta=beta,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            target_perturbation=target_perturbation,
            max_grad_norm=max_grad_norm,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_beta("momentum", group["momentum"])
        check_beta("dampening", group["dampening"])
        check_beta("beta", group["beta"])
        auto_e.prepare_group(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Invalid nesterov=True: Nesterov momentum needs momentum > 0 and dampening = 0"
            )

    def _update_group(
        self, group: dict[str, Any], grad_scale: Tensor | None, e_sums: list[Tensor] | None
    ) -> None:
        alpha, momentum = group["alpha"], group["momentum"]
        explores = e_active(alpha)
        params: list[Tensor] = []
        grads: list[Tensor] = []
        buffers: list[Tensor | None] = []
        emas: list[Tensor] = []
        owners: list[dict[str, Any]] = []
        owned: list[Tensor] = []
        is_complex: list[bool] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            # Without E and momentum there is no state: like torch's SGD, no (empty) entry.
            state = self.state[p] if explores or momentum != 0 else {}
            dtype = state_dtype_for(group, p)
            if explores and "grad_ema" not in state:
                state["grad_ema"] = zeros_state(p, dtype)
            params.append(as_real(p))
            grads.append(update_grad(p, dtype))
            buf = state.get("momentum_buffer")
            buffers.append(None if buf is None else as_real(buf))
            owners.append(state)
            owned.append(p)
            is_complex.append(torch.is_complex(p))
            if explores:
                emas.append(as_real(state["grad_ema"]))
        if not params:
            return
        foreach, fused = resolve_paths(group, params)
        F.esgd(
            params,
            grads,
            buffers,
            emas if explores else None,
            lr=group_lr(group),
            momentum=momentum,
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            alpha=alpha,
            beta=group["beta"],
            weight_decay=group["weight_decay"],
            grad_scale=grad_scale,
            maximize=group["maximize"],
            foreach=foreach,
            fused=fused,
            e_sums=e_sums,
        )
        if momentum != 0:
            for state, param, complex_param, buf in zip(
                owners, owned, is_complex, buffers, strict=True
            ):
                if "momentum_buffer" not in state and buf is not None:
                    # Created on a real view; stored in the parameter's own dtype for state_dict.
                    buf = torch.view_as_complex(buf) if complex_param else buf
                    state["momentum_buffer"] = as_dtensor_like(buf, param)
