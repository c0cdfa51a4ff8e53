r"""The small gradient transformations that ALTO, Lamb, EAdam(W) and ESGD are chains of.

Zhao, Li, Zhou, Tan, Jia, "Exploring Landscapes for Better Minima along Valleys", NeurIPS 2025
(arXiv 2510.27153). Each transformation here is one line of the paper's algorithms, with the
numerics of the torch kernels in :mod:`valleys.optim._functional` (the ground truth they are tested
against): global-norm clipping as ``torch.nn.utils.clip_grad_norm_`` does it, E's one-buffer form,
the (optionally bias-corrected) Adam moments, and the paper's trust ratio. Everything is pure
``jax.numpy`` on whole arrays: under ``jit`` with sharded arrays every norm is the full array's
(XLA inserts the reductions across devices).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "EState",
    "MomentsState",
    "clip_by_global_norm",
    "e_transform",
    "scale_by_moments",
    "scale_by_trust_ratio",
]

_CLIP_EPS = 1e-6
"""``torch.nn.utils.clip_grad_norm_``'s epsilon, so that both sides clip identically."""


def _norm(x: jax.Array) -> jax.Array:
    """The 2-norm of ``x``, accumulated in at least float32 (as torch's norms of bf16 tensors)."""
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32)))))


class EState(NamedTuple):
    """State of :func:`e_transform`: the EMA :math:`e` of the raw gradients."""

    ema: optax.Updates


def e_transform(alpha: float = -5.0, beta1: float = 0.99) -> optax.GradientTransformation:
    r"""E, the optimizer adaptor (Zhao et al., NeurIPS 2025, Algorithm 2, first line).

    .. math::
        a_k = \beta_1 a_{k-1} + (1-\beta_1)(g_k - g_{k-1}), \qquad \hat g_k = g_k + \alpha a_k,

    kept as one buffer, the zero-initialised EMA :math:`e_k = \beta_1 e_{k-1} + (1-\beta_1) g_k`
    of the raw gradients, since :math:`a_k = (1-\beta_1)(g_k - e_{k-1})`:

    .. math::
        \hat g_k = g_k + \alpha(1-\beta_1)(g_k - e_{k-1}).

    Chain it in front of any optax optimizer: ``optax.chain(e_transform(-5.0, 0.99),
    optax.adam(1e-3))`` is ``Explore(torch.optim.Adam(...), alpha=-5.0, beta=0.99)``. α < 0
    explores (large batches), α > 0 exploits (small ones); stability needs :math:`0 \le \beta_1 < 1`
    and :math:`|\alpha| < 1/(1-\beta_1)`. The defaults are the paper's large-batch ones (and
    ``Explore``'s).
    """
    coefficient = alpha * (1 - beta1)

    def init_fn(params: optax.Params) -> EState:
        return EState(ema=optax.tree.zeros_like(params))

    def update_fn(
        updates: optax.Updates, state: EState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, EState]:
        del params
        # d = g - e_{k-1} serves both ĝ and e's update.
        diffs = jax.tree.map(jnp.subtract, updates, state.ema)
        ghat = jax.tree.map(lambda g, d: g + coefficient * d, updates, diffs)
        ema = jax.tree.map(lambda e, d: e + (1 - beta1) * d, state.ema, diffs)
        return ghat, EState(ema=ema)

    return optax.GradientTransformation(init_fn, update_fn)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    r"""Scale all gradients by :math:`\min(1, c / (\lVert g \rVert_2 + 10^{-6}))`.

    :math:`\lVert g \rVert_2` is the norm of all leaves together. This is torch's
    ``clip_grad_norm_`` (and the optimizers' ``max_grad_norm``), which the reference ALTO always
    applies with :math:`c = 1`; ``optax.clip_by_global_norm`` differs from it by the
    :math:`10^{-6}`. Stateless.
    """

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params
        leaves = jax.tree.leaves(updates)
        total = jnp.sqrt(sum(jnp.square(_norm(g)) for g in leaves))
        scale = jnp.minimum(1.0, max_norm / (total + _CLIP_EPS))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


class MomentsState(NamedTuple):
    """State of :func:`scale_by_moments`: the step count and the two moments."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_moments(
    b2: float = 0.9, b3: float = 0.99, eps: float = 1e-6, bias_correction: bool = True
) -> optax.GradientTransformation:
    r"""Adam's direction from the (E-transformed) gradient :math:`u_k`, in the paper's naming.

    .. math::
        m_k &= \beta_2 m_{k-1} + (1-\beta_2) u_k, \qquad v_k = \beta_3 v_{k-1} + (1-\beta_3) u_k^2 \\
        r_k &= \frac{m_k / (1-\beta_2^k)}{\sqrt{v_k / (1-\beta_3^k)} + \epsilon}

    (Algorithm 2 of the paper; without ``bias_correction`` the divisions by :math:`1-\beta^k` are
    dropped: Algorithm 1, ALTO Vanilla). With ``bias_correction`` it is ``optax.scale_by_adam``
    with ``b1=b2, b2=b3``; the own transformation exists for the switch.
    """

    def init_fn(params: optax.Params) -> MomentsState:
        # Two separate buffers: one shared by mu and nu could not be donated to a jitted step.
        return MomentsState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
        )

    def update_fn(
        updates: optax.Updates, state: MomentsState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, MomentsState]:
        del params
        count = optax.safe_increment(state.count)
        mu = jax.tree.map(lambda m, u: b2 * m + (1 - b2) * u, state.mu, updates)
        nu = jax.tree.map(lambda v, u: b3 * v + (1 - b3) * jnp.square(u), state.nu, updates)

        def direction(m: jax.Array, v: jax.Array) -> jax.Array:
            if not bias_correction:
                return m / (jnp.sqrt(v) + eps)
            k = count.astype(m.dtype)
            return (m / (1 - b2**k)) / (jnp.sqrt(v / (1 - b3**k)) + eps)

        return jax.tree.map(direction, mu, nu), MomentsState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_trust_ratio(eps2: float = 1e-6, eps3: float = 1e-10) -> optax.GradientTransformation:
    r"""ALTO's layer-wise trust ratio, per leaf (Algorithm 2 of the paper, last line).

    .. math::
        r \leftarrow r\, \frac{\phi(\lVert\theta\rVert)}{\lVert r\rVert + \epsilon_2\,
            \phi(\lVert\theta\rVert)}, \qquad \phi(x) = x + \epsilon_3

    No clamp, as in the paper: a zero leaf (a zero-initialised bias) gets a ratio of about
    :math:`\epsilon_3 / \lVert r\rVert` and practically never moves, so mask such leaves out
    (``optax.masked``, or the optimizers' ``trust_ratio_mask``). ``optax.scale_by_trust_ratio`` is
    a different form (:math:`\lVert\theta\rVert / \lVert r\rVert`, 1 where either is 0). The norms
    are the full arrays' also when the arrays are sharded across devices. Stateless; needs
    ``params``.
    """

    def update_fn(
        updates: optax.Updates, state: optax.EmptyState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.EmptyState]:
        if params is None:
            raise ValueError("scale_by_trust_ratio needs params: pass them to update()")

        def scaled(r: jax.Array, theta: jax.Array) -> jax.Array:
            phi = _norm(theta) + eps3
            return r * (phi / (_norm(r) + eps2 * phi)).astype(r.dtype)

        return jax.tree.map(scaled, updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)
