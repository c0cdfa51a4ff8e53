"""What only Explore must survive: real training's handling of ``p.grad``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from conftest import clone_params, make_params, random_grads, set_grads
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from valleys.optim import Explore


@pytest.mark.parametrize("path", ["loop", "foreach", "fused"])
def test_user_grad_is_the_raw_gradient_after_step(path: str) -> None:
    params = make_params()
    options = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opt = Explore(torch.optim.AdamW(params, lr=0.01), **options[path])
    for step in range(3):
        grads = random_grads(params, step)
        set_grads(params, grads)
        objects = [p.grad for p in params]
        versions = [p.grad._version for p in params]
        opt.step()
        for p, g, obj, version in zip(params, grads, objects, versions, strict=True):
            assert p.grad is obj
            assert p.grad._version == version  # never written, not even restored
            assert torch.equal(p.grad, g)


def test_alpha_zero_is_the_base_optimizer_exactly() -> None:
    params = make_params()
    plain_params = clone_params(params)
    opt = Explore(torch.optim.Adam(params, lr=0.01), alpha=0.0)
    plain = torch.optim.Adam(plain_params, lr=0.01)
    for step in range(5):
        grads = random_grads(params, step)
        set_grads(params, grads)
        set_grads(plain_params, grads)
        opt.step()
        plain.step()
    assert all(torch.equal(p, q) for p, q in zip(params, plain_params, strict=True))
    assert not opt.state


def test_alpha_and_beta_are_per_group_and_schedulable() -> None:
    params = make_params()
    opt = Explore(
        torch.optim.SGD(
            [{"params": params[:2]}, {"params": params[2:], "explore_alpha": 0.0}], lr=0.1
        )
    )
    set_grads(params, random_grads(params, 0))
    opt.step()
    assert params[2] not in opt.state and params[0] in opt.state
    opt.param_groups[1]["explore_alpha"] = -2.0
    set_grads(params, random_grads(params, 1))
    opt.step()
    assert params[2] in opt.state
    assert opt.state_dict()["param_groups"][1]["explore_alpha"] == -2.0


def test_failing_base_step_restores_gradients_and_leaves_state() -> None:
    class Failing(torch.optim.SGD):
        fail = False

        def step(self, closure=None):  # type: ignore[no-untyped-def, override]
            if self.fail:
                raise RuntimeError("boom")
            return super().step(closure)

    params = make_params()
    base = Failing(params, lr=0.1)
    opt = Explore(base)
    set_grads(params, random_grads(params, 0))
    opt.step()
    state = copy.deepcopy(opt.state_dict())
    before = [p.detach().clone() for p in params]
    grads = random_grads(params, 1)
    set_grads(params, grads)
    base.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads, strict=True))
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    for k, entries in state["state"].items():
        assert torch.equal(
            opt.state_dict()["state"][k]["explore_grad_ema"], entries["explore_grad_ema"]
        )


def test_grad_scaler_unscales_first_and_skips_inf_steps() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    twin = copy.deepcopy(model)
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    opt = Explore(torch.optim.AdamW(model.parameters(), lr=0.01))
    twin_opt = Explore(torch.optim.AdamW(twin.parameters(), lr=0.01))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    for step in range(4):
        opt.zero_grad()
        scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
        if step == 2:
            model.weight.grad[0, 0] = float("inf")
            params_before = [p.detach().clone() for p in model.parameters()]
            state_before = copy.deepcopy(opt.state_dict())
        scaler.step(opt)
        scaler.update()
        if step == 2:
            assert all(
                torch.equal(p, b) for p, b in zip(model.parameters(), params_before, strict=True)
            )
            after = opt.state_dict()["state"]
            for k, entries in state_before["state"].items():
                for name, value in entries.items():
                    assert torch.equal(after[k][name], value), name
            continue
        twin_opt.zero_grad()
        nn.functional.mse_loss(twin(x), y).backward()
        twin_opt.step()
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_ddp_gradient_as_bucket_view_keeps_working(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        plain = copy.deepcopy(model)
        ddp = DistributedDataParallel(model, gradient_as_bucket_view=True)
        opt = Explore(torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9))
        plain_opt = Explore(torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9))
        for _ in range(4):
            x, y = torch.randn(8, 4), torch.randn(8, 3)
            opt.zero_grad(set_to_none=False)
            nn.functional.mse_loss(ddp(x), y).backward()
            raw = [p.grad.clone() for p in model.parameters()]
            # DDP rebuilds its buckets after the first iteration, so compare within a step.
            pointers = [p.grad.data_ptr() for p in model.parameters()]
            opt.step()
            assert [p.grad.data_ptr() for p in model.parameters()] == pointers
            assert all(torch.equal(p.grad, r) for p, r in zip(model.parameters(), raw, strict=True))
            plain_opt.zero_grad()
            nn.functional.mse_loss(plain(x), y).backward()
            plain_opt.step()
        for p, q in zip(model.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    finally:
        dist.destroy_process_group()


def test_construction_errors() -> None:
    params = make_params()
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer instance"):
        Explore(params)  # type: ignore[arg-type]
    inner = Explore(torch.optim.SGD(params, lr=0.1))
    with pytest.raises(TypeError, match="another Explore"):
        Explore(inner)
    with pytest.raises(ValueError, match=r"alpha.*1/\(1 - beta\)"):
        Explore(torch.optim.SGD(make_params(), lr=0.1), alpha=-200.0, beta=0.99)
    with pytest.raises(ValueError, match="beta"):
        Explore(torch.optim.SGD(make_params(), lr=0.1), beta=1.0)
