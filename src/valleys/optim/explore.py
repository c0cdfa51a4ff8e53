r"""Explore: the E adaptor around any torch optimizer.

Zhao et al., "Exploring Landscapes for Better Minima along Valleys", NeurIPS 2025. E replaces each
gradient :math:`g_k` the base optimizer sees by

.. math::
    \hat g_k = g_k + \alpha a_k, \qquad a_k = \beta a_{k-1} + (1-\beta)(g_k - g_{k-1}),

kept as one buffer per parameter, the EMA :math:`e_k` of the raw gradients:
:math:`\hat g_k = g_k + \alpha(1-\beta)(g_k - e_{k-1})`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from itertools import chain
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import auto_e
from ._base import as_real, resolve_foreach, zeros_state
from ._e import advance_, advance_multi_, ghat_coefficient, grad_hat, grad_hat_multi
from ._e_group import e_active
from ._fused import fused_grad_hat
from ._stepping import evaluate_closure, without_global_step_hooks
from ._telemetry import ETelemetry, perturbation_sums, perturbation_sums_multi
from ._validation import check_beta

__all__ = ["Explore"]

_PREFIX = "explore_"


class Explore(ETelemetry, Optimizer):
    r"""Wrap a torch optimizer so that it steps on E's gradient :math:`\hat g` instead of :math:`g`.

    .. math::
        \hat g_k = g_k + \alpha a_k, \qquad a_k = \beta a_{k-1} + (1-\beta)(g_k - g_{k-1}),
        \qquad a_0 = g_0 = 0

    Works with any ``torch.optim.Optimizer`` instance (SGD, Adam, AdamW with ``foreach`` or
    ``fused``, Adagrad, RMSprop, Adafactor, third-party ones). It shares the base optimizer's
    ``param_groups``: α and β are the per-group keys ``explore_alpha`` and ``explore_beta``
    (namespaced because RMSprop and ASGD already own an ``alpha``; saved, schedulable; α = 0
    switches E off for a group), and an LR scheduler may be attached to either object.

    A step evaluates the closure once (grad enabled), computes :math:`\hat g` into a new tensor per
    parameter, lends it to the base optimizer as ``p.grad`` for the duration of its step, puts the
    user's gradient tensor back, and only then advances E's buffer. The user's gradients are never
    written (DDP's ``gradient_as_bucket_view`` buckets and any reference to them stay intact), and a
    raising base step leaves the gradients and E's state as they were. Cost per step: one
    parameter-sized temporary, and 24 bytes of traffic per fp32 parameter besides the base step
    (read g and e, write ĝ; afterwards read g and e, write e). Under ``torch.amp.GradScaler`` the
    scaler unscales the shared ``param_groups`` before the step and skips ``step()`` entirely on
    inf/NaN, so E sees unscaled gradients and does not advance on skipped steps. Under FSDP2 the
    gradients and E's buffers are DTensors; E is elementwise and runs on their local shards.

    ``state`` holds E's buffers (``grad_ema``); the base optimizer's state is
    ``explore.optimizer.state``. ``state_dict()`` is the base optimizer's, with E's buffer added to
    each parameter's entry as ``explore_grad_ema``, so checkpoint tools that expect the usual
    ``{"state", "param_groups"}`` layout keep working.

    ``enable_telemetry()`` makes every step record how far E moved the gradients the base optimizer
    sees, read with ``e_telemetry()`` (:class:`~valleys.optim._telemetry.ETelemetry`). Under auto-E
    (``target_perturbation``, the group key ``explore_target_perturbation``) a group's
    ``explore_alpha`` is a 0-d tensor that adapts after each successful step
    (:mod:`valleys.optim.auto_e`).

    Args:
        optimizer: the base optimizer instance.
        alpha: E's α (< 0 explores, > 0 exploits). Stability needs |α| < 1/(1 − β). ``"auto"``:
            auto-E (see ``target_perturbation``).
        beta: E's β (β1 in the paper).
        target_perturbation: auto-E's ρ: α adapts after every step so that E's relative
            perturbation ‖ĝ − g‖/‖g‖ stays near ρ, from ``alpha`` (its sign and start;
            ``"auto"``: explore, from ρ/(1 − β)), inside E's stable region. None: α as given.
        foreach: compute E with multi-tensor kernels; None picks them on accelerators.
        fused: compute ĝ with one ``torch.compile``\ d pass per tensor (compiled on first use)
            and advance e with a multi-tensor ``lerp``; exclusive with ``foreach=True``. None means
            False.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        alpha: float | Literal["auto"] = -5.0,
        beta: float = 0.99,
        *,
        target_perturbation: float | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if fused and foreach:
            raise ValueError("fused=True and foreach=True cannot be used together; pick one path")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"Explore wraps a torch.optim.Optimizer instance, got {type(optimizer).__name__}"
            )
        if isinstance(optimizer, Explore):
            raise TypeError("Explore cannot wrap another Explore: E would be applied twice")
        self.optimizer = optimizer
        self.foreach = foreach
        self.fused = bool(fused)
        defaults = dict(
            explore_alpha=alpha,
            explore_beta=beta,
            explore_target_perturbation=target_perturbation,
        )
        super().__init__(optimizer.param_groups, defaults)

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        """The base optimizer's groups, by reference: they survive its ``load_state_dict``."""
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        # torch.optim.Optimizer.__init__ assigns an empty list before adding the groups; the groups
        # themselves always live in the base optimizer.
        if value:
            raise AttributeError("Explore.param_groups are the base optimizer's; change those")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not any(param_group is g for g in self.optimizer.param_groups):
            self.optimizer.add_param_group(param_group)
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        check_beta("beta", param_group["explore_beta"])
        auto_e.prepare_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "defaults": self.defaults,
            "state": self.state,
            "optimizer": self.optimizer,
            "foreach": self.foreach,
            "fused": self.fused,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # torch's __setstate__ adds defaults["differentiable"], which is not an option of E;
        # add_param_group would put it into every group added afterwards.
        self.defaults.pop("differentiable", None)

    def __repr__(self) -> str:
        alpha, beta = self.defaults["explore_alpha"], self.defaults["explore_beta"]
        return f"Explore(alpha={alpha}, beta={beta}, {self.optimizer!r})"

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Evaluate the closure, step the base optimizer on E's gradients, advance E."""
        loss = evaluate_closure(closure)

        groups = []
        for group in self.param_groups:
            if not e_active(group["explore_alpha"]):
                continue
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError(
                    "Explore does not support sparse gradients (E keeps a dense buffer)"
                )
            if params:
                groups.append((group, params))

        e_sums = self._telemetry_begin()
        # Per group: what advances E once the base step is done (E buffers, raw gradients,
        # foreach), and the list its sums went to (auto-E updates α from it then).
        advances: list[tuple[dict[str, Any], list[Tensor], list[Tensor], bool]] = []
        group_sums: list[list[Tensor] | None] = []
        swapped: list[tuple[Tensor, Tensor]] = []
        try:
            for group, params in groups:
                sums = auto_e.begin_group(group, e_sums)
                emas, grads, ghats, foreach = self._grad_hats(group, params, sums)
                for p, ghat in zip(params, ghats, strict=True):
                    swapped.append((p, p.grad))
                    p.grad = ghat
                advances.append((group, emas, grads, foreach))
                group_sums.append(sums)
            with without_global_step_hooks():
                self.optimizer.step()
        finally:
            for p, grad in swapped:
                p.grad = grad
        for (group, emas, grads, foreach), sums in zip(advances, group_sums, strict=True):
            if foreach:
                advance_multi_(emas, grads, group["explore_beta"])
            else:
                for e, g in zip(emas, grads, strict=True):
                    advance_(e, g, group["explore_beta"])
            auto_e.end_group(group, sums, e_sums)
        return loss

    def _grad_hats(
        self, group: dict[str, Any], params: list[Tensor], sums: list[Tensor] | None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], bool]:
        """E's buffers, the raw gradients (real views), a new tensor with ĝ per parameter, and
        whether the foreach kernels advance E; E's telemetry sums go to ``sums`` when given."""
        grads = [as_real(p.grad) for p in params]
        emas = []
        for p in params:
            state = self.state[p]
            if "grad_ema" not in state:
                state["grad_ema"] = zeros_state(p)
            emas.append(as_real(state["grad_ema"]))
        ghats = [torch.empty_like(p.grad) for p in params]
        foreach = self.fused or self._foreach(grads)
        out = [as_real(t) for t in ghats]
        coefficient = ghat_coefficient(group["explore_alpha"], group["explore_beta"])
        if self.fused:
            fused_grad_hat(grads, emas, coefficient, out, sums)
        elif foreach:
            grad_hat_multi(grads, emas, coefficient, out)
            if sums is not None:
                sums.append(perturbation_sums_multi(grads, out))
        else:
            for o, g, e in zip(out, grads, emas, strict=True):
                grad_hat(g, e, coefficient, out=o)
                if sums is not None:
                    sums.append(perturbation_sums(g, o))
        return emas, grads, ghats, foreach

    def _foreach(self, tensors: list[Tensor]) -> bool:
        return resolve_foreach(self.foreach, tensors)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict with E's buffers added as ``explore_<key>`` entries."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        state_dict = self.optimizer.state_dict()
        auto_e.saved_groups(state_dict["param_groups"])
        index = {id(p): i for i, p in enumerate(self._params())}
        for key, entries in self.state.items():
            if not (torch.is_tensor(key) and id(key) in index):
                # Not a parameter's (e.g. added by a state_dict pre-hook): kept as it is, as torch
                # does; load_state_dict hands such keys to the base optimizer.
                state_dict["state"][key] = entries
                continue
            per_param = state_dict["state"].setdefault(index[id(key)], {})
            per_param.update({_PREFIX + k: v for k, v in entries.items()})
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the base optimizer's state and E's buffers from :meth:`state_dict`'s layout."""
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        base_state: dict[Any, dict[str, Any]] = {}
        own_state: dict[Any, dict[str, Any]] = {}
        saved_params = {k for g in state_dict["param_groups"] for k in g["params"]}
        for key, entries in state_dict["state"].items():
            if key not in saved_params:
                base_state[key] = entries
                continue
            base_state[key] = {k: v for k, v in entries.items() if not k.startswith(_PREFIX)}
            own = {k[len(_PREFIX) :]: v for k, v in entries.items() if k.startswith(_PREFIX)}
            if own:
                own_state[key] = own
        self.optimizer.load_state_dict({**state_dict, "state": base_state})

        params = self._params()
        self.state = defaultdict(dict)
        for key, entries in own_state.items():
            p = params[int(key)]
            self.state[p] = {
                k: v.to(device=p.device, dtype=p.dtype) if torch.is_tensor(v) else v
                for k, v in entries.items()
            }
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        auto_e.loaded_groups(self.param_groups)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _params(self) -> list[Tensor]:
        return list(chain.from_iterable(g["params"] for g in self.param_groups))
