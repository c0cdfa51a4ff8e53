r"""ALTO, Lamb, EAdam, EAdamW and ESGD as chains of the transformations in ``_transforms.py``.

Zhao, Li, Zhou, Tan, Jia, "Exploring Landscapes for Better Minima along Valleys", NeurIPS 2025.
Each alias has the torch class's arguments and defaults (:mod:`valleys.optim`) and its order of
operations: clip the global gradient norm, (EAdam, ESGD: add the L2 term,) E, the base update,
(decoupled decay, the trust ratio,) the learning rate. Where torch uses parameter groups, these take
masks: a pytree of booleans like the params (or a prefix of it), or a function of the params that
returns one, ``True`` where weight decay (or the trust ratio) applies; None applies it everywhere,
as the torch classes do without groups. :func:`decay_mask` is the usual choice.
"""

from __future__ import annotations

import jax
import optax

from valleys.optim._validation import (
    check_alpha,
    check_beta,
    check_betas,
    check_max_grad_norm,
    check_non_negative,
)

from ._transforms import (
    clip_by_global_norm,
    e_transform,
    scale_by_moments,
    scale_by_trust_ratio,
)

__all__ = ["alto", "decay_mask", "eadam", "eadamw", "esgd", "lamb"]


def decay_mask(params: optax.Params) -> optax.Params:
    """``True`` for leaves with two or more dimensions: the weights, not the biases and norms.

    The JAX counterpart of :func:`valleys.optim.param_groups`' rule "at most one dimension: no
    weight decay, no trust ratio" (a trust ratio on a zero-initialised bias would freeze it); pass
    it as ``weight_decay_mask`` and ``trust_ratio_mask``.
    """
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _static(*values: object) -> bool:
    """Whether the values are Python numbers (not arrays, as ``optax.inject_hyperparams`` passes):
    only those are checked and compared at construction."""
    return all(isinstance(v, int | float) for v in values)


def _check(
    learning_rate: optax.ScalarOrSchedule, max_grad_norm: float | None, **numbers: float
) -> None:
    """Refuse, naming the argument, a negative learning rate or ``numbers`` entry (eps, weight
    decay) and a non-positive ``max_grad_norm``."""
    if not callable(learning_rate):
        numbers = {"learning_rate": learning_rate, **numbers}
    for name, value in numbers.items():
        if _static(value):
            check_non_negative(name, value)
    if _static(max_grad_norm):
        check_max_grad_norm(max_grad_norm)


def _clip(max_grad_norm: float | None) -> optax.GradientTransformation:
    return optax.identity() if max_grad_norm is None else clip_by_global_norm(max_grad_norm)


def _explore(alpha: float, beta: float, beta_name: str) -> optax.GradientTransformation:
    """E, checked for stability; α = 0 turns it off (no buffer), as in the torch classes."""
    if _static(alpha, beta):
        check_alpha(alpha, beta, beta_name)
        if alpha == 0:
            return optax.identity()
    return e_transform(alpha, beta)


def _layerwise(
    learning_rate: optax.ScalarOrSchedule,
    explore: optax.GradientTransformation,
    moment_betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    eps2: float,
    eps3: float,
    bias_correction: bool,
    max_grad_norm: float | None,
    weight_decay_mask: optax.MaskOrFn,
    trust_ratio_mask: optax.MaskOrFn,
) -> optax.GradientTransformation:
    """The chain ALTO and Lamb share (they differ in E alone)."""
    _check(learning_rate, max_grad_norm, eps=eps, weight_decay=weight_decay, eps2=eps2, eps3=eps3)
    trust_ratio = scale_by_trust_ratio(eps2, eps3)
    return optax.chain(
        _clip(max_grad_norm),
        explore,
        scale_by_moments(*moment_betas, eps, bias_correction),
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        trust_ratio if trust_ratio_mask is None else optax.masked(trust_ratio, trust_ratio_mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def alto(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[float, float, float] = (0.99, 0.9, 0.99),
    alpha: float = -5.0,
    eps: float = 1e-6,
    weight_decay: float = 1e-4,
    *,
    eps2: float = 1e-6,
    eps3: float = 1e-10,
    bias_correction: bool = True,
    max_grad_norm: float | None = 1.0,
    weight_decay_mask: optax.MaskOrFn = None,
    trust_ratio_mask: optax.MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""ALTO: E inside LAMB (Zhao et al., NeurIPS 2025, Algorithm 2); :class:`valleys.optim.ALTO`.

    .. math::
        u_k &= \operatorname{clip}(g_k) + \alpha a_k, \qquad
            a_k = \beta_1 a_{k-1} + (1-\beta_1)(g_k - g_{k-1}) \\
        m_k &= \beta_2 m_{k-1} + (1-\beta_2) u_k, \qquad v_k = \beta_3 v_{k-1} + (1-\beta_3) u_k^2 \\
        r_k &= \frac{m_k/(1-\beta_2^k)}{\sqrt{v_k/(1-\beta_3^k)} + \epsilon_1} + \lambda\theta_k \\
        \theta_{k+1} &= \theta_k - \eta_k\, r_k\,
            \frac{\phi(\lVert\theta_k\rVert)}{\lVert r_k\rVert + \epsilon_2\phi(\lVert\theta_k\rVert)},
            \qquad \phi(x) = x + \epsilon_3 \text{ (per leaf)}

    The chain: :func:`clip_by_global_norm`, :func:`e_transform`, :func:`scale_by_moments`,
    ``optax.add_decayed_weights``, :func:`scale_by_trust_ratio`, ``optax.scale_by_learning_rate``.

    Args:
        learning_rate: η, a float or an optax schedule (step count → η).
        betas: (β1, β2, β3): E's factor, the first and the second moment's.
        alpha: E's α (0 turns E off: then this is :func:`lamb` with these betas).
        eps: ε1, added to :math:`\sqrt{\hat v}`.
        weight_decay: λ, decoupled, added to r before the trust ratio.
        eps2: the trust ratio's ε2.
        eps3: the trust ratio's ε3.
        bias_correction: divide the moments by :math:`1-\beta^k` (False: ALTO Vanilla).
        max_grad_norm: clip the global gradient norm first (torch's way); None: no clipping.
        weight_decay_mask: where decay applies (see above).
        trust_ratio_mask: where the trust ratio applies (see above).
    """
    check_betas(betas, ("beta1", "beta2", "beta3"))
    return _layerwise(
        learning_rate, _explore(alpha, betas[0], "beta1"), (betas[1], betas[2]), eps,
        weight_decay, eps2, eps3, bias_correction, max_grad_norm, weight_decay_mask,
        trust_ratio_mask,
    )  # fmt: skip


def lamb(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-6,
    weight_decay: float = 1e-4,
    *,
    eps2: float = 1e-6,
    eps3: float = 1e-10,
    bias_correction: bool = True,
    max_grad_norm: float | None = 1.0,
    weight_decay_mask: optax.MaskOrFn = None,
    trust_ratio_mask: optax.MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""LAMB as ALTO without E (:class:`valleys.optim.Lamb`): the same chain minus
    :func:`e_transform`, so that ALTO against it measures E alone.

    .. math::
        r_k = \frac{m_k/(1-\beta_2^k)}{\sqrt{v_k/(1-\beta_3^k)} + \epsilon_1} + \lambda\theta_k,
        \qquad \theta_{k+1} = \theta_k - \eta_k\, r_k\,
            \frac{\phi(\lVert\theta_k\rVert)}{\lVert r_k\rVert + \epsilon_2\phi(\lVert\theta_k\rVert)}

    with the moments of the clipped raw gradients. ALTO's defaults (``optax.lamb`` has no clipping,
    no bias-correction switch and another trust-ratio form). ``betas`` are (β2, β3). The other
    arguments are :func:`alto`'s.
    """
    check_betas(betas, ("beta2", "beta3"))
    return _layerwise(
        learning_rate, optax.identity(), (betas[0], betas[1]), eps, weight_decay, eps2, eps3,
        bias_correction, max_grad_norm, weight_decay_mask, trust_ratio_mask,
    )  # fmt: skip


def _adam_family(
    learning_rate: optax.ScalarOrSchedule,
    betas: tuple[float, float, float],
    alpha: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    max_grad_norm: float | None,
    weight_decay_mask: optax.MaskOrFn,
) -> optax.GradientTransformation:
    """EAdam (L2 term on the gradient, before E) or EAdamW (decay added to the update)."""
    check_betas(betas, ("beta1", "beta2", "beta3"))
    _check(learning_rate, max_grad_norm, eps=eps, weight_decay=weight_decay)
    decay = optax.add_decayed_weights(weight_decay, weight_decay_mask)
    return optax.chain(
        _clip(max_grad_norm),
        optax.identity() if decoupled else decay,
        _explore(alpha, betas[0], "beta1"),
        scale_by_moments(betas[1], betas[2], eps),
        decay if decoupled else optax.identity(),
        optax.scale_by_learning_rate(learning_rate),
    )


def eadam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[float, float, float] = (0.99, 0.9, 0.999),
    alpha: float = -5.0,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    max_grad_norm: float | None = None,
    weight_decay_mask: optax.MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""EAdam: Adam on E's gradient (Zhao et al., NeurIPS 2025, Algorithm 4);
    :class:`valleys.optim.EAdam`.

    .. math::
        g_k &\leftarrow \operatorname{clip}(g_k) + \lambda\theta_k \quad\text{(L2 term, before E)} \\
        u_k &= g_k + \alpha a_k, \qquad
            m_k = \beta_2 m_{k-1} + (1-\beta_2) u_k, \qquad v_k = \beta_3 v_{k-1} + (1-\beta_3) u_k^2 \\
        \theta_{k+1} &= \theta_k - \eta_k\,\frac{m_k/(1-\beta_2^k)}{\sqrt{v_k/(1-\beta_3^k)} + \epsilon}

    With α = 0 it is ``optax.adam`` (plus the L2 term). Arguments as :func:`alto`'s.
    """
    return _adam_family(
        learning_rate, betas, alpha, eps, weight_decay, False, max_grad_norm, weight_decay_mask
    )


def eadamw(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    betas: tuple[float, float, float] = (0.99, 0.9, 0.999),
    alpha: float = -5.0,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    *,
    max_grad_norm: float | None = None,
    weight_decay_mask: optax.MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""EAdamW: :func:`eadam` with decoupled weight decay; :class:`valleys.optim.EAdamW`.

    .. math::
        \theta_{k+1} = \theta_k - \eta_k \left(\frac{m_k/(1-\beta_2^k)}{\sqrt{v_k/(1-\beta_3^k)}
            + \epsilon} + \lambda\theta_k\right)

    with the moments of E's gradient of the clipped :math:`g_k`. With α = 0 it is
    ``optax.adamw``. Arguments as :func:`alto`'s.
    """
    return _adam_family(
        learning_rate, betas, alpha, eps, weight_decay, True, max_grad_norm, weight_decay_mask
    )


def esgd(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    momentum: float = 0.0,
    alpha: float = -5.0,
    beta: float = 0.99,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    max_grad_norm: float | None = None,
    weight_decay_mask: optax.MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""ESGD: SGD with momentum on E's gradient (Zhao et al., NeurIPS 2025, Algorithm 3);
    :class:`valleys.optim.ESGD` with ``dampening=0``.

    .. math::
        u_k &= (\operatorname{clip}(g_k) + \lambda\theta_k) + \alpha a_k, \qquad
            a_k = \beta a_{k-1} + (1-\beta)(g_k - g_{k-1}) \\
        m_k &= \mu\, m_{k-1} + u_k \quad (m_0 = 0), \qquad
            \theta_{k+1} = \theta_k - \eta_k\,(u_k + \mu m_k \text{ if Nesterov, else } m_k)

    The momentum is ``optax.trace`` (no dampening, as the paper's ESGD and torch's SGD by
    default); μ = 0 keeps no momentum buffer. With α = 0 it is ``optax.sgd`` (plus the L2 term).
    """
    check_beta("momentum", momentum)
    check_beta("beta", beta)
    if nesterov and not momentum > 0:
        raise ValueError("Invalid nesterov=True: Nesterov momentum needs momentum > 0")
    _check(learning_rate, max_grad_norm, weight_decay=weight_decay)
    return optax.chain(
        _clip(max_grad_norm),
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        _explore(alpha, beta, "beta"),
        optax.trace(momentum, nesterov) if momentum else optax.identity(),
        optax.scale_by_learning_rate(learning_rate),
    )
