"""bf16 parameters with fp32 optimizer state (``state_dtype=torch.float32``)."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from conftest import make_params, random_grads, set_grads
from optim_cases import Case, case_params

from valleys.optim import ALTO

CASES = case_params(lambda case: case.state_dtype is not None)
PATHS = [{"foreach": False}, {"foreach": True}, {"fused": True}]


def _bf16(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().to(torch.bfloat16).requires_grad_() for p in params]


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> None:
    for step in steps:
        set_grads(params, [g.to(params[0].dtype) for g in random_grads(params, step)])
        opt.step()


def _make(case: Case, params: list[torch.Tensor], **overrides: Any) -> torch.optim.Optimizer:
    assert case.state_dtype is not None
    return case.make_default(params, **case.state_dtype, **overrides)


@pytest.mark.parametrize("path", PATHS, ids=["loop", "foreach", "fused"])
@pytest.mark.parametrize("case", CASES)
def test_fp32_state_of_bf16_params_equals_the_fp32_runs_state(case: Case, path: dict) -> None:  # type: ignore[type-arg]
    """The moments and E's buffer depend on the gradients alone. Fed gradients that bf16 holds
    exactly, fp32 state for bf16 parameters matches an fp32 run's state, while bf16 state drifts
    (e.g. β3 = 0.999 rounds to 1 in bf16)."""
    reference = make_params(torch.float32)
    plain, mixed = _bf16(reference), _bf16(reference)
    ref_opt = _make(case, reference, **path)
    plain_opt = _make(case, plain, **path)
    mixed_opt = _make(case, mixed, state_dtype=torch.float32, **path)
    for step in range(30):
        grads = [g.to(torch.bfloat16) for g in random_grads(reference, step)]
        set_grads(reference, [g.float() for g in grads])
        set_grads(plain, grads)
        set_grads(mixed, grads)
        for opt in (ref_opt, plain_opt, mixed_opt):
            opt.step()
    mixed_error = plain_error = 0.0
    for r, p, q in zip(reference, plain, mixed, strict=True):
        assert q.dtype == torch.bfloat16 and q.grad.dtype == torch.bfloat16
        for key, value in ref_opt.state[r].items():
            if not torch.is_tensor(value) or value.dim() == 0:
                continue
            assert mixed_opt.state[q][key].dtype == torch.float32
            mixed_error = max(mixed_error, float((mixed_opt.state[q][key] - value).abs().max()))
            plain_error = max(
                plain_error, float((plain_opt.state[p][key].float() - value).abs().max())
            )
    assert mixed_error < 1e-5
    assert plain_error > 100 * mixed_error


@pytest.mark.parametrize("case", CASES)
def test_fp32_state_survives_a_checkpoint_and_resumes_bit_for_bit(case: Case) -> None:
    straight = _bf16(make_params(torch.float32))
    straight_opt = _make(case, straight, state_dtype=torch.float32)
    _run(straight_opt, straight, range(8))

    params = _bf16(make_params(torch.float32))
    opt = _make(case, params, state_dtype=torch.float32)
    _run(opt, params, range(4))
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [p.clone().requires_grad_() for p in saved["params"]]
    resumed = _make(case, resumed_params, state_dtype=torch.float32)
    resumed.load_state_dict(copy.deepcopy(saved["opt"]))
    for p in resumed_params:
        for key, value in resumed.state[p].items():
            if torch.is_tensor(value) and value.dim() > 0:
                assert value.dtype == torch.float32, key
    _run(resumed, resumed_params, range(4, 8))
    assert all(torch.equal(p, q) for p, q in zip(straight, resumed_params, strict=True))


def test_bad_state_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Invalid state_dtype: torch\.int32; expected None"):
        ALTO(make_params(), state_dtype=torch.int32)
