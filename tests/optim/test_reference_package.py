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

from valleys.optim import ALTO, Explore, param_groups

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
