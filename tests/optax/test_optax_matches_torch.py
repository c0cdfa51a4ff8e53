"""Every valleys.optax chain takes the torch optimizer's steps on the same gradients.

Relative error: the largest elementwise difference of the parameters' displacement from their
start, over the largest displacement of torch's, per leaf, at every step. float64 (x64 on, in a
context) below 1e-9, float32 below 1e-5.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from optax_cases import CASES, SHAPES, Case

STEPS = 8


def gradients(step: int) -> dict[str, np.ndarray]:
    """Random gradients whose global norm is sometimes above the clip (1.0) and sometimes below."""
    rng = np.random.default_rng(1000 + step)
    scale = (0.05, 2.0, 0.3, 1.5)[step % 4]
    return {k: scale * rng.standard_normal(s) for k, s in SHAPES.items()}


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def jax_trajectory(case: Case, dtype: str) -> list[dict[str, np.ndarray]]:
    tx = case.jax(case.learning_rate)
    params = jax.tree.map(lambda x: jax.numpy.asarray(x, dtype), initial_params())
    state = tx.init(params)
    step = jax.jit(tx.update)
    out = []
    for k in range(STEPS):
        grads = jax.tree.map(lambda x: jax.numpy.asarray(x, dtype), gradients(k))
        updates, state = step(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        out.append({n: np.asarray(p, np.float64) for n, p in params.items()})
    return out


def torch_trajectory(case: Case, dtype: torch.dtype) -> list[dict[str, np.ndarray]]:
    names = sorted(SHAPES)
    params = [torch.tensor(initial_params()[n], dtype=dtype, requires_grad=True) for n in names]
    opt = case.torch(params)
    out = []
    for k in range(STEPS):
        if callable(case.learning_rate):
            lr = float(case.learning_rate(k))
            for group in opt.param_groups:
                group["lr"] = lr
        for p, n in zip(params, names, strict=True):
            p.grad = torch.tensor(gradients(k)[n], dtype=dtype)
        opt.step()
        out.append(
            {n: p.detach().double().numpy().copy() for n, p in zip(names, params, strict=True)}
        )
    return out


def max_relative_error(case: Case, x64: bool) -> float:
    with jax.enable_x64(x64):
        ours = jax_trajectory(case, "float64" if x64 else "float32")
        theirs = torch_trajectory(case, torch.float64 if x64 else torch.float32)
    start = initial_params()
    worst = 0.0
    for a, b in zip(ours, theirs, strict=True):
        for n in SHAPES:
            moved = b[n] - start[n]
            worst = max(worst, np.abs((a[n] - start[n]) - moved).max() / np.abs(moved).max())
    return worst


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize(("x64", "bound"), [(True, 1e-9), (False, 1e-5)], ids=["f64", "f32"])
def test_matches_torch_step_by_step(case: Case, x64: bool, bound: float) -> None:
    error = max_relative_error(case, x64)
    assert error < bound, f"{case.name}: max relative error {error:.3g}"
