"""Muon on the hidden weight matrices, AdamW on everything else, as one torch optimizer.

Muon (``torch.optim.Muon``) orthogonalises the momentum of a 2-D weight matrix by Newton–Schulz
iterations; it is defined for matrices only, and the usual recipe (Jordan et al. 2024; Liu et al.
2025, "Muon is scalable") keeps embeddings, the output head, norms and biases on AdamW.
:class:`MuonAdamW` is that hybrid as one ``torch.optim.Optimizer``: its ``param_groups`` (each
marked ``use_muon``) are the very dicts its two inner optimizers step, so LR schedulers, per-group
hyperparameters, ``state_dict``/``load_state_dict``, ``zero_grad`` and closures work as for any
torch optimizer.

Which tensors are hidden matrices needs the model: :func:`hidden_matrix_names` says, and
:func:`muon_param_groups` builds the groups (``create_optimizer("muon", model, ...)`` uses it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._stepping import evaluate_closure, without_global_step_hooks
from .groups import param_groups

__all__ = ["MuonAdamW", "hidden_matrix_names", "muon_param_groups"]

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


class MuonAdamW(Optimizer):
    r"""Muon on hidden 2-D weight matrices, AdamW on the rest, under one learning rate.

    Each parameter group carries ``use_muon``: True groups are stepped by ``torch.optim.Muon``,
    False groups by ``torch.optim.AdamW``. A group given without the key is split by shape: its 2-D
    tensors go to Muon, the others to AdamW. Given a model's ``parameters()`` that sends the
    embedding tables and the output head to Muon too; use :func:`muon_param_groups` (or
    ``create_optimizer("muon", model, ...)``) to keep them on AdamW.

    ``adjust_lr_fn="match_rms_adamw"`` scales Muon's step to the RMS of an AdamW step
    (0.2·√max(A, B) on an A×B matrix), so one ``lr`` and one ``weight_decay`` serve both halves
    and AdamW's learning rates carry over. Muon's Newton–Schulz ε and coefficients stay torch's.

    A model with no hidden matrix gets AdamW alone (and a plain AdamW step), and vice versa.

    Args:
        params: tensors or parameter groups (optionally with ``use_muon``).
        lr: the learning rate of both halves.
        weight_decay: decoupled weight decay of both halves (0.1, as torch's Muon and the
            "Muon is scalable" recipe this lr adjustment comes from).
        momentum: Muon's momentum.
        nesterov: Muon's Nesterov momentum.
        ns_steps: Newton–Schulz iterations per Muon step.
        adjust_lr_fn: Muon's lr adjustment (``"match_rms_adamw"`` or ``"original"``).
        betas: AdamW's moment coefficients.
        eps: AdamW's ε.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: str = "match_rms_adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        shared = {"lr": lr, "weight_decay": weight_decay}
        self._options: dict[bool, dict[str, Any]] = {
            True: {
                **shared,
                "momentum": momentum,
                "nesterov": nesterov,
                "ns_steps": ns_steps,
                "adjust_lr_fn": adjust_lr_fn,
            },
            False: {**shared, "betas": betas, "eps": eps},
        }
        # The inner optimizers, by ``use_muon``; one exists once a group of its kind does.
        self._inner: dict[bool, Optimizer] = {}
        super().__init__(params, shared)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (split by shape when it has no ``use_muon``), to this and its inner optimizer."""
        for part in _split(param_group):
            use_muon = part["use_muon"]
            inner = self._inner.get(use_muon)
            # The inner optimizer fills in its defaults and appends ``part`` itself, not a copy:
            # from here on both optimizers hold the same dict.
            if inner is None:
                inner_class: Callable[..., Optimizer] = (
                    torch.optim.Muon if use_muon else torch.optim.AdamW
                )
                self._inner[use_muon] = inner_class([part], **self._options[use_muon])
            else:
                inner.add_param_group(part)
            super().add_param_group(part)
        self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Evaluate ``closure`` once (grad enabled), then take the Muon and the AdamW step."""
        loss = evaluate_closure(closure)
        # Global step hooks ran for this step already; the inner steps are part of it.
        with without_global_step_hooks():
            for inner in self._inner.values():
                inner.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state saved by a :class:`MuonAdamW` with the same split into Muon and AdamW."""
        saved = [group.get("use_muon") for group in state_dict["param_groups"]]
        current = [group["use_muon"] for group in self.param_groups]
        if saved != current:
            raise ValueError(
                f"loaded state dict splits its groups as use_muon={saved}, this optimizer as "
                f"use_muon={current}"
            )
        super().load_state_dict(state_dict)
        # torch's load replaces the group dicts and the state table: hand the new ones down.
        self._link()

    def _link(self) -> None:
        """Point each inner optimizer at this optimizer's groups of its kind and at its state."""
        for use_muon, inner in self._inner.items():
            inner.param_groups = [g for g in self.param_groups if g["use_muon"] is use_muon]
            inner.state = self.state


def _split(param_group: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``param_group`` with ``use_muon`` set: itself, or its 2-D and other tensors apart."""
    params = param_group["params"]
    params = [params] if isinstance(params, Tensor) else list(params)
    if "use_muon" in param_group:
        if param_group["use_muon"]:
            flat = [p for p in params if _tensor(p).ndim != 2]
            if flat:
                raise ValueError(
                    "Invalid use_muon=True group: Muon steps 2-D matrices only, got shape "
                    f"{tuple(_tensor(flat[0]).shape)}"
                )
        yield {**param_group, "params": params, "use_muon": bool(param_group["use_muon"])}
        return
    for use_muon in (True, False):
        part = [p for p in params if (_tensor(p).ndim == 2) is use_muon]
        if part:
            yield {**param_group, "params": part, "use_muon": use_muon}


def _tensor(param: Tensor | tuple[str, Tensor]) -> Tensor:
    """The tensor of a parameter given plainly or as torch's ``(name, tensor)`` pair."""
    return param[1] if isinstance(param, tuple) else param


def hidden_matrix_names(model: nn.Module) -> list[str]:
    """The names of ``model``'s trainable parameters that Muon should step.

    A hidden matrix is a 2-D trainable parameter that is not an embedding table (owned by an
    ``nn.Embedding``/``nn.EmbeddingBag``, or named ``*embed*``, which catches positional tables
    kept as bare parameters) and not the output head. The head is the weight of the last module,
    in registration order, that owns a 2-D parameter (the classifier of a ``Sequential``,
    ``lm_head``; a head tied to the input embedding is excluded both ways). Convolution kernels
    (4-D) stay with AdamW: ``torch.optim.Muon`` takes matrices only. Shared parameters appear once.
    """
    excluded: set[int] = set()
    head: nn.Module | None = None
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if any(p.ndim == 2 for p in own):
            head = module
        if isinstance(module, _EMBEDDINGS):
            excluded.update(id(p) for p in own)
    if head is not None:
        excluded.update(id(p) for p in head.parameters(recurse=False))
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and p.ndim == 2 and id(p) not in excluded and "embed" not in name.lower()
    ]


def muon_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """:func:`~valleys.optim.param_groups` with the hidden matrices in their own Muon group(s).

    The decay/no-decay split is :func:`~valleys.optim.param_groups`'s; each of its groups is split
    again into ``use_muon=True`` (:func:`hidden_matrix_names`) and ``use_muon=False`` parts, empty
    parts left out. A model with no hidden matrix gets AdamW groups only.
    """
    named = dict(model.named_parameters())
    hidden = {id(named[name]) for name in hidden_matrix_names(model)}
    groups = []
    for group in param_groups(model, weight_decay):
        for use_muon in (True, False):
            part = [p for p in group["params"] if (id(p) in hidden) is use_muon]
            if part:
                groups.append({**group, "params": part, "use_muon": use_muon})
    return groups
