"""Parity with the paper's reference implementation (PyPI ``e-optimizer-adaptor``, a test dependency).

Its code is only imported here, never copied. Its ``ALTO`` always clips the global gradient norm to
1.0, uses the trust ratio ‖θ‖/‖r‖ (1 if either is 0) and applies it only to groups with weight decay;
ours matches that with ``eps2 = eps3 = 0``, ``max_grad_norm=1.0`` and ``trust_ratio=False`` on the
no-decay group (what :func:`valleys.optim.param_groups` builds).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from valleys.optim import ALTO, Explore, create_optimizer, param_groups

reference_alto = pytest.importorskip("ALTO", reason="e-optimizer-adaptor is a test dependency")
reference_e = pytest.importorskip("E")

STEPS = 20
TOLERANCE = 1e-9
"""Relative, in float64. The one-buffer E and the reference's two buffers round differently (~1e-16);
Adam's division by √v amplifies that on near-zero gradient entries to the measured 1e-10 … 4e-10
(SGD and ALTO: below 2e-12). A real difference in the algorithm shows up at 1e-3 or more."""


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3)).double()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(32, 6, generator=gen, dtype=torch.float64),
            torch.randn(32, 3, generator=gen, dtype=torch.float64),
        )
        for _ in range(STEPS)
    ]


def _train(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    for x, y in _batches():
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@torch.no_grad()
def _max_relative_error(a: nn.Module, b: nn.Module) -> float:
    return max(
        float((p - q).abs().max() / q.abs().max())
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    ("base", "kwargs"),
    [
        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
        (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.01}),
        (torch.optim.Adam, {"lr": 0.01, "foreach": True}),
    ],
    ids=["sgd", "adamw", "adam_foreach"],
)
@pytest.mark.parametrize(("alpha", "beta"), [(-5.0, 0.99), (0.5, 0.01)], ids=["large", "small"])
def test_explore_equals_reference_e(base, kwargs, alpha: float, beta: float) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = _model(), _model()
    _train(ours, Explore(base(ours.parameters(), **kwargs), alpha=alpha, beta=beta))
    _train(theirs, reference_e.E(base(theirs.parameters(), **kwargs), alpha=alpha, beta=beta))
    assert _max_relative_error(ours, theirs) < TOLERANCE


def test_alto_equals_reference_alto_in_its_configuration() -> None:
    ours, theirs = _model(), _model()
    betas = (0.99, 0.9, 0.99)
    our_opt = ALTO(
        param_groups(ours, 1e-4),
        lr=0.01,
        betas=betas,
        alpha=-5.0,
        eps=1e-6,
        eps2=0.0,
        eps3=0.0,
        max_grad_norm=1.0,
    )
    their_opt = reference_alto.create_ALTO_optimizer(
        theirs, lr=0.01, betas=betas, alpha=-5.0, eps=1e-6
    )
    _train(ours, our_opt)
    _train(theirs, their_opt)
    assert _max_relative_error(ours, theirs) < TOLERANCE


def test_alto_paper_trust_ratio_differs_from_reference_only_slightly() -> None:
    """The paper's φ(x) = x + ε3 and ε2 = 1e-6 move the update by O(ε2) relative to the reference."""
    ours, theirs = _model(), _model()
    _train(ours, ALTO(param_groups(ours, 1e-4), lr=0.01))
    _train(theirs, reference_alto.create_ALTO_optimizer(theirs, lr=0.01))
    assert TOLERANCE < _max_relative_error(ours, theirs) < 1e-4


def _mlp() -> nn.Module:
    """:func:`_model` without the BatchNorm, for one group holding every tensor: there, the
    gradient of a bias before a BatchNorm is rounding noise, and the trust ratio of about 1/λ
    amplifies its rounding differences (one-buffer vs two-buffer E) beyond any tolerance."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _zeroed(model: nn.Module, which: str) -> nn.Module:
    """``model`` with its last layer's ``weight`` or ``bias`` at zero."""
    with torch.no_grad():
        getattr(model[-1], which).zero_()
    return model


def _their_alto(model: nn.Module, setup: str) -> torch.optim.Optimizer:
    """The reference ALTO as its factory builds it, or on plain parameters (``all_decayed``: one
    group with weight decay 1e-4; ``no_decay``: weight decay 0, so no trust ratio anywhere)."""
    if setup == "factory":
        return reference_alto.create_ALTO_optimizer(model, lr=0.01)
    if setup == "all_decayed":
        return reference_alto.create_ALTO_optimizer(model, lr=0.01, exclude_layers=[])
    return reference_alto.ALTO(
        model.parameters(), lr=0.01, betas=(0.99, 0.9, 0.99), alp=-5, eps=1e-6, weight_decay=0
    )


@pytest.mark.parametrize("path", ["loop", "foreach", "fused"])
@pytest.mark.parametrize(
    ("setup", "zero"),
    [("factory", "weight"), ("all_decayed", "bias"), ("no_decay", "bias")],
    ids=["factory_zero_weight", "all_decayed_zero_biases", "no_decay"],
)
def test_alto_reference_preset_equals_reference_alto(setup: str, zero: str, path: str) -> None:
    """``create_optimizer("alto_reference", ...)`` is the reference's ALTO, including a zero
    tensor in a decayed group (its first trust ratio is 1) and plain parameters without decay."""
    build = _model if setup == "factory" else _mlp
    ours, theirs = _zeroed(build(), zero), _zeroed(build(), zero)
    params = ours if setup == "factory" else list(ours.parameters())
    our_opt = create_optimizer(
        "alto_reference",
        params,
        lr=0.01,
        weight_decay=0.0 if setup == "no_decay" else 1e-4,
        foreach=path == "foreach",
        fused=path == "fused",
    )
    _train(ours, our_opt)
    _train(theirs, _their_alto(theirs, setup))
    assert _max_relative_error(ours, theirs) < TOLERANCE


@pytest.mark.parametrize(("name", "beta3"), [("lamb_paper_bc", 0.999), ("lamb_paper_bc_v99", 0.99)])
def test_bias_corrected_lamb_presets_are_the_reference_alto_without_e(
    name: str, beta3: float
) -> None:
    """The reference ALTO with α = 0 is LAMB's reference code with bias correction: the walk's
    middle steps (``lamb_paper`` itself has no counterpart there: it lacks bias correction)."""
    ours, theirs = _zeroed(_model(), "weight"), _zeroed(_model(), "weight")
    _train(ours, create_optimizer(name, ours, lr=0.01))
    _train(
        theirs,
        reference_alto.create_ALTO_optimizer(theirs, lr=0.01, betas=(0.0, 0.9, beta3), alpha=0.0),
    )
    assert _max_relative_error(ours, theirs) < TOLERANCE
