"""Auto-E (``valleys.optim.auto_e``): α adapts so that E's relative perturbation settles near ρ,
inside E's stable region, as a device value read before the step that uses it, saved exactly."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from conftest import clone_params, make_params, random_grads, set_grads
from torch import nn
from torch._dynamo.utils import counters
from torch.optim import Optimizer

from valleys.optim import ALTO, ESGD, EAdamW, Explore, LinearE
from valleys.optim.auto_e import MARGIN


def _alpha(opt: Optimizer) -> torch.Tensor:
    key = "explore_alpha" if isinstance(opt, Explore) else "alpha"
    return opt.param_groups[0][key]


def _perturbations(make: Any, steps: int) -> list[float]:
    """E's measured perturbation at each step of mini-batch training of a small MLP."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    x = torch.randn(2048, 8)
    y = torch.sin(x.sum(1, keepdim=True)) + 0.1 * torch.randn(2048, 1)
    opt = make(model.parameters())
    opt.enable_telemetry()
    seen = []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,))
        opt.zero_grad()
        nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
        seen.append(float(opt.e_telemetry()["e_perturbation"]))
    return seen


@pytest.mark.parametrize(
    ("make", "target"),
    [
        # Small batch, the paper's exploit side: from α = 0.5 (perturbation ≈ 0.5 at first).
        (
            lambda p, r: ESGD(
                p, lr=0.01, momentum=0.9, alpha=0.5, beta=0.01, target_perturbation=r
            ),
            0.05,
        ),
        # From α = -1 (perturbation 0.01 at first): α has to grow tenfold.
        (lambda p, r: ALTO(p, lr=0.01, alpha=-1.0, target_perturbation=r), 0.1),
        (
            lambda p, r: Explore(
                torch.optim.AdamW(p, lr=1e-3), alpha="auto", target_perturbation=r
            ),
            0.02,
        ),
    ],
    ids=["esgd_from_0.5", "alto_from_-1", "explore_adamw_auto"],
)
def test_the_perturbation_settles_within_20_percent_of_the_target(make: Any, target: float) -> None:
    """Means over 25 steps: one step's perturbation is noisy by nature (with β1 = 0.01 it is that of
    the change of the gradient between two mini-batches). Measured: settled (every later mean
    within ±20 %) by steps 50, 43 and 25, last 100 steps within 3 % of ρ."""
    seen = _perturbations(lambda p: make(p, target), 200)
    window = 25
    means = [sum(seen[i : i + window]) / window for i in range(len(seen) - window + 1)]
    inside = [abs(m / target - 1) <= 0.2 for m in means]
    settled = next(i for i in range(len(inside)) if all(inside[i:])) + window
    assert settled <= 100
    assert abs(sum(seen[-100:]) / 100 / target - 1) <= 0.2


def test_alpha_stays_inside_the_stable_region_whatever_the_target() -> None:
    params = make_params()
    opt = ALTO(params, betas=(0.9, 0.9, 0.99), alpha="auto", target_perturbation=10.0)
    for step in range(60):
        set_grads(params, random_grads(params, step))
        opt.step()
        assert abs(float(_alpha(opt))) * (1 - 0.9) <= 1 - MARGIN + 1e-12
    assert float(_alpha(opt)) == pytest.approx(-(1 - MARGIN) / (1 - 0.9))


def test_a_beta1_schedule_clamps_an_adapting_alpha_at_once() -> None:
    params = make_params()
    opt = ALTO(params, alpha="auto", target_perturbation=10.0)  # β1 = 0.99: |α| up to 95
    for step in range(60):
        set_grads(params, random_grads(params, step))
        opt.step()
    assert float(_alpha(opt)) == pytest.approx(-95.0)
    LinearE(opt, "beta1", end=0.9, total_steps=1).step()
    assert float(_alpha(opt)) == pytest.approx(-9.5)


@pytest.mark.parametrize("foreach", [False, True])
def test_the_alpha_in_the_group_before_a_step_is_the_one_the_step_uses(foreach: bool) -> None:
    """ESGD without momentum at lr 1 moves θ by exactly ĝ = g + α(1 − β)(g − e)."""
    params = make_params()
    opt = ESGD(params, lr=1.0, alpha=0.5, beta=0.3, target_perturbation=0.05, foreach=foreach)
    for step in range(6):
        grads = random_grads(params, step)
        set_grads(params, grads)
        alpha = _alpha(opt).clone()
        before = [p.detach().clone() for p in params]
        emas = [opt.state[p]["grad_ema"].clone() if opt.state[p] else 0 * p for p in params]
        opt.step()
        assert not torch.equal(alpha, _alpha(opt)), "α did not adapt"
        for p, b, g, e in zip(params, before, grads, emas, strict=True):
            torch.testing.assert_close(b - p.detach(), g + alpha * 0.7 * (g - e))


def test_state_dict_round_trips_exactly() -> None:
    params = make_params()
    opt = ALTO(params, lr=0.01, alpha="auto", target_perturbation=0.1)
    for step in range(10):
        set_grads(params, random_grads(params, step))
        opt.step()
    saved = opt.state_dict()
    alpha_at_save = _alpha(opt).clone()
    assert saved["param_groups"][0]["alpha"] is not _alpha(opt)
    saved = copy.deepcopy(saved)

    twin_params = clone_params(params)
    twin = ALTO(twin_params, lr=0.01, alpha="auto", target_perturbation=0.1)
    twin.load_state_dict(saved)
    assert torch.equal(_alpha(twin), alpha_at_save)
    assert _alpha(twin).device == twin_params[0].device
    for step in range(10, 15):
        for ps in (params, twin_params):
            set_grads(ps, random_grads(ps, step))
        opt.step()
        twin.step()
    assert torch.equal(_alpha(twin), _alpha(opt))
    assert torch.equal(saved["param_groups"][0]["alpha"], alpha_at_save)
    for p, q in zip(params, twin_params, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda p, **k: ALTO(p, lr=0.01, alpha="auto", target_perturbation=0.1, **k),
        lambda p, **k: EAdamW(p, lr=0.01, alpha="auto", target_perturbation=0.1, **k),
        lambda p, **k: ESGD(
            p, lr=0.01, momentum=0.9, alpha=0.5, beta=0.01, target_perturbation=0.1, **k
        ),
        lambda p, **k: Explore(
            torch.optim.Adam(p, lr=0.01), alpha="auto", target_perturbation=0.1, **k
        ),
    ],
    ids=["alto", "eadamw", "esgd", "explore_adam"],
)
@pytest.mark.parametrize("path", [{"foreach": True}, {"fused": True}], ids=["foreach", "fused"])
def test_every_path_equals_the_loop_under_auto_e(make: Any, path: dict[str, bool]) -> None:
    """float64; the sums α adapts from are reduced in another order on each path."""
    loop_params, other_params = make_params(), make_params()
    loop, other = make(loop_params, foreach=False), make(other_params, **path)
    for step in range(8):
        for ps in (loop_params, other_params):
            set_grads(ps, random_grads(ps, step))
        loop.step()
        other.step()
    torch.testing.assert_close(_alpha(other), _alpha(loop), rtol=1e-12, atol=0)
    for p, q in zip(loop_params, other_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_the_fused_kernel_compiles_once_while_alpha_adapts() -> None:
    torch._dynamo.reset()
    param = nn.Parameter(torch.randn(8, 3))
    opt = ALTO([param], fused=True, alpha="auto", target_perturbation=0.05)
    before = counters["stats"]["unique_graphs"]
    for _ in range(20):
        param.grad = torch.randn_like(param)
        opt.step()
    assert counters["stats"]["unique_graphs"] - before == 1


def test_invalid_auto_e_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="Invalid alpha: 'auto'; expected a finite number"):
        ALTO(make_params(), alpha="auto")
    with pytest.raises(ValueError, match="Invalid alpha: 0 with target_perturbation"):
        EAdamW(make_params(), alpha=0.0, target_perturbation=0.1)
    with pytest.raises(ValueError, match="Invalid explore_target_perturbation: -1"):
        Explore(torch.optim.SGD(make_params(), lr=0.1), alpha="auto", target_perturbation=-1)
    with pytest.raises(ValueError, match=r"stable only for \|alpha\| < 1/\(1 - beta\) = 2"):
        ESGD(make_params(), alpha=3.0, beta=0.5, target_perturbation=0.1)


def test_an_adapting_alpha_cannot_be_scheduled_or_overwritten() -> None:
    params = make_params()
    opt = ALTO(params, alpha="auto", target_perturbation=0.1)
    with pytest.raises(ValueError, match="adapts alpha"):
        LinearE(opt, "alpha", end=-1.0, total_steps=1)
    opt.param_groups[0]["alpha"] = -2.0
    set_grads(params, random_grads(params, 0))
    with pytest.raises(ValueError, match="set target_perturbation=None to fix"):
        opt.step()
