"""The registry's walk from the paper's Lamb to its reference ALTO, and the trust ratio it needs.

The four presets (``valleys.optim.alto.PAPER_PRESETS``) differ one change at a time; each follows
its equations (``optim_cases.PAPER_WALK``) in float64 also with parameter groups of both kinds and
a zero-initialised tensor in the decayed group, where LAMB's trust ratio is 1.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from conftest import make_params, random_grads, set_grads
from optim_cases import PAPER_WALK
from optim_reference import RefALTO
from torch import Tensor, nn

from valleys.optim import ALTO, create_optimizer, optimizer_info
from valleys.optim._ops import _trust_ratio

WALK = list(PAPER_WALK)
STEPS = 25
DECAY = 0.01


def _hyperparameters(name: str) -> dict[str, Any]:
    """What a preset's group runs with, E's (β1, α) as (None, 0) where it has none."""
    group = create_optimizer(name, make_params(), lr=1e-3).param_groups[0]
    betas = tuple(group["betas"])
    explore = (betas[0], group["alpha"]) if "alpha" in group else (None, 0.0)
    keys = ("eps", "weight_decay", "eps2", "eps3", "bias_correction", "trust_ratio")
    return {
        "explore": explore,
        "moments": betas[-2:],
        "max_grad_norm": group["max_grad_norm"],
        **{k: group[k] for k in keys},
    }


def test_the_walk_changes_one_thing_per_step() -> None:
    settings = [_hyperparameters(name) for name in WALK]
    assert settings[0] == {
        "explore": (None, 0.0),
        "moments": (0.9, 0.999),
        "max_grad_norm": 1.0,
        "eps": 1e-6,
        "weight_decay": 1e-4,
        "eps2": 0.0,
        "eps3": 0.0,
        "bias_correction": False,
        "trust_ratio": "decayed",
    }
    changes = [{k: b[k] for k in b if a[k] != b[k]} for a, b in itertools.pairwise(settings)]
    assert changes == [
        {"bias_correction": True},
        {"moments": (0.9, 0.99)},
        {"explore": (0.99, -5.0)},
    ]


def test_registry_entries() -> None:
    for name in WALK:
        info = optimizer_info(name)
        assert info.layerwise and info.clips
        assert "θ ← θ − η" in info.description  # the update is written out
    reference = optimizer_info("alto_reference")
    assert reference.explores and reference.e_style == "betas"
    assert reference.base == "lamb_paper_bc_v99"
    assert all(optimizer_info(n).base == n and not optimizer_info(n).explores for n in WALK[:3])
    small = create_optimizer("alto_reference", make_params(), lr=1e-3, batch_size=128)
    assert small.param_groups[0]["alpha"] == 0.5 and small.param_groups[0]["betas"][0] == 0.01


def _net() -> nn.Module:
    """A float64 MLP whose last weight starts at zero (a zero tensor in the decayed group)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    nn.init.zeros_(net[2].weight)
    return net


def _groups(net: nn.Module, grouping: str) -> Any:
    """``model``: the net itself (``param_groups``: λ = 0 group with ``trust_ratio=False``);
    ``groups``: two plain groups, the λ = 0 one left to the preset's ``trust_ratio="decayed"``."""
    if grouping == "model":
        return net
    weights = [p for p in net.parameters() if p.ndim == 2]
    biases = [p for p in net.parameters() if p.ndim == 1]
    return [{"params": weights, "weight_decay": DECAY}, {"params": biases, "weight_decay": 0.0}]


@pytest.mark.parametrize("path", ["loop", "foreach", "fused"])
@pytest.mark.parametrize("grouping", ["model", "groups"])
@pytest.mark.parametrize("name", WALK)
def test_presets_follow_the_equations_with_parameter_groups(
    name: str, grouping: str, path: str
) -> None:
    net = _net()
    params = list(net.parameters())
    ref_params = [p.detach().clone() for p in params]
    opt = create_optimizer(
        name,
        _groups(net, grouping),
        lr=0.02,
        weight_decay=DECAY,
        foreach=path == "foreach",
        fused=path == "fused",
    )
    decays = tuple(DECAY if p.ndim == 2 else 0.0 for p in params)
    ref = RefALTO(lr=0.02, weight_decay=decays, **PAPER_WALK[name])
    for step in range(STEPS):
        grads = random_grads(params, step)
        set_grads(params, grads)
        opt.step()
        ref.step(ref_params, [g.clone() for g in grads])
        for p, r in zip(params, ref_params, strict=True):
            torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12, msg=f"step {step}")


def test_trust_ratio_without_eps_is_one_where_a_norm_is_zero() -> None:
    param = torch.tensor([0.0, 2.0, 0.0, 3.0], dtype=torch.float64)
    update = torch.tensor([4.0, 0.0, 0.0, 1.5], dtype=torch.float64)
    expected = torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    assert torch.equal(_trust_ratio(param, update, 0.0, 0.0), expected)


@pytest.mark.parametrize(("eps2", "eps3"), [(1e-6, 1e-10), (1e-6, 0.0), (0.0, 1e-10)])
def test_trust_ratio_with_eps_is_the_papers_formula_bit_for_bit(eps2: float, eps3: float) -> None:
    gen = torch.Generator().manual_seed(0)
    param, update = torch.rand(2, 100, generator=gen, dtype=torch.float32) + 0.1
    phi = param + eps3
    assert torch.equal(_trust_ratio(param, update, eps2, eps3), phi / (update + eps2 * phi))


@pytest.mark.parametrize(("decay", "same_as"), [(0.0, False), (0.01, True)])
def test_decayed_mode_is_the_trust_ratio_exactly_where_decay_is_not_zero(
    decay: float, same_as: bool
) -> None:
    results: list[list[Tensor]] = []
    for mode in ("decayed", same_as):
        params = make_params()
        opt = ALTO(params, lr=0.02, weight_decay=decay, trust_ratio=mode, eps2=0.0, eps3=0.0)
        for step in range(5):
            set_grads(params, random_grads(params, step))
            opt.step()
        results.append(params)
    for p, q in zip(*results, strict=True):
        assert torch.equal(p, q)
