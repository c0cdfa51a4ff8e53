"""Tests for valleys.bench.analysis.flatness: exact answers on quadratics and a small BatchNorm conv net."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from one_thread import one_thread  # noqa: F401  (the fixture pytestmark uses)
from torch import nn
from torch.func import functional_call

from valleys.bench.analysis.flatness import (
    distance_travelled,
    filter_normalized_direction,
    hutchinson_trace,
    hvp,
    lanczos_extreme_eigenvalues,
    loss_profile_1d,
    loss_surface_2d,
    make_loss_fn,
    top_hessian_eigenvalue,
)

DIM = 20


pytestmark = pytest.mark.usefixtures("one_thread")


def symmetric_with_eigenvalues(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(
        torch.randn(len(eigenvalues), len(eigenvalues), generator=generator, dtype=torch.float64)
    )
    return q @ torch.diag(eigenvalues) @ q.T


def quadratic(matrix: torch.Tensor) -> tuple[list[torch.Tensor], Callable[[], torch.Tensor]]:
    """``0.5 θᵀAθ`` with θ split over two tensors of different shapes (Hessian exactly A)."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(DIM - 12, generator=generator, dtype=torch.float64, requires_grad=True)

    def loss_fn() -> torch.Tensor:
        theta = torch.cat([a.reshape(-1), b])
        return 0.5 * theta @ matrix @ theta

    return [a, b], loss_fn


def spectrum(low: float, high: float, *extra: float) -> torch.Tensor:
    values = torch.linspace(low, high, DIM - len(extra), dtype=torch.float64)
    return torch.cat([values, torch.tensor(extra, dtype=torch.float64)])


def test_hvp_on_quadratic_is_matrix_vector_product():
    matrix = symmetric_with_eigenvalues(spectrum(-3.0, 7.0))
    params, loss_fn = quadratic(matrix)
    vector = [torch.randn_like(p) for p in params]
    product = hvp(loss_fn, params, vector)
    flat = torch.cat([v.reshape(-1) for v in vector])
    expected = matrix @ flat
    assert [t.shape for t in product] == [p.shape for p in params]
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in product]), expected)


def test_hvp_zero_block_for_linear_and_unused_parameters():
    x = torch.randn(4, dtype=torch.float32, requires_grad=True)
    linear = torch.randn(3, dtype=torch.float32, requires_grad=True)
    unused = torch.randn(2, dtype=torch.float32, requires_grad=True)

    def loss_fn() -> torch.Tensor:
        return (x**2).sum() + linear.sum()

    product = hvp(loss_fn, [x, linear, unused], [torch.ones(4), torch.ones(3), torch.ones(2)])
    assert all(t.dtype == torch.float32 for t in product)
    torch.testing.assert_close(product[0], torch.full((4,), 2.0))
    assert not product[1].any() and not product[2].any()


def test_power_iteration_matches_top_eigenvalue():
    params, loss_fn = quadratic(symmetric_with_eigenvalues(spectrum(0.1, 5.0, 10.0)))
    result = top_hessian_eigenvalue(loss_fn, params, iters=200, tol=1e-6)
    assert result.converged
    assert result.value == pytest.approx(10.0, rel=1e-8)
    assert result.residual <= 1e-6 * 10.0
    assert result.iterations < 200


def test_power_iteration_reports_non_convergence():
    params, loss_fn = quadratic(symmetric_with_eigenvalues(spectrum(0.0, 1.0, 9.99, 10.0)))
    result = top_hessian_eigenvalue(loss_fn, params, iters=2)
    assert not result.converged
    assert result.iterations == 2
    assert result.residual > 1e-4 * abs(result.value)


def test_negative_curvature_lanczos_min_is_right_power_iteration_finds_magnitude():
    params, loss_fn = quadratic(symmetric_with_eigenvalues(spectrum(-1.0, 5.0, -20.0)))
    lo, hi = lanczos_extreme_eigenvalues(loss_fn, params, k=DIM, tol=1e-8)
    assert lo.converged and hi.converged
    assert lo.value == pytest.approx(-20.0, rel=1e-9)
    assert hi.value == pytest.approx(5.0, rel=1e-9)
    dominant = top_hessian_eigenvalue(loss_fn, params, iters=500)
    assert dominant.converged
    assert dominant.value == pytest.approx(-20.0, rel=1e-4)


def test_lanczos_stops_early_and_reports_unconverged_budget():
    params, loss_fn = quadratic(symmetric_with_eigenvalues(spectrum(-2.0, 3.0, -50.0, 50.0)))
    lo, hi = lanczos_extreme_eigenvalues(loss_fn, params, k=DIM, tol=1e-4)
    assert lo.converged and hi.converged and lo.iterations < DIM
    assert (lo.value, hi.value) == pytest.approx((-50.0, 50.0), rel=1e-6)
    short_lo, short_hi = lanczos_extreme_eigenvalues(loss_fn, params, k=2, tol=1e-10)
    assert short_lo.iterations == 2
    assert not (short_lo.converged and short_hi.converged)


def test_hutchinson_within_stderr_of_trace_and_deterministic():
    eigenvalues = spectrum(-1.0, 6.0, 12.0)
    params, loss_fn = quadratic(symmetric_with_eigenvalues(eigenvalues))
    result = hutchinson_trace(loss_fn, params, samples=200, seed=3)
    assert result.stderr > 0
    assert abs(result.mean - eigenvalues.sum().item()) < 4 * result.stderr
    assert hutchinson_trace(loss_fn, params, samples=200, seed=3) == result


def test_hutchinson_exact_for_diagonal_hessian():
    params, loss_fn = quadratic(torch.diag(spectrum(1.0, 4.0)))
    result = hutchinson_trace(loss_fn, params, samples=5)
    assert result.mean == pytest.approx(spectrum(1.0, 4.0).sum().item(), rel=1e-12)
    assert result.stderr == pytest.approx(0.0, abs=1e-12)


def small_bn_net() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.BatchNorm2d(2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    ).double()
    x = torch.randn(8, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics
            net(torch.randn(8, 1, 6, 6, dtype=torch.float64) * 2 + 0.5)
    net.eval()
    return net, x, y


def explicit_hessian(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(theta, [math.prod(s) for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return F.cross_entropy(functional_call(net, params, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat)


def test_hvp_conv_batchnorm_eval_matches_explicit_hessian():
    net, x, y = small_bn_net()
    params = list(net.parameters())
    running_mean = net[1].running_mean.clone()
    loss_fn = make_loss_fn(net, F.cross_entropy, [(x, y)])
    hessian = explicit_hessian(net, x, y)
    vector = [torch.randn_like(p) for p in params]
    product = torch.cat([t.reshape(-1) for t in hvp(loss_fn, params, vector)])
    expected = hessian @ torch.cat([v.reshape(-1) for v in vector])
    torch.testing.assert_close(product, expected, rtol=1e-9, atol=1e-11)
    assert torch.equal(net[1].running_mean, running_mean)

    true = torch.linalg.eigvalsh(hessian)
    lo, hi = lanczos_extreme_eigenvalues(loss_fn, params, k=len(true), tol=1e-8)
    assert (lo.value, hi.value) == pytest.approx((true[0].item(), true[-1].item()), rel=1e-6)
    top = top_hessian_eigenvalue(loss_fn, params, iters=1000, tol=1e-3)
    assert top.converged
    assert top.value == pytest.approx(true.abs().max().item(), rel=1e-4)


def test_make_loss_fn_averages_batches_and_rejects_training_mode():
    net, x, y = small_bn_net()
    loss_fn = make_loss_fn(net, F.cross_entropy, [(x[:4], y[:4]), (x[4:], y[4:])])
    with torch.no_grad():
        assert loss_fn().item() == pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-12)
    net.train()
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        loss_fn()
    with pytest.raises(ValueError, match="at least one"):
        make_loss_fn(net, F.cross_entropy, [])


def test_filter_normalized_direction():
    net, _, _ = small_bn_net()
    direction = filter_normalized_direction(net, seed=7)
    params = list(net.parameters())
    assert [d.shape for d in direction] == [p.shape for p in params]
    for d, p in zip(direction, params, strict=True):
        if p.dim() <= 1:
            assert not d.any()
        else:
            torch.testing.assert_close(
                d.reshape(len(d), -1).norm(dim=1), p.detach().reshape(len(p), -1).norm(dim=1)
            )
    again = filter_normalized_direction(net, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(direction, again, strict=True))
    other = filter_normalized_direction(net, seed=8)
    assert not torch.equal(direction[0], other[0])


class Quadratic(nn.Module):
    """``0.5 Σ c (w − w*)²`` over a matrix parameter and a (directionless) bias."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64))
        self.bias = nn.Parameter(torch.tensor([0.25, -0.5], dtype=torch.float64))
        self.register_buffer("curvature", torch.tensor([[1.0, 2.0], [3.0, 4.0]]).double())

    def loss(self) -> torch.Tensor:
        return 0.5 * (self.curvature * (self.weight - 1.0) ** 2).sum() + (self.bias**2).sum()


def test_loss_profile_1d_of_quadratic_is_the_parabola():
    model = Quadratic()
    direction = [torch.tensor([[1.0, 0.0], [-1.0, 2.0]], dtype=torch.float64), torch.ones(2)]
    alphas = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)
    losses = loss_profile_1d(model, model.loss, direction, alphas)
    w0, b0, c = model.weight.detach(), model.bias.detach(), model.curvature
    d = direction[0]
    # Along d: L(α) = L0 + α Σ c (w0 − 1) d + ½ α² Σ c d² (the bias moves too: its direction is 1).
    expected = torch.stack(
        [0.5 * (c * (w0 + a * d - 1.0) ** 2).sum() + ((b0 + a) ** 2).sum() for a in alphas]
    )
    torch.testing.assert_close(losses, expected, rtol=1e-14, atol=1e-14)
    curvature = (losses[2:] - 2 * losses[1:-1] + losses[:-2]) / 0.5**2
    torch.testing.assert_close(
        curvature, torch.full_like(curvature, (c * d**2).sum().item() + 2 * 2.0)
    )


def test_loss_surface_2d_matches_direct_evaluation():
    model = Quadratic()
    d1 = [torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)]
    d2 = [torch.zeros(2, 2, dtype=torch.float64), torch.tensor([1.0, -1.0]).double()]
    alphas, betas = [-1.0, 0.0, 0.5], [0.0, 2.0]
    surface = loss_surface_2d(model, model.loss, d1, d2, alphas, betas)
    assert surface.shape == (3, 2)
    reference = Quadratic()
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            with torch.no_grad():
                reference.weight.copy_(model.weight + a * d1[0])
                reference.bias.copy_(model.bias + b * d2[1])
            assert surface[i, j].item() == pytest.approx(reference.loss().item(), rel=1e-14)
    profile = loss_profile_1d(model, model.loss, d1, alphas)
    torch.testing.assert_close(surface[:, 0], profile, rtol=0, atol=0)


def test_profiles_restore_weights_and_buffers_exactly():
    net, x, y = small_bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss_fn = make_loss_fn(net, F.cross_entropy, [(x, y)])
    d1 = filter_normalized_direction(net, seed=0)
    d2 = filter_normalized_direction(net, seed=1)
    profile = loss_profile_1d(net, loss_fn, d1, torch.linspace(-1, 1, 5))
    loss_surface_2d(net, loss_fn, d1, d2, [-0.3, 0.1], [0.2, 0.7])
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert profile[2].item() == loss_fn().item()

    calls = 0

    def failing_loss() -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("boom")
        return loss_fn()

    with pytest.raises(RuntimeError, match="boom"):
        loss_profile_1d(net, failing_loss, d1, [0.5, 1.0, 1.5])
    assert all(torch.equal(before[k], net.state_dict()[k]) for k in before)


def test_direction_shape_is_checked():
    model = Quadratic()
    with pytest.raises(ValueError, match="direction"):
        loss_profile_1d(model, model.loss, [torch.zeros(2, 2)], [0.0])


def test_distance_travelled():
    start = [torch.zeros(2, 2), torch.zeros(3)]
    end = [torch.ones(2, 2), torch.tensor([0.0, 3.0, 0.0])]
    assert distance_travelled(start, end) == pytest.approx(math.sqrt(4 + 9))
    assert distance_travelled(start, start) == 0.0
    with pytest.raises(ValueError, match="matching shapes"):
        distance_travelled(start, [torch.ones(2, 2)])


def test_bad_arguments_fail_loudly():
    params, loss_fn = quadratic(torch.eye(DIM, dtype=torch.float64))
    with pytest.raises(ValueError, match="iters"):
        top_hessian_eigenvalue(loss_fn, params, iters=0)
    with pytest.raises(ValueError, match="tol"):
        lanczos_extreme_eigenvalues(loss_fn, params, tol=0.0)
    with pytest.raises(ValueError, match="samples"):
        hutchinson_trace(loss_fn, params, samples=1)
    with pytest.raises(ValueError, match="require grad"):
        hvp(loss_fn, [p.detach() for p in params], [torch.ones_like(p) for p in params])
