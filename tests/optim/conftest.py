from __future__ import annotations

import pytest
import torch

SHAPES = [(5, 3), (4,), (2, 3, 2)]


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in SHAPES]


def random_grads(params: list[torch.Tensor], step: int, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 100_003 + step)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


def set_grads(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()


def clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_() for p in params]


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
