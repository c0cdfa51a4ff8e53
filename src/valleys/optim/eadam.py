r"""EAdam and EAdamW: Adam / AdamW run on E's transformed gradient (Algorithm 4 of the paper)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from . import _functional as F
from . import auto_e
from ._base import (
    Params,
    ValleyOptimizer,
    group_lr,
    resolve_paths,
)
from ._e_group import e_active
from ._validation import check_betas, check_non_negative

__all__ = ["EAdam", "EAdamW"]


class EAdam(ValleyOptimizer):
    r"""Adam on E's gradient (Zhao et al., NeurIPS 2025, Algorithm 4).

    .. math::
        g_k &\leftarrow g_k + \lambda\theta_k \quad\text{(L2 penalty, before E)} \\
        u_k &= g_k + \alpha a_k, \qquad a_k = \beta_1 a_{k-1} + (1-\beta_1)(g_k - g_{k-1}) \\
        m_k &= \beta_2 m_{k-1} + (1-\beta_2) u_k, \qquad v_k = \beta_3 v_{k-1} + (1-\beta_3) u_k^2 \\
        \theta_{k+1} &= \theta_k - \eta\,\frac{m_k/(1-\beta_2^k)}{\sqrt{v_k/(1-\beta_3^k)} + \epsilon}

    With α = 0 this is ``torch.optim.Adam`` (ε outside the root, the same bias corrections).

    Args:
        params: parameters, or dicts defining parameter groups.
        lr: learning rate η (a float, or a 0-d tensor).
        betas: (β1, β2, β3): E's factor, the first and the second moment's.
        alpha: E's α; 0 turns E off for a group. Stability needs |α| < 1/(1 − β1). ``"auto"``:
            auto-E (see ``target_perturbation``).
        target_perturbation: auto-E's ρ: α adapts after every step so that E's relative
            perturbation ‖ĝ − g‖/‖g‖ stays near ρ, from ``alpha`` (its sign and start;
            ``"auto"``: explore, from ρ/(1 − β1)), inside E's stable region
            (:mod:`valleys.optim.auto_e`); α is then a 0-d tensor in the group. None: α as given.
        eps: added to the root of the second moment.
        weight_decay: λ, added to the gradient (EAdam) or decoupled (EAdamW).
        max_grad_norm: clip the global gradient norm first, on the device; None: no clipping.
        maximize: maximise the objective.
        foreach: multi-tensor kernels; None picks them on accelerators, the loop on the CPU.
        fused: one ``torch.compile``\ d kernel per tensor (compiled on first use; the fastest path
            on the CPU); exclusive with ``foreach=True``. None means False.

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` and, while α ≠ 0, ``grad_ema``.
    """

    _decoupled = False

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float, float] = (0.99, 0.9, 0.999),
        alpha: float | Literal["auto"] = -5.0,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
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
            betas=tuple(betas),
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            target_perturbation=target_perturbation,
            max_grad_norm=max_grad_norm,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        check_non_negative("eps", group["eps"])
        check_betas(group["betas"], ("beta1", "beta2", "beta3"))
        auto_e.prepare_group(group)

    def _update_group(
        self, group: dict[str, Any], grad_scale: Tensor | None, e_sums: list[Tensor] | None
    ) -> None:
        beta1, beta2, beta3 = group["betas"]
        alpha = group["alpha"]
        t = self._moment_tensors(group, explores=e_active(alpha))
        if not t.params:
            return
        foreach, fused = resolve_paths(group, t.params)
        F.eadam(
            t.params,
            t.grads,
            t.exp_avgs,
            t.exp_avg_sqs,
            t.emas,
            t.steps,
            lr=group_lr(group),
            beta1=beta1,
            beta2=beta2,
            beta3=beta3,
            alpha=alpha,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled_weight_decay=self._decoupled,
            grad_scale=grad_scale,
            maximize=group["maximize"],
            foreach=foreach,
            fused=fused,
            e_sums=e_sums,
        )


class EAdamW(EAdam):
    r"""AdamW on E's gradient: :class:`EAdam` with decoupled weight decay (Loshchilov & Hutter).

    .. math::
        \theta_k \leftarrow (1 - \eta\lambda)\theta_k, \text{ then the EAdam step without the L2 term.}

    With α = 0 this is ``torch.optim.AdamW``. Defaults as EAdam's, with ``weight_decay=1e-2``.
    """

    _decoupled = True

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float, float] = (0.99, 0.9, 0.999),
        alpha: float | Literal["auto"] = -5.0,
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        target_perturbation: float | None = None,
        max_grad_norm: float | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            alpha,
            eps,
            weight_decay,
            target_perturbation=target_perturbation,
            max_grad_norm=max_grad_norm,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
        )
