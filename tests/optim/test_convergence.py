"""Convergence on classic test functions, and the paper's 1-D functions of Figure 8.

All runs use the large-batch E defaults (α = −5, β1 = 0.99) unless the paper says otherwise, a
cosine-annealed learning rate, float64, and 4000 steps.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from optim_cases import Case, case_params
from torch import Tensor

from valleys.optim import ALTO

STEPS = 4000
QUAD_A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
QUAD_B = torch.tensor([1.0, -1.0], dtype=torch.float64)


def rosenbrock(p: Tensor) -> Tensor:
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


def beale(p: Tensor) -> Tensor:
    x, y = p[0], p[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def quadratic(p: Tensor) -> Tensor:
    return 0.5 * p @ QUAD_A @ p - QUAD_B @ p


FUNCTIONS = {
    "rosenbrock": (rosenbrock, (-1.5, 2.0), torch.tensor([1.0, 1.0])),
    "beale": (beale, (1.0, 1.0), torch.tensor([3.0, 0.5])),
    "quadratic": (quadratic, (2.0, -2.0), torch.linalg.solve(QUAD_A, QUAD_B)),
}


def _minimise(f: Callable[[Tensor], Tensor], start: tuple[float, ...], make, steps: int) -> Tensor:  # type: ignore[no-untyped-def]
    p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = make([p])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        f(p).backward()
        opt.step()
        schedule.step()
    return p.detach()


@pytest.mark.parametrize("function", list(FUNCTIONS))
@pytest.mark.parametrize("case", case_params(lambda case: case.convergence is not None))
def test_converges_to_the_minimiser(case: Case, function: str) -> None:
    f, start, minimiser = FUNCTIONS[function]
    run = case.convergence
    assert run is not None and run.lrs.keys() == FUNCTIONS.keys()
    end = _minimise(
        f, start, lambda p: case.make_default(p, lr=run.lrs[function], **run.overrides), STEPS
    )
    assert torch.linalg.vector_norm(end - minimiser.double()) < run.tolerance


def f1(x: Tensor) -> Tensor:
    """Figure 8, left: local minima at growing x, each lower than the last."""
    return 1 / (0.05 * x * torch.sin(2 * x) ** 2 + torch.log(x + 1))


def f2(x: Tensor) -> Tensor:
    """Figure 8, right: sharp wells at ±0.6, a wide one at 0."""
    return (
        1
        - torch.exp(-900 * (x - 0.6) ** 2)
        - torch.exp(-900 * (x + 0.6) ** 2)
        - torch.exp(-25 * x**2)
    )


def _run_1d(f: Callable[[Tensor], Tensor], start: float, opt_factory, steps: int = 1000) -> float:  # type: ignore[no-untyped-def]
    x = torch.tensor([start], dtype=torch.float64, requires_grad=True)
    opt = opt_factory([x])
    for _ in range(steps):
        opt.zero_grad()
        f(x).sum().backward()
        opt.step()
    return x.item()


def test_f2_alto_leaves_the_sharp_well_for_the_flat_one_where_adam_and_lamb_stay() -> None:
    """Paper settings: Adam β = 0.9999, ALTO β1 = 0.99, β2 = 0.9, α = −90; lr 0.03 and 1000 steps
    are ours (unpublished). At lr 0.1 Lamb and Adam escape too; at lr ≤ 0.01 ALTO stays as well."""
    lr = 0.03
    adam = _run_1d(f2, 0.95, lambda p: torch.optim.Adam(p, lr=lr, betas=(0.9, 0.9999)))
    lamb = _run_1d(f2, 0.95, lambda p: ALTO(p, lr=lr, betas=(0.99, 0.9, 0.99), alpha=0.0))
    alto = _run_1d(f2, 0.95, lambda p: ALTO(p, lr=lr, betas=(0.99, 0.9, 0.99), alpha=-90.0))
    assert abs(adam - 0.6) < 0.01
    assert abs(lamb - 0.6) < 0.01
    assert abs(alto) < 0.01
    assert f2(torch.tensor(alto)) < 1e-3


def test_f1_alto_travels_past_the_first_minimum_where_adam_stops() -> None:
    """Paper settings: Adam β = 0.95, ALTO β1 = 0.99, β2 = 0.95, α = −80. With the trust ratio a
    1-D step is lr·|x| and ALTO runs off along the decaying tail, so these runs switch it off."""
    lr = 0.03
    adam = _run_1d(f1, 2.3, lambda p: torch.optim.Adam(p, lr=lr, betas=(0.95, 0.999)))
    same_kernel_no_e = _run_1d(
        f1,
        2.3,
        lambda p: ALTO(
            p,
            lr=lr,
            betas=(0.99, 0.95, 0.99),
            alpha=0.0,
            weight_decay=0.0,
            trust_ratio=False,
            max_grad_norm=None,
        ),
    )
    alto = _run_1d(
        f1,
        2.3,
        lambda p: ALTO(
            p,
            lr=lr,
            betas=(0.99, 0.95, 0.99),
            alpha=-80.0,
            weight_decay=0.0,
            trust_ratio=False,
            max_grad_norm=None,
        ),
    )
    assert abs(adam - 4.085) < 0.01 and abs(same_kernel_no_e - 4.085) < 0.01
    assert alto > 8.0
    assert f1(torch.tensor(alto)) < f1(torch.tensor(adam)) - 0.15
