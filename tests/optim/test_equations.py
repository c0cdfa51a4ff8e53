"""Each optimizer equals the paper's equations (two-buffer E), step by step, in float64."""

from __future__ import annotations

import pytest
import torch
from conftest import clone_params, make_params, random_grads, set_grads
from optim_cases import CASE_IDS, CASES, Case

STEPS = 25


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_paper_equations(case: Case, foreach: bool) -> None:
    if case.reference is None:
        pytest.skip("no independent reference for this case")
    if foreach and not case.has_foreach:
        pytest.skip("no foreach path (the base optimizer is fused)")
    params = make_params()
    ref_params = [p.detach().clone() for p in params]
    opt = case.make(params, foreach=foreach)
    ref = case.reference()
    for step in range(STEPS):
        grads = random_grads(params, step)
        set_grads(params, grads)
        opt.step()
        ref.step(ref_params, [g.clone() for g in grads])
        for p, r in zip(params, ref_params, strict=True):
            torch.testing.assert_close(p.detach(), r, rtol=1e-10, atol=1e-12, msg=f"step {step}")


@pytest.mark.parametrize("options", ["defaults", "maximize_clip"])
@pytest.mark.parametrize("path", ["foreach", "fused"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fast_path_equals_loop_params_and_state(case: Case, path: str, options: str) -> None:
    if path == "foreach" and not case.has_foreach:
        pytest.skip("no foreach path (the base optimizer is fused)")
    if path == "fused" and not case.fuses:
        pytest.skip("no fused path")
    # Clipped or negated gradients are the step's own copies, which the fast paths compute in
    # place: a separate branch of their code.
    overrides: dict[str, object] = {}
    if options == "maximize_clip":
        overrides = {"maximize": True, **({"max_grad_norm": 0.5} if case.clips else {})}
    loop_params = make_params()
    fast_params = clone_params(loop_params)
    loop = case.make(loop_params, foreach=False, **overrides)
    fast = case.make(fast_params, **{path: True}, **overrides)
    for step in range(12):
        grads = random_grads(loop_params, step)
        set_grads(loop_params, grads)
        set_grads(fast_params, grads)
        loop.step()
        fast.step()
    for p, q in zip(loop_params, fast_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    loop_state, fast_state = loop.state_dict()["state"], fast.state_dict()["state"]
    assert loop_state.keys() == fast_state.keys()
    for key, entries in loop_state.items():
        assert entries.keys() == fast_state[key].keys()
        for name, value in entries.items():
            if torch.is_tensor(value):
                torch.testing.assert_close(value, fast_state[key][name], rtol=1e-12, atol=1e-14)
            else:
                assert value == fast_state[key][name]
