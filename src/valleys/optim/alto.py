r"""ALTO (E + LAMB), ALTO Vanilla and Lamb: one kernel, three configurations.

Zhao, Li, Zhou, Tan, Jia, "Exploring Landscapes for Better Minima along Valleys", NeurIPS 2025,
Algorithms 1 (vanilla) and 2 (bias-corrected). ``Lamb`` is the same kernel with α = 0 and no E
buffer, so that ALTO-vs-Lamb comparisons measure exactly the effect of E.

:data:`PAPER_PRESETS` are the named configurations that walk from the Lamb of the paper's tables
(NUS-HPC-AI-Lab's LAMB, without bias correction) to ALTO as the paper's reference code runs it,
one change at a time; the registry offers them by name.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from ._sharding import sharded_norms
from ._validation import check_betas, check_non_negative

__all__ = ["ALTO", "PAPER_PRESETS", "Lamb", "Preset", "TrustRatio"]

TrustRatio = bool | Literal["decayed"]
"""Whether a group's updates take the trust ratio; ``"decayed"``: where its weight decay ≠ 0."""

_SHARED_DOC = r"""
    Args:
        params: parameters, or dicts defining parameter groups.
        lr: learning rate :math:`\eta` (a float, or a 0-d tensor to change it without recompiling).
        eps: :math:`\epsilon_1`, added to :math:`\sqrt{\hat v}`.
        weight_decay: :math:`\lambda`, decoupled, added to :math:`r` before the trust ratio.
        eps2: :math:`\epsilon_2` of the trust ratio's denominator.
        eps3: :math:`\epsilon_3` in :math:`\phi(x) = x + \epsilon_3`. With ``eps2 = eps3 = 0``
            the ratio is :math:`\lVert\theta\rVert/\lVert r\rVert`, and 1 where either norm
            is 0 (LAMB's rule, the reference code's).
        bias_correction: divide the moments by :math:`1-\beta^k` (False: Algorithm 1).
        trust_ratio: scale each tensor's update by the layer-wise trust ratio: True, False, or
            ``"decayed"``: only in groups whose ``weight_decay`` is not 0, as LAMB's reference
            code and the paper's reference ALTO do (where λ = 0 the step is a plain Adam-type one
            at the raw lr). The paper applies it to every tensor; with
            :math:`\phi(x) = x + \epsilon_3` a zero tensor (a zero-initialised bias) then
            practically never moves, which is why :func:`valleys.optim.param_groups` switches it
            off for norms, biases and 1-D tensors.
        max_grad_norm: clip the global gradient norm (over all the optimizer's gradients) to this
            value before anything else, on the device; None turns clipping off. The reference code
            always clips to 1.0, so the paper's numbers presumably ran with it.
        maximize: maximise the objective instead of minimising it.
        foreach: use the multi-tensor kernels; None picks them on accelerators and the per-tensor
            loop on the CPU (where foreach is slower).
        fused: use one ``torch.compile``\ d kernel per tensor (compiled on first use, once per
            group configuration; the fastest path on the CPU); exclusive with ``foreach=True``.
            None means False. A group of FSDP2 (DTensor) parameters with the trust ratio on
            always runs the multi-tensor kernel: its norms of all tensors come before any update,
            so one all-reduce serves them all (see :mod:`valleys.optim._sharding`).
        state_dtype: dtype of the state tensors where it differs from a (real) parameter's, e.g.
            ``torch.float32`` moments for bf16 parameters: the update is computed in it and
            rounded once into the parameter. None: the parameter's dtype.

    The per-group keys ``lr``, ``betas``, ``eps``, ``weight_decay``, ``eps2``, ``eps3``,
    ``bias_correction``, ``trust_ratio``, ``max_grad_norm``, ``maximize``, ``foreach``,
    ``fused`` and ``state_dtype`` may differ between groups and are saved in ``state_dict``.
    State per parameter:
    ``step`` (a float32 0-d tensor on the parameter's device), ``exp_avg``, ``exp_avg_sq``"""


class _LayerwiseAdaptive(ValleyOptimizer):
    """The shared ALTO/Lamb machinery; subclasses say how a group maps to the kernel's β1 and α."""

    def _explore(self, group: dict[str, Any]) -> tuple[float, float | Tensor]:
        """(β1, α) of E for ``group``; α = 0 means no E buffer and no transform; a tensor α is
        auto-E's."""
        raise NotImplementedError

    def _moment_betas(self, group: dict[str, Any]) -> tuple[float, float]:
        raise NotImplementedError

    def _validate_group(self, group: dict[str, Any]) -> None:
        for name in ("eps", "eps2", "eps3"):
            check_non_negative(name, group[name])
        mode = group["trust_ratio"]
        if not (isinstance(mode, bool) or mode == "decayed"):
            raise ValueError(f"Invalid trust_ratio: {mode!r}; expected True, False or 'decayed'")

    def _update_group(
        self, group: dict[str, Any], grad_scale: Tensor | None, e_sums: list[Tensor] | None
    ) -> None:
        trust_ratio = _takes_trust_ratio(group)
        beta1, alpha = self._explore(group)
        beta2, beta3 = self._moment_betas(group)
        t = self._moment_tensors(group, explores=e_active(alpha))
        if not t.params:
            return
        foreach, fused = resolve_paths(group, t.params)
        F.alto(
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
            eps2=group["eps2"],
            eps3=group["eps3"],
            bias_correction=group["bias_correction"],
            trust_ratio=trust_ratio,
            grad_scale=grad_scale,
            maximize=group["maximize"],
            foreach=foreach,
            fused=fused,
            e_sums=e_sums,
            reduce_norms=_reducer(t.owned) if trust_ratio else None,
        )


def _takes_trust_ratio(group: dict[str, Any]) -> bool:
    """Whether ``group``'s updates are scaled by the trust ratio (see ``trust_ratio``); decided
    from Python values alone, so no host synchronisation."""
    if group["trust_ratio"] == "decayed":
        return group["weight_decay"] != 0
    return bool(group["trust_ratio"])


def _reducer(params: list[Tensor]) -> F.NormReducer | None:
    """For FSDP2 parameters, what makes the trust ratio's norms those of the full tensors."""
    sharded = sharded_norms(params)
    return None if sharded is None else sharded.reduce


class ALTO(_LayerwiseAdaptive):
    r"""ALTO: the E adaptor inside LAMB (Algorithm 2 of Zhao et al., NeurIPS 2025).

    .. math::
        a_k &= \beta_1 a_{k-1} + (1-\beta_1)(g_k - g_{k-1}), \qquad u_k = g_k + \alpha a_k \\
        m_k &= \beta_2 m_{k-1} + (1-\beta_2) u_k, \qquad v_k = \beta_3 v_{k-1} + (1-\beta_3) u_k^2 \\
        r_k &= \frac{m_k/(1-\beta_2^k)}{\sqrt{v_k/(1-\beta_3^k)} + \epsilon_1} + \lambda\theta_k \\
        \theta_{k+1} &= \theta_k - \eta\, r_k\,
            \frac{\phi(\lVert\theta_k\rVert)}{\lVert r_k\rVert + \epsilon_2\phi(\lVert\theta_k\rVert)}

    E is kept as one buffer, the EMA :math:`e_k` of the raw gradients, using
    :math:`a_k = (1-\beta_1)(g_k - e_{k-1})`. α < 0 explores (large batches), α > 0 exploits
    (small batches); stability needs :math:`|\alpha| < 1/(1-\beta_1)`. The defaults are the paper's
    large-batch ones; :func:`valleys.optim.create_optimizer` picks α, β1 from the batch size.

    Args (besides the shared ones below):
        betas: (β1, β2, β3): E's factor, the first and the second moment's.
        alpha: E's α; 0 turns E off for a group (it then is Lamb); ``"auto"``: auto-E.
        target_perturbation: auto-E's ρ: α adapts after every step so that E's relative
            perturbation :math:`\lVert\hat g - g\rVert / \lVert g\rVert` stays near ρ, from
            ``alpha`` (its sign and start; ``"auto"``: explore, from :math:`\rho/(1-\beta_1)`),
            inside E's stable region (:mod:`valleys.optim.auto_e`). α is then a 0-d tensor in
            the group, read before a step as the α that step uses. None: α as given.
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float, float] = (0.99, 0.9, 0.99),
        alpha: float | Literal["auto"] = -5.0,
        eps: float = 1e-6,
        weight_decay: float = 1e-4,
        *,
        target_perturbation: float | None = None,
        eps2: float = 1e-6,
        eps3: float = 1e-10,
        bias_correction: bool = True,
        trust_ratio: TrustRatio = True,
        max_grad_norm: float | None = 1.0,
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
            eps2=eps2,
            eps3=eps3,
            bias_correction=bias_correction,
            trust_ratio=trust_ratio,
            max_grad_norm=max_grad_norm,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_betas(group["betas"], ("beta1", "beta2", "beta3"))
        auto_e.prepare_group(group)

    def _explore(self, group: dict[str, Any]) -> tuple[float, float | Tensor]:
        return group["betas"][0], group["alpha"]

    def _moment_betas(self, group: dict[str, Any]) -> tuple[float, float]:
        return group["betas"][1], group["betas"][2]


class Lamb(_LayerwiseAdaptive):
    r"""LAMB (You et al., ICLR 2020) as ALTO with α = 0: the same kernel, without E's buffer.

    .. math::
        m_k &= \beta_2 m_{k-1} + (1-\beta_2) g_k, \qquad v_k = \beta_3 v_{k-1} + (1-\beta_3) g_k^2 \\
        r_k &= \frac{m_k/(1-\beta_2^k)}{\sqrt{v_k/(1-\beta_3^k)} + \epsilon_1} + \lambda\theta_k, \qquad
        \theta_{k+1} = \theta_k - \eta\, r_k\,
            \frac{\phi(\lVert\theta_k\rVert)}{\lVert r_k\rVert + \epsilon_2\phi(\lVert\theta_k\rVert)}

    The defaults (betas (0.9, 0.99), eps 1e-6, clip 1.0, trust-ratio form) are ALTO's, so that a
    comparison with ALTO differs in E alone; pass ``betas=(0.9, 0.999)`` for LAMB's usual ones.

    Args (besides the shared ones below):
        betas: (β2, β3), the first and the second moment's factors (paper naming).
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-6,
        weight_decay: float = 1e-4,
        *,
        eps2: float = 1e-6,
        eps3: float = 1e-10,
        bias_correction: bool = True,
        trust_ratio: TrustRatio = True,
        max_grad_norm: float | None = 1.0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            eps2=eps2,
            eps3=eps3,
            bias_correction=bias_correction,
            trust_ratio=trust_ratio,
            max_grad_norm=max_grad_norm,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        check_betas(group["betas"], ("beta2", "beta3"))

    def _explore(self, group: dict[str, Any]) -> tuple[float, float | Tensor]:
        return 0.0, 0.0

    def _moment_betas(self, group: dict[str, Any]) -> tuple[float, float]:
        return group["betas"][0], group["betas"][1]


ALTO.__doc__ = f"{ALTO.__doc__}{_SHARED_DOC}, and ``grad_ema`` (E's buffer) while α ≠ 0.\n"
Lamb.__doc__ = f"{Lamb.__doc__}{_SHARED_DOC}.\n"


# ------------------------------------------------------------------------------------------ presets


@dataclass(frozen=True)
class Preset:
    """A named configuration of :class:`ALTO` or :class:`Lamb`: one registry entry."""

    name: str
    optimizer: type[_LayerwiseAdaptive]
    change: str
    """What it changes with respect to the preset before it in :data:`PAPER_PRESETS`."""
    update: str
    """Its update, written out (g: the gradient after global-norm clipping)."""
    settings: dict[str, Any]
    """Constructor arguments on top of the class's defaults."""
    base: str
    """The preset without E: its own name when it does not explore."""

    @property
    def description(self) -> str:
        """One line for the registry: the change and the update."""
        return f"{self.change}: {self.update}"


_REFERENCE_CODE = dict(
    eps=1e-6, weight_decay=1e-4, eps2=0.0, eps3=0.0, trust_ratio="decayed", max_grad_norm=1.0
)
"""What LAMB's reference code (NUS-HPC-AI-Lab/pytorch-lamb) and the paper's reference ALTO, its
edit, share: clip the global gradient norm to 1.0; ε = 1e-6 outside the root; the trust ratio
‖θ‖/‖r‖ (1 where a norm is 0) only where λ ≠ 0; λ = 1e-4 (the reference ALTO factory's)."""

_LAMB_STEP = "λ≠0: r = u + λθ, θ ← θ − η·(‖θ‖/‖r‖)·r (ratio 1 where a norm is 0); λ=0: θ ← θ − η·u"

PAPER_PRESETS: tuple[Preset, ...] = (
    Preset(
        "lamb_paper",
        Lamb,
        "the paper's Lamb (NUS-HPC-AI-Lab LAMB, no bias correction)",
        f"clip ‖g‖ to 1; m ← 0.9m + 0.1g, v ← 0.999v + 0.001g²; u = m/(√v + 1e-6); {_LAMB_STEP}",
        {**_REFERENCE_CODE, "betas": (0.9, 0.999), "bias_correction": False},
        "lamb_paper",
    ),
    Preset(
        "lamb_paper_bc",
        Lamb,
        "lamb_paper with bias correction",
        f"as lamb_paper with u = (m/(1−0.9^k))/(√(v/(1−0.999^k)) + 1e-6); {_LAMB_STEP}",
        {**_REFERENCE_CODE, "betas": (0.9, 0.999), "bias_correction": True},
        "lamb_paper_bc",
    ),
    Preset(
        "lamb_paper_bc_v99",
        Lamb,
        "lamb_paper_bc with β3 0.999 → 0.99 (ALTO's)",
        f"v ← 0.99v + 0.01g², u = (m/(1−0.9^k))/(√(v/(1−0.99^k)) + 1e-6); {_LAMB_STEP}",
        {**_REFERENCE_CODE, "betas": (0.9, 0.99), "bias_correction": True},
        "lamb_paper_bc_v99",
    ),
    Preset(
        # α, β1 (and β2 = 0.9, β3 = 0.99) are ALTO's defaults, so the paper's batch-size rule of
        # create_optimizer applies as for `alto`; from batch 1024 up they are the reference's.
        "alto_reference",
        ALTO,
        "lamb_paper_bc_v99 with E (the paper's reference ALTO)",
        "g replaced by ĝ = g + αa, a ← β1·a + (1−β1)(g − g_prev), α = −5, β1 = 0.99 (batch "
        f"≥ 1024); then as lamb_paper_bc_v99: {_LAMB_STEP}",
        {**_REFERENCE_CODE, "bias_correction": True},
        "lamb_paper_bc_v99",
    ),
)
r"""The walk from the paper's Lamb to the paper's reference ALTO, one change per step.

=====================  ===========================  ===============================================
name                   change                       update (g clipped to global norm 1; k = step)
=====================  ===========================  ===============================================
``lamb_paper``         LAMB as NUS-HPC-AI-Lab/      m ← 0.9m + 0.1g, v ← 0.999v + 0.001g²,
                       pytorch-lamb runs it         u = m / (√v + 1e-6)
``lamb_paper_bc``      + bias correction            u = (m/(1−0.9^k)) / (√(v/(1−0.999^k)) + 1e-6)
``lamb_paper_bc_v99``  β3 0.999 → 0.99              v ← 0.99v + 0.01g², u with 1−0.99^k
``alto_reference``     + E (α = −5, β1 = 0.99)      g → ĝ = g + α·a, a ← β1·a + (1−β1)(g − g_prev)
=====================  ===========================  ===============================================

Every step then ends the same way (LAMB, You et al., ICLR 2020, as its reference code runs it):
where the group's λ ≠ 0, :math:`r = u + \lambda\theta` and
:math:`\theta \leftarrow \theta - \eta\,(\lVert\theta\rVert/\lVert r\rVert)\,r` (ratio 1
where a norm is 0, no clamp); where λ = 0 (norms, biases, 1-D tensors of
:func:`valleys.optim.param_groups`, or plain parameters with ``weight_decay=0``),
:math:`\theta \leftarrow \theta - \eta u`: ``trust_ratio="decayed"`` with
``eps2 = eps3 = 0``. ``alto_reference`` equals the reference package's ``ALTO`` (as its
``create_ALTO_optimizer`` builds it); ``alto`` differs from it in the trust ratio alone: the
paper's :math:`\epsilon_2 = 10^{-6}`, :math:`\epsilon_3 = 10^{-10}`, and a ratio wherever
``trust_ratio`` is True, whatever λ.
"""
