r"""E and ALTO for JAX: optax gradient transformations (``pip install valleys[jax]``).

Zhao, Li, Zhou, Tan, Jia, "Exploring Landscapes for Better Minima along Valleys", NeurIPS 2025.
:func:`e_transform` is E, one transformation with one buffer, to chain in front of any optax
optimizer; :func:`alto`, :func:`lamb`, :func:`eadam`, :func:`eadamw` and :func:`esgd` are chains of
small transformations with the arguments, defaults and numerics of the torch classes in
:mod:`valleys.optim` (tested equal to them step by step)::

    import optax
    from valleys.optax import alto, decay_mask, e_transform

    tx = alto(optax.cosine_decay_schedule(1e-3, 10_000), weight_decay_mask=decay_mask,
              trust_ratio_mask=decay_mask)
    tx = optax.chain(e_transform(alpha=-5.0, beta1=0.99), optax.adam(1e-3))

Only this subpackage imports jax; ``import valleys`` and :mod:`valleys.optim` never do.
"""

from ._aliases import alto, decay_mask, eadam, eadamw, esgd, lamb
from ._transforms import (
    EState,
    MomentsState,
    clip_by_global_norm,
    e_transform,
    scale_by_moments,
    scale_by_trust_ratio,
)

__all__ = [
    "EState",
    "MomentsState",
    "alto",
    "clip_by_global_norm",
    "decay_mask",
    "e_transform",
    "eadam",
    "eadamw",
    "esgd",
    "lamb",
    "scale_by_moments",
    "scale_by_trust_ratio",
]
