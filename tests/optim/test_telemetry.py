"""E's telemetry (``enable_telemetry`` / ``e_telemetry``) on every E case and path: its values
equal an independent float64 computation from the raw and transformed gradients, and turning it
on changes nothing else."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import make_params, random_grads, set_grads
from optim_cases import CASES, Case
from optim_reference import E, clip_factor
from torch import Tensor

STEPS = 3
MAX_NORM = 0.5
"""Below the gradients' norm, so that clipping changes E's input."""


def _paths(case: Case) -> list[dict[str, bool]]:
    paths = [{"foreach": False}]
    if case.has_foreach:
        paths.append({"foreach": True})
    if case.fuses:
        paths.append({"fused": True})
    return paths


E_PATHS = [
    pytest.param(case, path, id=f"{case.id}-{next(iter(path))}")
    for case in CASES
    if case.explores
    for path in _paths(case)
]


def _make(case: Case, params: list[Tensor], path: dict[str, bool]) -> Any:
    # No weight decay: E's input is then the (clipped) raw gradient for every optimizer.
    overrides: dict[str, Any] = {**path, "weight_decay": 0.0}
    if case.clips:
        overrides["max_grad_norm"] = MAX_NORM
    return case.make(params, **overrides)


def _alpha_beta(group: dict[str, Any]) -> tuple[float, float]:
    """E's α and β as each kind of optimizer names them in its groups."""
    if "explore_alpha" in group:
        return group["explore_alpha"], group["explore_beta"]
    if "betas" in group:
        return group["alpha"], group["betas"][0]
    return group["alpha"], group["beta"]


@pytest.mark.parametrize(("case", "path"), E_PATHS)
def test_telemetry_equals_independent_computation(case: Case, path: dict[str, bool]) -> None:
    params = make_params()
    opt = _make(case, params, path)
    opt.enable_telemetry()
    assert opt.e_telemetry() == {}
    (group,) = opt.param_groups
    e = E(*_alpha_beta(group))
    for step in range(STEPS):
        grads = random_grads(params, step)
        set_grads(params, grads)
        opt.step()
        scale = clip_factor(grads, MAX_NORM if case.clips else None)
        g = torch.cat([(scale * grad).flatten() for grad in grads])
        ghat = torch.cat([e(i, scale * grad).flatten() for i, grad in enumerate(grads)])
        values = opt.e_telemetry()
        assert set(values) == {"e_perturbation", "e_cosine"}
        assert all(v.dim() == 0 for v in values.values())
        expected = {
            "e_perturbation": (ghat - g).norm() / g.norm(),
            "e_cosine": torch.dot(ghat, g) / (ghat.norm() * g.norm()),
        }
        for name, value in expected.items():
            torch.testing.assert_close(values[name], value, rtol=1e-10, atol=0, msg=name)


@pytest.mark.parametrize(("case", "path"), E_PATHS)
def test_telemetry_does_not_change_the_step(case: Case, path: dict[str, bool]) -> None:
    runs = []
    for telemetry in (False, True):
        params = make_params()
        opt = _make(case, params, path)
        opt.enable_telemetry(telemetry)
        for step in range(STEPS):
            set_grads(params, random_grads(params, step))
            opt.step()
        runs.append((params, opt.state_dict()["state"]))
    (plain, plain_state), (observed, observed_state) = runs
    for a, b in zip(plain, observed, strict=True):
        assert torch.equal(a, b)
    for key, entries in plain_state.items():
        for name, value in entries.items():
            other = observed_state[key][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


def test_telemetry_off_again_records_nothing() -> None:
    case = next(c for c in CASES if c.explores and c.clips)
    params = make_params()
    opt = _make(case, params, {"foreach": False})
    opt.enable_telemetry()
    set_grads(params, random_grads(params, 0))
    opt.step()
    assert opt.e_telemetry()
    opt.enable_telemetry(False)
    opt.step()
    assert opt.e_telemetry() == {}
