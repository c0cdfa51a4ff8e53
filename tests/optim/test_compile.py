"""The optimizers under ``torch.compile``: a whole compiled training step, and the fused path.

A counting Dynamo backend (graphs are run as traced, without Inductor) keeps these fast: what is
tested is that Dynamo traces ``step()`` and, after warm-up, never compiles again while the step
counter advances and a tensor learning rate changes. The fused kernels' Inductor code is tested
for equality with the loop in ``test_equations.py``; here for its flags, odd layouts, and LR
changes without recompiles.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from conftest import clone_params, make_params, random_grads, set_grads
from optim_cases import Case, Variant, case_params, variant_params
from torch import Tensor, nn
from torch._dynamo.utils import counters
from torch.optim import Optimizer

from valleys.optim import ALTO, EAdamW, _fused

WARMUP = 2
"""Step 1 creates the state and step 2 runs with it: two traces of ``step()``, then none."""

STEPS = 6


class CountingBackend:
    """A Dynamo backend that counts the graphs it is asked to compile and runs them as traced."""

    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Callable:
        self.compiles += 1
        return gm.forward


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    # Dynamo caches graphs per code object across tests; each test here counts its own compiles.
    torch._dynamo.reset()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))


@pytest.mark.parametrize(("case", "variant"), variant_params(lambda case: case.compiled))
def test_compiled_training_step_matches_eager_without_recompiles(
    case: Case, variant: Variant
) -> None:
    model = _model()
    twin = copy.deepcopy(model)
    opt, twin_opt = (
        case.make_default(net.parameters(), lr=torch.tensor(0.01), **variant.overrides)
        for net in (model, twin)
    )
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 6, generator=gen), torch.randn(16, 1, generator=gen))] * STEPS

    def train_step(net: nn.Module, optimizer: Optimizer, x: Tensor, y: Tensor) -> Tensor:
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    backend = CountingBackend()
    compiled_step = torch.compile(train_step, backend=backend)
    compiles_after_warmup = 0
    for step, (x, y) in enumerate(batches):
        # A scheduler's job, done by hand: LR schedulers wrap step() in a function Dynamo skips.
        for o in (opt, twin_opt):
            for group in o.param_groups:
                group["lr"].fill_(0.01 / (1 + step))
        compiled_step(model, opt, x, y)
        train_step(twin, twin_opt, x, y)
        if step + 1 == WARMUP:
            compiles_after_warmup = backend.compiles
    assert compiles_after_warmup >= 2, "Dynamo traced the forward but not step()"
    assert backend.compiles == compiles_after_warmup, "recompiled after warm-up"
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", case_params(lambda case: case.fuses))
def test_fused_and_foreach_together_fail_at_construction(case: Case) -> None:
    with pytest.raises(ValueError, match="fused=True and foreach=True"):
        case.make([nn.Parameter(torch.zeros(2))], fused=True, foreach=True)


def test_fused_is_a_saved_group_key() -> None:
    opt = ALTO([nn.Parameter(torch.zeros(2))], fused=True)
    assert opt.state_dict()["param_groups"][0]["fused"] is True
    assert ALTO([nn.Parameter(torch.zeros(2))]).param_groups[0]["fused"] is None


def test_fused_handles_any_layout_like_the_loop() -> None:
    """Transposed (non-contiguous), one-element and complex parameters, float64."""
    gen = torch.Generator().manual_seed(0)
    shapes_and_dtypes = [((4, 6), torch.float64), ((1,), torch.float64), ((3, 2), torch.complex128)]
    params = [torch.randn(s, generator=gen, dtype=d) for s, d in shapes_and_dtypes]
    params[0] = params[0].t()
    loop_params = [p.clone().requires_grad_() for p in params]
    fused_params = [p.clone().requires_grad_() for p in params]
    assert not fused_params[0].is_contiguous()
    loop, fused = ALTO(loop_params, lr=0.01), ALTO(fused_params, lr=0.01, fused=True)
    for _ in range(4):
        for p, q in zip(loop_params, fused_params, strict=True):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.grad, q.grad = g.clone(), g.clone()
        loop.step()
        fused.step()
    for p, q in zip(loop_params, fused_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_fused_does_not_recompile_when_a_scheduler_changes_a_float_lr() -> None:
    param = nn.Parameter(torch.randn(8, 3))
    opt = ALTO([param], lr=0.1, fused=True)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    graphs = []
    for _ in range(4):
        param.grad = torch.randn_like(param)
        opt.step()
        scheduler.step()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0
    assert graphs == [graphs[0]] * 4


@pytest.mark.parametrize("bias_correction", [True, False])
def test_fused_large_tensor_kernel_equals_the_loop(
    monkeypatch: pytest.MonkeyPatch, bias_correction: bool
) -> None:
    """The two-phase path of tensors too large for a temporary, forced onto small float64 tensors
    cut into several chunks (with a shorter last one)."""
    monkeypatch.setattr(_fused, "LARGE_BYTES", 0)
    monkeypatch.setattr(_fused, "CHUNK", 4)
    loop_params = make_params()
    fused_params = clone_params(loop_params)
    config = dict(lr=0.02, weight_decay=0.01, bias_correction=bias_correction)
    loop, fused = ALTO(loop_params, **config), ALTO(fused_params, **config, fused=True)
    for step in range(6):
        grads = random_grads(loop_params, step)
        set_grads(loop_params, grads)
        set_grads(fused_params, grads)
        loop.step()
        fused.step()
    for p, q in zip(loop_params, fused_params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_fused_parameters_of_every_rank_share_one_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Their flat aliases are plain tensors, not views whose base's rank Dynamo guards on."""
    monkeypatch.setattr(_fused, "_KERNELS", {})
    before = counters["stats"]["unique_graphs"]
    for shape in [(5,), (2, 3), (2, 3, 2), (2, 2, 2, 2)]:
        param = nn.Parameter(torch.randn(shape))
        opt = EAdamW([param], fused=True)
        param.grad = torch.randn_like(param)
        opt.step()
    assert counters["stats"]["unique_graphs"] - before == 1
