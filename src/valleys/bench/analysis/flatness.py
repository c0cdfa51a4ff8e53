"""Flatness of a minimum: Hessian spectra, Hessian trace, loss profiles and distance travelled.

The paper's reviewers asked for evidence that E/ALTO find *flatter* minima; this module provides the
measurements. Every Hessian quantity is computed matrix-free from Hessian-vector products (HVPs)
obtained by double backpropagation, so it scales to real networks.

Loss functions
--------------
Everything here takes a ``loss_fn``: a zero-argument callable that returns a scalar tensor computed
from the model's *current* parameters, e.g. the mean loss over a fixed set of batches
(:func:`make_loss_fn`). It must be deterministic, so the model must be in eval mode: in training
mode dropout draws new masks on every call and BatchNorm normalises with batch statistics and
mutates its running statistics, so successive evaluations would not be the same function.
BatchNorm in eval mode is an affine map and twice differentiable, so HVPs through it are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "EigenResult",
    "ExtremeEigenvalues",
    "LossFn",
    "TraceResult",
    "distance_travelled",
    "filter_normalized_direction",
    "hutchinson_trace",
    "hvp",
    "lanczos_extreme_eigenvalues",
    "loss_profile_1d",
    "loss_surface_2d",
    "make_loss_fn",
    "top_hessian_eigenvalue",
]

LossFn = Callable[[], Tensor]
"""Zero-argument callable returning a scalar loss of the model's current parameters."""

# Krylov vectors live in float64 whatever the parameters' dtype: full reorthogonalisation and the
# Rayleigh quotients lose accuracy in float32 long before the HVPs themselves do.
_WORK_DTYPE = torch.float64


class EigenResult(NamedTuple):
    """An eigenvalue estimate with an honest convergence flag.

    ``residual`` is ``‖H v − value·v‖`` for the unit vector ``v`` the estimate came from. Because
    the Hessian is symmetric, some eigenvalue of ``H`` lies within ``residual`` of ``value``
    (Bauer–Fike). ``converged`` says whether ``residual ≤ tol·scale`` with ``scale`` the largest
    eigenvalue magnitude found.
    """

    value: float
    converged: bool
    iterations: int
    residual: float


class ExtremeEigenvalues(NamedTuple):
    """Smallest and largest (algebraic) Hessian eigenvalues; unpacks as ``lo, hi``."""

    min: EigenResult
    max: EigenResult


class TraceResult(NamedTuple):
    """Monte Carlo estimate of the Hessian trace and its standard error."""

    mean: float
    stderr: float


def make_loss_fn(
    model: nn.Module,
    criterion: Callable[[Tensor, Tensor], Tensor],
    batches: Iterable[tuple[Tensor, Tensor]],
) -> LossFn:
    """Return a :data:`LossFn`: the mean of ``criterion(model(x), y)`` over fixed batches.

    The batches are materialised once (so every call sees the same data) and must already be on
    the model's device. With equal batch sizes and a mean-reduced criterion this is the mean loss
    over all samples. The whole computation graph over all batches is kept for HVPs, so memory
    grows with the number of batches.

    Calling the returned function raises ``RuntimeError`` if the model is in training mode, since
    the loss would then not be a deterministic function of the parameters (see module docstring).
    """
    fixed = list(batches)
    if not fixed:
        raise ValueError("make_loss_fn: batches must contain at least one (x, y) batch")

    def loss_fn() -> Tensor:
        if model.training:
            raise RuntimeError(
                "make_loss_fn: the model is in training mode; call model.eval() so that dropout "
                "and BatchNorm make the loss a deterministic function of the parameters"
            )
        total = criterion(model(fixed[0][0]), fixed[0][1])
        for x, y in fixed[1:]:
            total = total + criterion(model(x), y)
        return total / len(fixed)

    return loss_fn


def _flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1).to(_WORK_DTYPE) for t in tensors])


def _unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out = []
    offset = 0
    for t in like:
        n = t.numel()
        out.append(flat[offset : offset + n].view(t.shape).to(t.dtype))
        offset += n
    return out


class _Hessian:
    """Matrix-free Hessian of ``loss_fn`` at the current parameters.

    One forward pass and one backward pass with ``create_graph=True`` build ∇L as a differentiable
    function; each product ``H v = ∇(∇L · v)`` is then one more backward pass through that graph
    (Pearlmutter 1994), which is why the graph is retained between products.
    """

    def __init__(self, loss_fn: LossFn, params: Iterable[Tensor]) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("params must contain at least one tensor")
        frozen = [i for i, p in enumerate(self.params) if not p.requires_grad]
        if frozen:
            raise ValueError(f"params {frozen} do not require grad; the Hessian needs them to")
        # Fused attention kernels (flash, memory-efficient) have no double backward; the math
        # implementation of scaled_dot_product_attention does, so the graph is built with it.
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            loss = loss_fn()
            if loss.ndim != 0:
                raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        # A gradient that does not depend on the parameters (loss linear in them, or unused) has a
        # zero Hessian block; autograd cannot differentiate it again, so it is left out.
        self._grads = [g for g in grads if g is not None and g.requires_grad]
        self._grad_index = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.dim = sum(p.numel() for p in self.params)
        self.device = self.params[0].device

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat float64 vector ``v``; returns a flat float64 vector."""
        if not self._grads:
            return torch.zeros_like(v)
        vs = _unflatten(v, self.params)
        with torch.enable_grad():
            products = torch.autograd.grad(
                self._grads,
                self.params,
                grad_outputs=[vs[i] for i in self._grad_index],
                retain_graph=True,
                allow_unused=True,
            )
        return torch.cat(
            [
                (torch.zeros_like(p) if hv is None else hv).reshape(-1).to(_WORK_DTYPE)
                for p, hv in zip(self.params, products, strict=True)
            ]
        )


def _unit_start(dim: int, seed: int, device: torch.device) -> Tensor:
    # Drawn on the CPU so the start vector, hence the result, is the same on every device.
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=generator, dtype=_WORK_DTYPE)
    return (v / torch.linalg.vector_norm(v)).to(device)


def _check_tol(iters: int, tol: float, name: str) -> None:
    if iters < 1:
        raise ValueError(f"{name} must be >= 1, got {iters}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")


def hvp(loss_fn: LossFn, params: Sequence[Tensor], vector: Sequence[Tensor]) -> list[Tensor]:
    """Hessian-vector product ``H v`` of ``loss_fn`` w.r.t. ``params`` by double backward.

    ``vector`` is a list of tensors shaped like ``params``; the result has the same structure.
    Exact up to rounding (no finite differences). The model must be in eval mode (module docstring).
    """
    params = list(params)
    vector = list(vector)
    if len(vector) != len(params) or any(
        v.shape != p.shape for v, p in zip(vector, params, strict=True)
    ):
        raise ValueError("vector must have one tensor per parameter, with the parameter's shape")
    hessian = _Hessian(loss_fn, params)
    return _unflatten(hessian.matvec(_flatten(vector).to(hessian.device)), params)


def top_hessian_eigenvalue(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    *,
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
) -> EigenResult:
    """Dominant Hessian eigenvalue by power iteration on HVPs.

    Power iteration finds the eigenvalue of largest *magnitude*, which is the largest eigenvalue
    only if no negative eigenvalue is larger in absolute value; away from a minimum (or at a
    saddle) use :func:`lanczos_extreme_eigenvalues`, which returns both ends of the spectrum.

    Algorithm: from a seeded Gaussian unit vector ``v`` iterate ``w = H v``, ``λ = vᵀw`` (Rayleigh
    quotient), ``r = ‖w − λ v‖``; stop when ``r ≤ tol·|λ|``, else ``v ← w/‖w‖``. Stopping on the
    residual rather than on the change of ``λ`` matters: when the top two eigenvalues are close,
    ``λ`` changes very slowly long before it is right. If ``iters`` HVPs do not reach the
    tolerance the last estimate is returned with ``converged=False``.
    """
    _check_tol(iters, tol, "iters")
    hessian = _Hessian(loss_fn, params)
    v = _unit_start(hessian.dim, seed, hessian.device)
    value = residual = math.nan
    for iteration in range(1, iters + 1):
        w = hessian.matvec(v)
        value = torch.dot(v, w).item()
        residual = torch.linalg.vector_norm(w - value * v).item()
        if residual <= tol * abs(value):
            return EigenResult(value, True, iteration, residual)
        # w = 0 would have given residual 0 and returned above, so the division is safe.
        v = w / torch.linalg.vector_norm(w)
    return EigenResult(value, False, iters, residual)


def lanczos_extreme_eigenvalues(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    *,
    k: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
) -> ExtremeEigenvalues:
    """Smallest and largest Hessian eigenvalues by Lanczos with full reorthogonalisation.

    Builds an orthonormal basis ``Q`` of the Krylov space of a seeded Gaussian start vector with at
    most ``k`` HVPs (``k`` is capped at the number of parameters). Each new vector is
    orthogonalised against *all* previous ones, twice (classical Gram–Schmidt, "twice is enough"),
    which keeps the Ritz values free of the spurious copies plain Lanczos produces. The extreme
    eigenvalues of the tridiagonal ``T = QᵀHQ`` (``torch.linalg.eigh``) estimate those of ``H``;
    the residual of Ritz pair ``i`` is ``β_j·|s_{j,i}|`` (last component of its eigenvector of
    ``T``), so convergence is checked after every step without extra HVPs, and the iteration stops
    once both ends satisfy ``residual ≤ tol·max(|λ_min|, |λ_max|)``.

    Memory: ``k`` float64 vectors of the parameter count. Unlike power iteration this handles
    negative curvature: ``min`` is the most negative eigenvalue.
    """
    _check_tol(k, tol, "k")
    hessian = _Hessian(loss_fn, params)
    k = min(k, hessian.dim)
    basis = torch.empty(k, hessian.dim, dtype=_WORK_DTYPE, device=hessian.device)
    q = _unit_start(hessian.dim, seed, hessian.device)
    diagonal: list[float] = []
    off_diagonal: list[float] = []
    for j in range(k):
        basis[j] = q
        w = hessian.matvec(q)
        diagonal.append(torch.dot(q, w).item())
        span = basis[: j + 1]
        for _ in range(2):
            w = w - span.T @ (span @ w)
        beta = torch.linalg.vector_norm(w).item()
        t = torch.diag(torch.tensor(diagonal, dtype=_WORK_DTYPE))
        if off_diagonal:
            sub = torch.tensor(off_diagonal, dtype=_WORK_DTYPE)
            t = t + torch.diag(sub, 1) + torch.diag(sub, -1)
        ritz_values, ritz_vectors = torch.linalg.eigh(t)
        residuals = (beta * ritz_vectors[-1].abs()).tolist()
        scale = max(abs(ritz_values[0].item()), abs(ritz_values[-1].item()))
        bound = tol * scale
        converged_min = residuals[0] <= bound
        converged_max = residuals[-1] <= bound
        # beta = 0 means the Krylov space is invariant: the Ritz values are exact eigenvalues.
        if (converged_min and converged_max) or beta == 0.0 or j + 1 == k:
            break
        off_diagonal.append(beta)
        q = w / beta
    iterations = len(diagonal)
    return ExtremeEigenvalues(
        EigenResult(ritz_values[0].item(), converged_min, iterations, residuals[0]),
        EigenResult(ritz_values[-1].item(), converged_max, iterations, residuals[-1]),
    )


def hutchinson_trace(
    loss_fn: LossFn,
    params: Sequence[Tensor],
    *,
    samples: int = 100,
    seed: int = 0,
) -> TraceResult:
    """Hessian trace by Hutchinson's estimator (Hutchinson 1989).

    For Rademacher probes ``z`` (entries ±1 with equal probability) ``E[zᵀHz] = tr(H)``; the
    estimate is the mean of ``samples`` such products (one HVP each) and ``stderr`` is the sample
    standard deviation over ``√samples``. Rademacher probes give the smallest variance among
    i.i.d. probe distributions: ``Var = 2 Σ_{i≠j} H_ij²``, so a diagonal Hessian is exact.
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2 to estimate a standard error, got {samples}")
    hessian = _Hessian(loss_fn, params)
    generator = torch.Generator().manual_seed(seed)
    estimates = torch.empty(samples, dtype=_WORK_DTYPE)
    for i in range(samples):
        z = torch.randint(0, 2, (hessian.dim,), generator=generator).to(_WORK_DTYPE) * 2 - 1
        z = z.to(hessian.device)
        estimates[i] = torch.dot(z, hessian.matvec(z)).item()
    return TraceResult(estimates.mean().item(), (estimates.std() / math.sqrt(samples)).item())


def filter_normalized_direction(model: nn.Module, seed: int) -> list[Tensor]:
    """A random direction in parameter space with filter normalisation (Li et al. 2018).

    One tensor per ``model.parameters()`` entry, in that order. Each parameter with two or more
    dimensions gets a Gaussian direction whose every filter (slice along dim 0: an output channel
    of a convolution, a row, i.e. one neuron, of a linear layer) is rescaled to the norm of the
    corresponding filter of the weights, ``d_i ← d_i · ‖θ_i‖ / ‖d_i‖``. This removes the scale
    invariance of ReLU/BatchNorm networks, so 1-D plots of different minima are comparable.
    Biases and all other 1-D parameters (BatchNorm weights and biases) get a zero direction, as in
    Li et al.; buffers (BatchNorm running statistics) are not part of the direction.
    The random numbers are drawn on the CPU from ``seed``, so the direction is device-independent.
    """
    generator = torch.Generator().manual_seed(seed)
    direction = []
    for p in model.parameters():
        if p.dim() <= 1:
            direction.append(torch.zeros_like(p, requires_grad=False))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        shape = (-1,) + (1,) * (p.dim() - 1)
        weight_norms = p.detach().reshape(p.shape[0], -1).norm(dim=1).view(shape)
        direction_norms = d.reshape(p.shape[0], -1).norm(dim=1).view(shape)
        direction.append(d * weight_norms / direction_norms)
    return direction


def _state_snapshot(model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    tensors = [*model.parameters(), *model.buffers()]
    return [(t, t.detach().clone()) for t in tensors]


def _restore(snapshot: list[tuple[Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for tensor, saved in snapshot:
            tensor.copy_(saved)


def _check_direction(direction: Sequence[Tensor], params: Sequence[Tensor], name: str) -> None:
    if len(direction) != len(params) or any(
        d.shape != p.shape for d, p in zip(direction, params, strict=True)
    ):
        raise ValueError(
            f"{name} must have one tensor per model parameter, with the parameter's shape"
        )


def _losses_at(
    model: nn.Module,
    loss_fn: LossFn,
    directions: Sequence[Sequence[Tensor]],
    coefficients: Sequence[Sequence[float]],
) -> Tensor:
    """Loss at ``θ0 + Σ_k c_k d_k`` for each coefficient tuple; restores the model exactly."""
    params = list(model.parameters())
    # Parameters *and* buffers are snapshotted, so even a loss_fn that mutates buffers (a model
    # left in training mode) cannot leave the model changed.
    snapshot = _state_snapshot(model)
    start = [saved for _, saved in snapshot[: len(params)]]
    losses = torch.empty(len(coefficients), dtype=_WORK_DTYPE)
    try:
        with torch.no_grad():
            for i, coeffs in enumerate(coefficients):
                for j, (p, p0) in enumerate(zip(params, start, strict=True)):
                    # Built from θ0 each time rather than stepped, so no rounding accumulates.
                    value = p0
                    for c, d in zip(coeffs, directions, strict=True):
                        value = value + c * d[j]
                    p.copy_(value)
                losses[i] = loss_fn().item()
    finally:
        _restore(snapshot)
    return losses


def _as_floats(values: Sequence[float] | Tensor) -> list[float]:
    return torch.as_tensor(values, dtype=_WORK_DTYPE).reshape(-1).tolist()


def loss_profile_1d(
    model: nn.Module,
    loss_fn: LossFn,
    direction: Sequence[Tensor],
    alphas: Sequence[float] | Tensor,
) -> Tensor:
    """Losses ``L(θ0 + α d)`` for each ``α`` (Li et al. 2018 1-D plot); float64 tensor.

    ``direction`` has one tensor per ``model.parameters()`` entry (e.g. from
    :func:`filter_normalized_direction`). Parameters and buffers are restored bit for bit
    afterwards, also if ``loss_fn`` raises.
    """
    params = list(model.parameters())
    _check_direction(direction, params, "direction")
    return _losses_at(model, loss_fn, [direction], [(a,) for a in _as_floats(alphas)])


def loss_surface_2d(
    model: nn.Module,
    loss_fn: LossFn,
    d1: Sequence[Tensor],
    d2: Sequence[Tensor],
    alphas: Sequence[float] | Tensor,
    betas: Sequence[float] | Tensor,
) -> Tensor:
    """Losses ``L(θ0 + α d1 + β d2)`` on a grid; float64 tensor of shape ``(len(α), len(β))``.

    Entry ``[i, j]`` is at ``(alphas[i], betas[j])``. The model is restored exactly afterwards.
    """
    params = list(model.parameters())
    _check_direction(d1, params, "d1")
    _check_direction(d2, params, "d2")
    a_values, b_values = _as_floats(alphas), _as_floats(betas)
    grid = [(a, b) for a in a_values for b in b_values]
    return _losses_at(model, loss_fn, [d1, d2], grid).view(len(a_values), len(b_values))


def distance_travelled(params_start: Iterable[Tensor], params_end: Iterable[Tensor]) -> float:
    """Euclidean distance ``‖θ_T − θ_0‖`` over all parameters, in float64."""
    start, end = list(params_start), list(params_end)
    if len(start) != len(end) or any(a.shape != b.shape for a, b in zip(start, end, strict=True)):
        raise ValueError("params_start and params_end must hold tensors of matching shapes")
    squared = sum(
        (torch.linalg.vector_norm(b.detach().to(_WORK_DTYPE) - a.detach().to(_WORK_DTYPE)) ** 2)
        .cpu()
        .item()
        for a, b in zip(start, end, strict=True)
    )
    return math.sqrt(squared)
