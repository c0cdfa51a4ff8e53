"""The torch.optim contract, tested once and run for every case of the table."""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
from conftest import clone_params, make_params, random_grads, set_grads
from optim_cases import CASE_IDS, CASES, Case
from torch import Tensor
from torch._dynamo.utils import counters
from torch.optim import Optimizer
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from valleys.optim import Explore, _fused

pytestmark = pytest.mark.parametrize("case", CASES, ids=CASE_IDS)


def _problem(dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[list[Tensor], object]:
    """A least-squares problem: parameters (W, b) and a loss closure factory."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=gen, dtype=dtype)
    y = x @ torch.randn(5, 3, generator=gen, dtype=dtype) + 0.5
    w = torch.randn(3, 5, generator=gen, dtype=dtype).requires_grad_()
    b = torch.randn(3, generator=gen, dtype=dtype).requires_grad_()

    def loss() -> Tensor:
        return ((x @ w.T + b - y) ** 2).mean()

    return [w, b], loss


def _train(opt: Optimizer, loss_fn, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _run(opt: Optimizer, params: list[Tensor], steps: range) -> None:
    for step in steps:
        set_grads(params, random_grads(params, step))
        opt.step()


def _state_tensors(opt: Optimizer) -> dict[int, dict[str, Tensor]]:
    return {
        k: {n: v for n, v in entries.items() if torch.is_tensor(v)}
        for k, entries in opt.state_dict()["state"].items()
    }


def _assert_same_state(a: Optimizer, b: Optimizer) -> None:
    sa, sb = _state_tensors(a), _state_tensors(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].keys() == sb[k].keys()
        for name in sa[k]:
            assert torch.equal(sa[k][name], sb[k][name]), (k, name)


def test_loss_goes_down(case: Case) -> None:
    params, loss = _problem()
    losses = _train(case.make(params, lr=case.lr), loss, 150)
    assert losses[-1] < 0.3 * losses[0]


def test_maximize_goes_up(case: Case) -> None:
    params, loss = _problem()
    losses = _train(case.make(params, lr=case.lr, maximize=True), loss, 30)
    assert losses[-1] > losses[0]


def test_state_holds_exactly_the_documented_buffers(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    _run(opt, params, range(3))
    for p in params:
        full_size = {
            k for k, v in opt.state[p].items() if torch.is_tensor(v) and v.shape == p.shape
        }
        assert full_size == case.state_keys
    if isinstance(opt, Explore):
        assert "explore_grad_ema" in opt.state_dict()["state"][0]


def test_state_dict_round_trip_then_identical_continuation(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    _run(opt, params, range(5))
    saved = copy.deepcopy(opt.state_dict())

    other_params = clone_params(params)
    other = case.make(other_params)
    other.load_state_dict(saved)
    _assert_same_state(opt, other)
    _run(opt, params, range(5, 10))
    _run(other, other_params, range(5, 10))
    for p, q in zip(params, other_params, strict=True):
        assert torch.equal(p, q)
    _assert_same_state(opt, other)


def test_resume_from_checkpoint_equals_uninterrupted_run_bit_for_bit(case: Case) -> None:
    straight_params = make_params()
    straight = case.make(straight_params)
    _run(straight, straight_params, range(10))

    params = make_params()
    opt = case.make(params)
    _run(opt, params, range(5))
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed_params = [p.clone().requires_grad_() for p in checkpoint["params"]]
    resumed = case.make(resumed_params)
    resumed.load_state_dict(checkpoint["opt"])
    _run(resumed, resumed_params, range(5, 10))

    for p, q in zip(straight_params, resumed_params, strict=True):
        assert torch.equal(p, q)
    _assert_same_state(straight, resumed)


def test_deepcopy_is_independent_and_identical(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    _run(opt, params, range(3))
    twin = copy.deepcopy(opt)
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    assert all(p is not q for p, q in zip(params, twin_params, strict=True))
    before = [p.detach().clone() for p in params]
    _run(twin, twin_params, range(3, 6))
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    _run(opt, params, range(3, 6))
    assert all(torch.equal(p, q) for p, q in zip(params, twin_params, strict=True))


def test_params_without_grad_are_untouched(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    frozen = params[1]
    before = frozen.detach().clone()
    for step in range(3):
        set_grads(params, random_grads(params, step))
        frozen.grad = None
        opt.step()
    assert torch.equal(frozen, before)
    assert not opt.state.get(frozen)


def test_first_step_with_zero_gradients_and_no_decay_changes_nothing(case: Case) -> None:
    params = make_params()
    before = [p.detach().clone() for p in params]
    opt = case.make(params, weight_decay=0.0)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_per_group_lr_and_weight_decay(case: Case) -> None:
    extra = {"max_grad_norm": None} if case.clips else {}
    params = make_params()
    single_params = clone_params(params[:2])
    opt = case.make(
        [
            {"params": params[:2], "lr": 0.003, "weight_decay": 0.02},
            {"params": params[2:], "lr": 0.0},
        ],
        **extra,
    )
    single = case.make(single_params, lr=0.003, weight_decay=0.02, **extra)
    frozen_before = params[2].detach().clone()
    for step in range(4):
        grads = random_grads(params, step)
        set_grads(params, grads)
        set_grads(single_params, grads[:2])
        opt.step()
        single.step()
    assert torch.equal(params[2], frozen_before)
    for p, q in zip(params[:2], single_params, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_lr_scheduler_before_and_after_reload(case: Case) -> None:
    def schedule(opt: Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    straight_params = make_params()
    straight = case.make(straight_params, lr=0.01)
    straight_sched = schedule(straight)
    for step in range(8):
        _run(straight, straight_params, range(step, step + 1))
        straight_sched.step()

    params = make_params()
    opt = case.make(params, lr=0.01)
    sched = schedule(opt)
    for step in range(4):
        _run(opt, params, range(step, step + 1))
        sched.step()
    opt_state, sched_state = copy.deepcopy(opt.state_dict()), sched.state_dict()

    resumed_params = clone_params(params)
    resumed = case.make(resumed_params, lr=0.01)
    resumed_sched = schedule(resumed)
    resumed.load_state_dict(opt_state)
    resumed_sched.load_state_dict(sched_state)
    lrs = []
    for step in range(4, 8):
        _run(resumed, resumed_params, range(step, step + 1))
        resumed_sched.step()
        lrs.append(resumed.param_groups[0]["lr"])
    assert lrs == [0.01 * 0.5**k for k in (2, 3, 3, 4)]
    if isinstance(resumed, Explore):
        assert resumed.optimizer.param_groups[0]["lr"] == lrs[-1]
    for p, q in zip(straight_params, resumed_params, strict=True):
        assert torch.equal(p, q)


def test_closure_is_evaluated_once_with_grad_before_the_transform(case: Case) -> None:
    params, loss_fn = _problem()
    opt = case.make(params)
    calls = []

    def closure() -> Tensor:
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.no_grad():
        returned = opt.step(closure)
    assert calls == [True]
    assert torch.is_tensor(returned)

    # The same gradient computed outside the optimizer gives the same step.
    plain_params, plain_loss_fn = _problem()
    plain = case.make(plain_params)
    plain_loss_fn().backward()
    plain.step()
    for p, q in zip(params, plain_params, strict=True):
        assert torch.equal(p, q)


def test_complex_params_match_their_real_view(case: Case) -> None:
    if not case.complex_params:
        pytest.skip("no complex parameters (torch's Adafactor and fused AdamW)")
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 3, generator=gen, dtype=torch.complex128).requires_grad_()
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    opt_z, opt_r = case.make([z]), case.make([r])
    for _ in range(6):
        g = torch.randn(4, 3, generator=gen, dtype=torch.complex128)
        z.grad = g.clone()
        r.grad = torch.view_as_real(g).clone()
        opt_z.step()
        opt_r.step()
        torch.testing.assert_close(
            torch.view_as_real(z.detach()), r.detach(), rtol=1e-12, atol=1e-14
        )


def test_step_hooks_run_once_per_step(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    seen: list[str] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))
    _run(opt, params, range(2))
    assert seen == ["pre", "post", "pre", "post"]


def test_bf16_params_train_close_to_fp32(case: Case) -> None:
    if not case.bf16_params:
        pytest.skip("no bf16 CPU kernel in every torch version (torch's fused AdamW)")
    params32 = make_params(torch.float32)
    params16 = [p.detach().to(torch.bfloat16).requires_grad_() for p in params32]
    opt32, opt16 = case.make(params32), case.make(params16)
    for step in range(5):
        grads = random_grads(params32, step)
        set_grads(params32, grads)
        set_grads(params16, [g.to(torch.bfloat16) for g in grads])
        opt32.step()
        opt16.step()
    for p, q in zip(params32, params16, strict=True):
        assert q.dtype == torch.bfloat16
        assert torch.isfinite(q).all()
        torch.testing.assert_close(q.float(), p.detach(), rtol=0.05, atol=0.05)


def test_sparse_gradient_raises_and_changes_nothing(case: Case) -> None:
    params = make_params()
    # The sparse gradient sits in the second group: the first must not have been touched either.
    opt = case.make([{"params": params[:2]}, {"params": params[2:]}])
    _run(opt, params, range(2))
    before = [p.detach().clone() for p in params]
    state_before = copy.deepcopy(opt.state_dict())
    grads = random_grads(params, 2)
    set_grads(params, grads)
    params[2].grad = params[2].grad.to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert all(torch.equal(p.grad.to_dense(), g) for p, g in zip(params, grads, strict=True))
    after = opt.state_dict()["state"]
    for k, entries in state_before["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                assert torch.equal(after[k][name], value), (k, name)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(case: Case, set_to_none: bool) -> None:
    params = make_params()
    opt = case.make(params)
    _run(opt, params, range(1))
    opt.zero_grad(set_to_none=set_to_none)
    for p in params:
        if set_to_none:
            assert p.grad is None
        else:
            assert p.grad is not None and not p.grad.any()


def test_add_param_group_gets_defaults_and_steps(case: Case) -> None:
    params = make_params()
    opt = case.make(params[:2])
    opt.add_param_group({"params": [params[2]]})
    assert len(opt.param_groups) == 2
    assert opt.param_groups[1].keys() == opt.param_groups[0].keys()
    before = params[2].detach().clone()
    _run(opt, params, range(2))
    assert not torch.equal(params[2], before)


def test_state_dict_is_the_same_after_a_load(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    _run(opt, params, range(2))
    saved = opt.state_dict()
    other = case.make(clone_params(params))
    other.load_state_dict(copy.deepcopy(saved))
    assert other.state_dict()["param_groups"] == saved["param_groups"]
    if "adafactor" in case.id:
        return  # torch's Adafactor gains a "differentiable" default in its own __setstate__
    # A group added after a load (or to a copy) gets the same keys as the loaded ones.
    twin = copy.deepcopy(other)
    twin.add_param_group({"params": [torch.zeros(2, dtype=torch.float64, requires_grad=True)]})
    assert twin.param_groups[-1].keys() == twin.param_groups[0].keys()


def test_one_element_lr_tensor_of_any_shape_steps_like_a_float(case: Case) -> None:
    params = make_params()
    tensor_params = clone_params(params)
    opt = case.make(params, lr=case.lr)
    tensor_opt = case.make(tensor_params, lr=torch.tensor([[case.lr]], dtype=torch.float64))
    _run(opt, params, range(3))
    _run(tensor_opt, tensor_params, range(3))
    for p, q in zip(params, tensor_params, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-14)


def test_numeric_step_of_an_older_checkpoint_loads_and_continues(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    _run(opt, params, range(3))
    saved = copy.deepcopy(opt.state_dict())
    for entries in saved["state"].values():
        if torch.is_tensor(entries.get("step")):
            entries["step"] = entries["step"].item()
    other_params = clone_params(params)
    other = case.make(other_params)
    other.load_state_dict(saved)
    _run(opt, params, range(3, 6))
    _run(other, other_params, range(3, 6))
    for p, q in zip(params, other_params, strict=True):
        assert torch.equal(p, q)
    _assert_same_state(opt, other)


def test_fused_kernels_survive_more_input_variants_than_the_recompile_limit(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled kernels are shared process-wide; a stream of new ranks, sizes 0 and 1,
    layouts, clipping on and off and float or tensor learning rates must never raise (here with a
    recompile limit of 1, so that every variant past the first of a kernel meets it)."""
    if not case.fuses:
        pytest.skip("no fused path")
    monkeypatch.setattr(_fused, "_KERNELS", {})
    torch._dynamo.reset()
    counters.clear()
    shapes = [(4, 3), (1, 3), (3,), (1,), (), (2, 2, 2, 2), (0,)]
    clips = [None, 1.0] if case.clips else [None]
    gen = torch.Generator().manual_seed(0)
    with torch._dynamo.config.patch(recompile_limit=1):
        for shape, max_grad_norm, tensor_lr in itertools.product(shapes, clips, [False, True]):
            extra = {"max_grad_norm": max_grad_norm} if case.clips else {}
            lr = torch.tensor(case.lr, dtype=torch.float64) if tensor_lr else case.lr
            fused_param = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
            loop_param = fused_param.detach().clone().requires_grad_()
            fused = case.make([fused_param], lr=lr, fused=True, **extra)
            loop = case.make([loop_param], lr=lr, foreach=False, **extra)
            for _ in range(2):
                grad = torch.randn(shape, generator=gen, dtype=torch.float64)
                fused_param.grad, loop_param.grad = grad.clone(), grad.clone()
                fused.step()
                loop.step()
            torch.testing.assert_close(fused_param, loop_param, rtol=1e-12, atol=1e-14)
    assert not counters["graph_break"], "a fused kernel no longer traces as one graph"


def test_state_dict_keeps_non_parameter_keys_a_hook_adds(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    _run(opt, params, range(2))
    opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("note", 1))
    saved = opt.state_dict()
    assert saved["state"]["note"] == 1
    other_params = clone_params(params)
    other = case.make(other_params)
    other.load_state_dict(copy.deepcopy(saved))
    assert other.state_dict()["state"]["note"] == 1
    _run(opt, params, range(2, 4))
    _run(other, other_params, range(2, 4))
    for p, q in zip(params, other_params, strict=True):
        assert torch.equal(p, q)


def test_global_step_hooks_run_once_per_step(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    seen: list[str] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))
    handles = [
        register_optimizer_step_pre_hook(lambda o, args, kwargs: seen.append("global pre")),
        register_optimizer_step_post_hook(lambda o, args, kwargs: seen.append("global post")),
    ]
    try:
        _run(opt, params, range(2))
    finally:
        for handle in handles:
            handle.remove()
    assert seen == ["global pre", "pre", "post", "global post"] * 2


def test_no_empty_state_entries(case: Case) -> None:
    params = make_params()
    opt = case.make(params)
    _run(opt, params, range(2))
    assert all(opt.state_dict()["state"].values())
