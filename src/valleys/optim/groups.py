"""Parameter groups: weight decay and the trust ratio only where they make sense."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["NORM_MODULES", "param_groups"]

NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
"""Module types whose parameters never get weight decay or a trust ratio."""


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decay_embeddings: bool = True,
    no_decay_trust_ratio: bool = False,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a decay and a no-decay group.

    The no-decay group holds the parameters of normalisation layers (:data:`NORM_MODULES`: batch,
    instance, layer, group and RMS norms), every parameter named ``bias``, and every tensor with at
    most one dimension (which catches custom norms, e.g. transformers' ``LlamaRMSNorm``, and
    scalars). It gets ``weight_decay=0`` and ``trust_ratio=False``: a trust ratio on a
    zero-initialised bias is about ε3/‖r‖, so the bias would practically never move (PAPER.md). The
    reference implementation's factory likewise sends norms and biases to a ``weight_decay=0`` group
    that skips its trust ratio. Optimizers without a trust ratio ignore the key.

    Embedding tables (``nn.Embedding``, ``nn.EmbeddingBag``) are decayed and keep the trust ratio by
    default, as in LAMB's BERT recipe; ``decay_embeddings=False`` moves them to the no-decay group.

    Args:
        model: the module whose ``named_parameters`` are grouped (shared parameters appear once).
        weight_decay: the decay group's weight decay.
        decay_embeddings: keep embedding tables in the decay group.
        no_decay_trust_ratio: give the no-decay group a trust ratio anyway (the paper's literal
            algorithm applies it everywhere).

    Returns:
        Up to two groups; an empty group is left out.
    """
    no_decay_types: tuple[type[nn.Module], ...] = NORM_MODULES
    if not decay_embeddings:
        no_decay_types = (*no_decay_types, nn.Embedding, nn.EmbeddingBag)

    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, no_decay_types):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))

    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if id(p) in no_decay_ids or leaf == "bias" or p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)

    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append(
            {"params": no_decay, "weight_decay": 0.0, "trust_ratio": no_decay_trust_ratio}
        )
    return groups
