"""Bookkeeping shared by ALTO, Lamb, EAdam(W) and ESGD: closures, clipping, state, dispatch."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _functional as F
from . import auto_e
from ._sharding import local, sharded_norms
from ._stepping import evaluate_closure
from ._telemetry import ETelemetry
from ._validation import check_lr, check_max_grad_norm, check_non_negative, check_state_dtype

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


def as_real(t: Tensor) -> Tensor:
    """A real view of a complex tensor (real and imaginary parts as a last dim of 2); a DTensor's
    local shard, on which the elementwise kernels run (norms are reduced separately)."""
    t = local(t)
    return torch.view_as_real(t) if torch.is_complex(t) else t


def zeros_state(p: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)


def state_dtype_for(group: dict[str, Any], p: Tensor) -> torch.dtype | None:
    """The group's ``state_dtype`` where it differs from a real parameter's dtype (e.g. fp32
    moments for bf16 parameters); None: state in the parameter's own dtype."""
    dtype = group.get("state_dtype")
    if dtype is None or torch.is_complex(p) or dtype == p.dtype:
        return None
    return dtype


def update_grad(p: Tensor, dtype: torch.dtype | None) -> Tensor:
    """The gradient the kernels read: in the state's dtype when that differs from the parameter's
    (a temporary; ``p.grad`` itself is never modified)."""
    grad = as_real(p.grad)
    return grad if dtype is None else grad.to(dtype)


def step_counter(p: Tensor) -> Tensor:
    """A float32 step counter on the parameter's device, so that no step reads it on the host."""
    return torch.zeros((), dtype=torch.float32, device=p.device)


@dataclass
class MomentTensors:
    """One group's tensors for the Adam-style kernels (ALTO, Lamb, EAdam): real views, in order.

    ``owned`` are the parameters themselves (DTensors stay DTensors there, for sharded norms);
    ``emas`` is None when E is off for the group (α = 0).
    """

    owned: list[Tensor] = field(default_factory=list)
    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    exp_avgs: list[Tensor] = field(default_factory=list)
    exp_avg_sqs: list[Tensor] = field(default_factory=list)
    emas: list[Tensor] | None = None
    steps: list[Tensor] = field(default_factory=list)


class ValleyOptimizer(ETelemetry, Optimizer):
    """Base of the optimizers in this package.

    ``step`` evaluates the closure once (with grad enabled), refuses sparse gradients before touching
    anything, computes the global gradient-norm clip factor on the device, then hands each group to
    ``_update_group``, with the list E's telemetry sums go to while telemetry is on
    (:class:`~valleys.optim._telemetry.ETelemetry`), or the group's own under auto-E, whose α it
    updates after the group's step (:mod:`valleys.optim.auto_e`). Subclasses implement
    ``_validate_group`` and ``_update_group``.
    """

    def __init__(self, params: Params, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_lr(group["lr"])
        check_non_negative("weight_decay", group["weight_decay"])
        check_max_grad_norm(group["max_grad_norm"])
        check_state_dtype(group.get("state_dtype"))
        if group.get("fused") and group.get("foreach"):
            raise ValueError("fused=True and foreach=True cannot be used together; pick one path")
        self._validate_group(group)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict``, with a copy of each adapting (auto-E) α."""
        state_dict = super().state_dict()
        auto_e.saved_groups(state_dict["param_groups"])
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``torch.optim.Optimizer.load_state_dict``, keeping ``state_dtype`` state in its dtype.

        torch casts every floating state tensor to its parameter's dtype on load, which would turn
        the fp32 moments of bf16 parameters into bf16 ones; they are restored from the saved
        tensors here.
        """
        super().load_state_dict(state_dict)
        # Saved groups name their parameters by index or, from torch.distributed.checkpoint, by
        # name; torch pairs them with the current ones by position, and so does this.
        owners = {
            saved: (group, p)
            for saved_group, group in zip(
                state_dict["param_groups"], self.param_groups, strict=True
            )
            for saved, p in zip(saved_group["params"], group["params"], strict=True)
        }
        for key, entries in state_dict["state"].items():
            if key not in owners:
                continue
            group, p = owners[key]
            dtype = state_dtype_for(group, p)
            if dtype is None:
                continue
            for name, value in entries.items():
                if name != "step" and torch.is_tensor(value) and value.is_floating_point():
                    self.state[p][name] = value.to(device=p.device, dtype=dtype, copy=True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling and ``load_state_dict``: fill what older checkpoints lack.

        torch's ``__setstate__`` adds ``defaults["differentiable"]`` (for its own optimizers' old
        pickles); these optimizers have no such option, and the key would reach every group loaded
        or added afterwards, so that ``state_dict()`` changed across a load. It is removed again.
        A numeric ``step`` (older checkpoints) becomes the device counter the kernels expect, and
        an adapting α moves to its parameters' device.
        """
        # Unpickling passes the saved defaults (self has none yet); load_state_dict passes none.
        saved_defaults = state.get("defaults")
        own_keys = set(self.defaults if saved_defaults is None else saved_defaults)
        super().__setstate__(state)
        for key in set(self.defaults) - own_keys:
            del self.defaults[key]
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        for p, entries in self.state.items():
            step = entries.get("step") if isinstance(entries, dict) else None
            if torch.is_tensor(p) and step is not None and not torch.is_tensor(step):
                entries["step"] = step_counter(p).fill_(float(step))
        auto_e.loaded_groups(self.param_groups)

    def _validate_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _moment_tensors(self, group: dict[str, Any], explores: bool) -> MomentTensors:
        """Create the state of ``group``'s parameters with gradients where it is missing (``step``,
        ``exp_avg``, ``exp_avg_sq``, and ``grad_ema`` while E is on) and collect it."""
        tensors = MomentTensors(emas=[] if explores else None)
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            dtype = state_dtype_for(group, p)
            if not state:
                state["step"] = step_counter(p)
                state["exp_avg"] = zeros_state(p, dtype)
                state["exp_avg_sq"] = zeros_state(p, dtype)
            tensors.owned.append(p)
            tensors.params.append(as_real(p))
            tensors.grads.append(update_grad(p, dtype))
            tensors.exp_avgs.append(as_real(state["exp_avg"]))
            tensors.exp_avg_sqs.append(as_real(state["exp_avg_sq"]))
            tensors.steps.append(state["step"])
            if tensors.emas is not None:
                if "grad_ema" not in state:
                    state["grad_ema"] = zeros_state(p, dtype)
                tensors.emas.append(as_real(state["grad_ema"]))
        return tensors

    def _update_group(
        self, group: dict[str, Any], grad_scale: Tensor | None, e_sums: list[Tensor] | None
    ) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step.

        Args:
            closure: re-evaluates the model and returns the loss; called once, with grad enabled,
                before any gradient is read.
        """
        loss = evaluate_closure(closure)

        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        for grad in grads:
            if grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients; "
                    "use torch.optim.SparseAdam for sparse parameters"
                )

        clipping = any(g["max_grad_norm"] is not None for g in self.param_groups)
        total_norm = None
        if clipping and grads:
            sharded = sharded_norms(grads)
            if sharded is not None:
                total_norm = sharded.global_norm(grads)
            else:
                total_norm = F.global_grad_norm([as_real(g) for g in grads])

        e_sums = self._telemetry_begin()
        for group in self.param_groups:
            max_norm = group["max_grad_norm"]
            scale = None
            if max_norm is not None and total_norm is not None:
                scale = F.clip_coefficient(total_norm, max_norm)
            sums = auto_e.begin_group(group, e_sums)
            self._update_group(group, scale, sums)
            auto_e.end_group(group, sums, e_sums)
        return loss


def group_lr(group: dict[str, Any]) -> float | Tensor:
    """The group's lr as the kernels take it: a one-element tensor as a 0-d view of it.

    torch.optim accepts any one-element lr tensor; one of shape (1, 1) would otherwise broadcast
    the update of a 1-D parameter to 2-D. A view, so that in-place changes to the user's tensor
    (``fill_`` by an LR scheduler) still apply.
    """
    lr = group["lr"]
    return lr.reshape(()) if isinstance(lr, Tensor) and lr.dim() else lr


def resolve_foreach(foreach: bool | None, params: list[Tensor]) -> bool:
    """torch.optim's default: the foreach path on accelerators, the per-tensor loop on the CPU."""
    if foreach is not None:
        return foreach
    return bool(params) and all(p.device.type != "cpu" for p in params)


def resolve_paths(group: dict[str, Any], params: list[Tensor]) -> tuple[bool, bool]:
    """``(foreach, fused)`` for a group: ``fused=True`` wins; otherwise :func:`resolve_foreach`.

    ``fused=None`` is treated as False: the compiled kernels cost a compile on first use, which
    the per-tensor loop (the CPU default) does not. ``get`` keeps checkpoints from before the
    ``fused`` key loadable.
    """
    if group.get("fused"):
        return False, True
    return resolve_foreach(group["foreach"], params), False
