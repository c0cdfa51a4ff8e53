r"""Independent per-tensor references, written straight from the paper's equations.

These use E's *two-buffer* form (previous gradient and :math:`a`), not the one-buffer identity the
package uses, so that agreement also checks the identity. Plain Python scalars, no foreach, no
cleverness: the oracle for ``test_equations.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class E:
    r""":math:`a_k = \beta a_{k-1} + (1-\beta)(g_k - g_{k-1})`, :math:`\hat g = g + \alpha a`."""

    alpha: float
    beta: float
    prev: dict[int, Tensor] = field(default_factory=dict)
    a: dict[int, Tensor] = field(default_factory=dict)

    def __call__(self, i: int, g: Tensor) -> Tensor:
        if self.alpha == 0:
            return g
        prev = self.prev.get(i, torch.zeros_like(g))
        a = self.a.get(i, torch.zeros_like(g))
        a = self.beta * a + (1 - self.beta) * (g - prev)
        self.prev[i], self.a[i] = g.clone(), a
        return g + self.alpha * a


def clip_factor(grads: list[Tensor], max_norm: float | None) -> float:
    if max_norm is None:
        return 1.0
    total = math.sqrt(sum(float((g * g).sum()) for g in grads))
    return min(1.0, max_norm / (total + 1e-6))


def trust_ratio(p: Tensor, r: Tensor, eps2: float, eps3: float) -> float:
    """The paper's phi(|p|) / (|r| + eps2 phi(|p|)), phi(x) = x + eps3; with eps2 = eps3 = 0,
    LAMB's |p| / |r|, and 1 where either norm is 0."""
    p_norm, r_norm = float(p.norm()), float(r.norm())
    if eps2 == 0 and eps3 == 0:
        return p_norm / r_norm if p_norm > 0 and r_norm > 0 else 1.0
    phi = p_norm + eps3
    return phi / (r_norm + eps2 * phi)


@dataclass
class RefALTO:
    """Algorithm 2 (bias_correction=True) / Algorithm 1 (False); alpha=0 is Lamb.

    ``weight_decay`` may be one value per tensor (parameter groups); ``trust_ratio="decayed"``
    scales only the tensors whose weight decay is not 0 (LAMB's reference code)."""

    lr: float
    betas: tuple[float, float, float]
    alpha: float
    eps: float = 1e-6
    weight_decay: float | tuple[float, ...] = 1e-4
    eps2: float = 1e-6
    eps3: float = 1e-10
    bias_correction: bool = True
    trust_ratio: bool | str = True
    max_grad_norm: float | None = 1.0
    k: int = 0
    m: dict[int, Tensor] = field(default_factory=dict)
    v: dict[int, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.e = E(self.alpha, self.betas[0])

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        _, b2, b3 = self.betas
        c = clip_factor(grads, self.max_grad_norm)
        self.k += 1
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            u = self.e(i, g * c)
            m = b2 * self.m.get(i, torch.zeros_like(p)) + (1 - b2) * u
            v = b3 * self.v.get(i, torch.zeros_like(p)) + (1 - b3) * u * u
            self.m[i], self.v[i] = m, v
            if self.bias_correction:
                m, v = m / (1 - b2**self.k), v / (1 - b3**self.k)
            decay = self.weight_decay
            if isinstance(decay, tuple):
                decay = decay[i]
            r = m / (v.sqrt() + self.eps) + decay * p
            if self.trust_ratio is True or (self.trust_ratio == "decayed" and decay != 0):
                r = r * trust_ratio(p, r, self.eps2, self.eps3)
            p.sub_(self.lr * r)


@dataclass
class RefEAdam:
    """Algorithm 4; ``decoupled`` gives EAdamW. alpha=0 is Adam / AdamW."""

    lr: float
    betas: tuple[float, float, float]
    alpha: float
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = False
    max_grad_norm: float | None = None
    k: int = 0
    m: dict[int, Tensor] = field(default_factory=dict)
    v: dict[int, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.e = E(self.alpha, self.betas[0])

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        _, b2, b3 = self.betas
        c = clip_factor(grads, self.max_grad_norm)
        self.k += 1
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            g = g * c
            if self.decoupled:
                p.mul_(1 - self.lr * self.weight_decay)
            else:
                g = g + self.weight_decay * p
            u = self.e(i, g)
            m = b2 * self.m.get(i, torch.zeros_like(p)) + (1 - b2) * u
            v = b3 * self.v.get(i, torch.zeros_like(p)) + (1 - b3) * u * u
            self.m[i], self.v[i] = m, v
            m_hat, v_hat = m / (1 - b2**self.k), v / (1 - b3**self.k)
            p.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))


@dataclass
class RefESGD:
    """Algorithm 3 with torch SGD's dampening, Nesterov and L2 weight decay."""

    lr: float
    momentum: float
    alpha: float
    beta: float
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    max_grad_norm: float | None = None
    buf: dict[int, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.e = E(self.alpha, self.beta)

    def step(self, params: list[Tensor], grads: list[Tensor]) -> None:
        c = clip_factor(grads, self.max_grad_norm)
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            u = self.e(i, g * c + self.weight_decay * p)
            if self.momentum:
                if i in self.buf:
                    self.buf[i] = self.momentum * self.buf[i] + (1 - self.dampening) * u
                else:
                    self.buf[i] = u.clone()
                u = u + self.momentum * self.buf[i] if self.nesterov else self.buf[i]
            p.sub_(self.lr * u)
