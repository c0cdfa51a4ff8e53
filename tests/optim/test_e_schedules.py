"""Schedules of E's α and β1 (``valleys.optim.schedules``): values, every optimizer's group keys,
the stable region, ``state_dict``, equality of the paths, and no recompiles of the fused kernels."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from conftest import clone_params, make_params, random_grads, set_grads
from optim_cases import Case, case_params
from torch import nn
from torch._dynamo.utils import counters
from torch.optim import Optimizer

from valleys.optim import (
    ALTO,
    ESGD,
    ConstantE,
    CosineE,
    EAdamW,
    Explore,
    Lamb,
    LambdaE,
    LinearE,
)
from valleys.optim._e_group import e_keys


def _values(opt: Optimizer) -> list[tuple[float, float]]:
    """Each group's (α, β1), read through the groups' own keys."""
    out = []
    for group in opt.param_groups:
        keys = e_keys(group)
        assert keys is not None
        out.append((group[keys.alpha], keys.beta(group)))
    return out


def _run(opt: Optimizer, params: list[torch.Tensor], steps: int, *schedulers: Any) -> None:
    for step in range(steps):
        set_grads(params, random_grads(params, step))
        opt.step()
        for scheduler in schedulers:
            scheduler.step()


@pytest.mark.parametrize("case", case_params(lambda case: case.explores))
def test_schedules_reach_every_optimizers_alpha_and_beta1(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    (alpha, beta), *_ = _values(opt)
    alphas = LinearE(opt, "alpha", end=alpha / 2, total_steps=4)
    # β1 towards 1 and α towards 0: every pair on the way is inside E's stable region.
    betas = CosineE(opt, "beta1", end=(1 + beta) / 2, total_steps=4)
    _run(opt, params, 6, alphas, betas)
    assert _values(opt)[0] == (alpha / 2, (1 + beta) / 2)
    assert alphas.get_last_value()[0] == alpha / 2
    assert betas.get_last_value()[0] == (1 + beta) / 2


def _trace(scheduler: Any, steps: int) -> list[float]:
    """The first group's value at construction and after each of ``steps`` steps."""
    seen = [scheduler.get_last_value()[0]]
    for _ in range(steps):
        scheduler.step()
        seen.append(scheduler.get_last_value()[0])
    return seen


def test_values_follow_their_formulas() -> None:
    opt = ALTO(make_params(), alpha=-4.0)
    assert _trace(LinearE(opt, "alpha", start=0.0, total_steps=4), 5) == [0, -1, -2, -3, -4, -4]
    cosine = _trace(CosineE(opt, "alpha", start=-4.0, end=-2.0, total_steps=2), 3)
    assert cosine == [-4.0, pytest.approx(-3.0), -2.0, -2.0]
    # ConstantE's base is the α the cosine left.
    assert _trace(ConstantE(opt, "alpha", 0.0, total_steps=2), 3) == [0.0, 0.0, -2.0, -2.0]
    assert _trace(LambdaE(opt, "alpha", lambda k: 1 / (1 + k)), 1) == [-2.0, -1.0]
    assert opt.param_groups[0]["alpha"] == -1.0


def test_groups_keep_their_own_base_values() -> None:
    a, b = make_params()[:2]
    opt = EAdamW([{"params": [a], "alpha": -2.0}, {"params": [b], "alpha": 0.5}])
    scheduler = LinearE(opt, "alpha", start=0.0, total_steps=2)
    scheduler.step()
    assert scheduler.get_last_value() == [-1.0, 0.25]


def test_an_unstable_pair_is_refused_before_a_step_uses_it() -> None:
    params = make_params()
    opt = ALTO(params, betas=(0.9, 0.9, 0.99), alpha=-5.0)
    LinearE(opt, "alpha", end=-20.0, total_steps=1).step()
    set_grads(params, random_grads(params, 0))
    with pytest.raises(ValueError, match=r"stable only for \|alpha\| < 1/\(1 - beta1\) = 10"):
        opt.step()


def test_alpha_and_beta1_may_move_together_through_a_transient_pair() -> None:
    """α to -50 and β1 to 0.99 (bound 100) by two schedulers: after the first one's step the pair
    (-50, 0.9) is outside the region, after the second's it is inside; the step accepts it."""
    params = make_params()
    opt = ALTO(params, betas=(0.9, 0.9, 0.99), alpha=-5.0)
    alphas = LinearE(opt, "alpha", end=-50.0, total_steps=1)
    betas = LinearE(opt, "beta1", end=0.99, total_steps=1)
    _run(opt, params, 2, alphas, betas)
    assert _values(opt) == [(-50.0, 0.99)]


def test_a_scheduler_refuses_values_outside_e_domain_and_groups_without_e() -> None:
    opt = ESGD(make_params())
    with pytest.raises(ValueError, match=r"Invalid beta: 1.0; expected 0 <= beta < 1"):
        LinearE(opt, "beta1", start=0.5, end=1.0, total_steps=1).step()
    with pytest.raises(ValueError, match="expected a finite number"):
        LambdaE(opt, "alpha", lambda k: math.inf)
    with pytest.raises(ValueError, match="does not apply E"):
        LinearE(Lamb(make_params()), "alpha", total_steps=1)
    with pytest.raises(ValueError, match="Invalid hyperparameter"):
        LinearE(opt, "lr", total_steps=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Invalid total_steps"):
        CosineE(opt, "alpha", total_steps=0)


def test_state_dict_round_trips_in_either_order() -> None:
    params = make_params()
    opt = ALTO(params, lr=0.01)
    alphas = CosineE(opt, "alpha", start=-1.0, total_steps=10)
    betas = LinearE(opt, "beta1", start=0.9, total_steps=10)
    _run(opt, params, 4, alphas, betas)
    # A copy, as a checkpoint file is: torch's state_dict() holds the live state tensors.
    saved = copy.deepcopy((opt.state_dict(), alphas.state_dict(), betas.state_dict()))

    twin_params = clone_params(params)
    twin = ALTO(twin_params, lr=0.01)
    twin_alphas = CosineE(twin, "alpha", start=-1.0, total_steps=10)
    twin_betas = LinearE(twin, "beta1", start=0.9, total_steps=10)
    # Schedulers first, then the optimizer: the values are the saved ones either way.
    twin_alphas.load_state_dict(saved[1])
    twin_betas.load_state_dict(saved[2])
    twin.load_state_dict(saved[0])
    assert _values(twin) == _values(opt)
    assert twin_alphas.last_epoch == alphas.last_epoch == 4
    for p, q in zip(params, twin_params, strict=True):
        q.data.copy_(p.data)
    _run(opt, params, 3, alphas, betas)
    _run(twin, twin_params, 3, twin_alphas, twin_betas)
    for p, q in zip(params, twin_params, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def _scheduled(make: Any, params: list[torch.Tensor], steps: int) -> None:
    opt = make(params)
    schedulers = [
        CosineE(opt, "alpha", start=-1.0, end=-3.0, total_steps=steps),
        LinearE(opt, "beta1", start=0.3, end=0.95, total_steps=steps),
    ]
    lr = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.1, total_iters=steps)
    for step in range(steps):
        for group in opt.param_groups:
            group["weight_decay"] = 0.01 * (1 + step)
        set_grads(params, random_grads(params, step))
        opt.step()
        lr.step()
        for scheduler in schedulers:
            scheduler.step()


@pytest.mark.parametrize(
    "make",
    [
        lambda p, **k: ALTO(p, lr=0.01, **k),
        lambda p, **k: EAdamW(p, lr=0.01, **k),
        lambda p, **k: ESGD(p, lr=0.01, momentum=0.9, **k),
        lambda p, **k: Explore(torch.optim.AdamW(p, lr=0.01), **k),
    ],
    ids=["alto", "eadamw", "esgd", "explore_adamw"],
)
@pytest.mark.parametrize("path", [{"foreach": True}, {"fused": True}], ids=["foreach", "fused"])
def test_every_path_equals_the_loop_under_schedules(make: Any, path: dict[str, bool]) -> None:
    """α, β1 (across 1/2, where the fused kernels' form of e's update switches), lr and weight
    decay all change at every step; float64."""
    loop_params, other_params = make_params(), make_params()
    _scheduled(lambda p: make(p, foreach=False), loop_params, 8)
    _scheduled(lambda p: make(p, **path), other_params, 8)
    for p, q in zip(loop_params, other_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: ALTO([p], lr=0.01, fused=True),
        lambda p: EAdamW([p], lr=torch.tensor(0.01), fused=True),
        lambda p: ESGD([p], lr=0.01, fused=True),
        lambda p: Explore(torch.optim.SGD([p], lr=0.01), fused=True),
    ],
    ids=["alto", "eadamw", "esgd", "explore_sgd"],
)
def test_a_schedule_over_50_steps_compiles_once(make: Any) -> None:
    """α, β1, lr and weight decay change at every step; before they were 0-d tensor inputs of
    the fused kernels, each new value compiled a new kernel (50 graphs here)."""
    torch._dynamo.reset()
    param = nn.Parameter(torch.randn(8, 3))
    opt = make(param)
    schedulers = [
        LinearE(opt, "alpha", start=-1.0, end=-4.0, total_steps=50),
        CosineE(opt, "beta1", start=0.9, end=0.99, total_steps=50),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50),
    ]
    before = counters["stats"]["unique_graphs"]
    for step in range(50):
        opt.param_groups[0]["weight_decay"] = 1e-3 * (1 + step)
        param.grad = torch.randn_like(param)
        opt.step()
        for scheduler in schedulers:
            scheduler.step()
    assert counters["stats"]["unique_graphs"] - before == 1
