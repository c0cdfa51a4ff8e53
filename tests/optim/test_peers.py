"""Today's peers by name (Muon, Adan, MARS, Lion, SOAP, ADOPT, Schedule-Free AdamW) and the Muon hybrid."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_post_hook

from valleys.optim import (
    MuonAdamW,
    create_optimizer,
    hidden_matrix_names,
    muon_param_groups,
    optimizer_info,
    param_groups,
)

PEERS = ("muon", "adan", "mars", "lion", "soap", "adopt", "sf_adamw")
EXPLORED = ("e_muon", "e_lion", "e_soap", "e_adopt")


class Net(nn.Module):
    """Every kind of tensor the Muon split must place: tables, hidden matrices, norm, head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.pos_embed = nn.Parameter(torch.randn(3, 8) * 0.1)
        self.hidden = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos_embed
        return self.head(self.norm(torch.relu(self.hidden(h)))).mean(1)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 10, (16, 3), generator=generator), torch.randint(
        0, 4, (16,), generator=generator
    )


def _train(model: nn.Module, opt: Optimizer, steps: int = 3) -> None:
    x, y = _batch()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


@pytest.mark.parametrize("name", PEERS + EXPLORED)
def test_each_peer_builds_by_name_and_steps(name: str) -> None:
    model = _net()
    opt = create_optimizer(name, model, lr=1e-3, batch_size=4096)
    before = [p.detach().clone() for p in model.parameters()]
    _train(model, opt)
    moved = [not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)]
    assert all(moved), name
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "family", "base", "explores", "modes"),
    [
        ("muon", "adaptive", "muon", False, False),
        ("e_muon", "adaptive", "muon", True, False),
        ("adan", "adaptive", "adan", False, False),
        ("mars", "adaptive", "mars", False, False),
        ("lion", "sign", "lion", False, False),
        ("e_lion", "sign", "lion", True, False),
        ("soap", "adaptive", "soap", False, False),
        ("adopt", "adaptive", "adopt", False, False),
        ("sf_adamw", "adaptive", "sf_adamw", False, True),
    ],
)
def test_peer_metadata(name: str, family: str, base: str, explores: bool, modes: bool) -> None:
    info = optimizer_info(name)
    assert (info.family, info.base, info.explores, info.modes) == (family, base, explores, modes)
    assert info.accepts("weight_decay") and info.default("weight_decay") in (0.01, 0.1)


def test_schedule_free_is_built_in_train_mode() -> None:
    opt = create_optimizer("sf_adamw", _net(), lr=1e-3)
    assert all(group["train_mode"] for group in opt.param_groups)


def test_muon_split_by_name() -> None:
    model = _net()
    assert hidden_matrix_names(model) == ["hidden.weight"]
    groups = muon_param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    placed = {
        (g["use_muon"], g["weight_decay"]): sorted(names[id(p)] for p in g["params"])
        for g in groups
    }
    assert placed == {
        (True, 0.05): ["hidden.weight"],
        (False, 0.05): ["embed.weight", "head.weight", "pos_embed"],
        (False, 0.0): ["head.bias", "hidden.bias", "norm.bias", "norm.weight"],
    }
    opt = create_optimizer("muon", model, lr=1e-3, weight_decay=0.05)
    assert [(g["use_muon"], len(g["params"])) for g in opt.param_groups] == [
        (True, 1),
        (False, 3),
        (False, 4),
    ]


def test_muon_split_keeps_tied_heads_and_convolutions_on_adamw() -> None:
    tied = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10, bias=False))
    tied[2].weight = tied[0].weight
    assert hidden_matrix_names(tied) == ["1.weight"]
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(16, 16), nn.Linear(16, 2))
    assert hidden_matrix_names(conv) == ["2.weight"]


def test_model_without_hidden_matrix_gets_adamw_alone_and_steps_like_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))  # the head only
    reference = copy.deepcopy(model)
    assert hidden_matrix_names(model) == []
    opt = create_optimizer("muon", model, lr=1e-2, weight_decay=0.1)
    assert all(g["use_muon"] is False for g in opt.param_groups)
    adamw = torch.optim.AdamW(param_groups(reference, 0.1), lr=1e-2)
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    for net, optimizer in ((model, opt), (reference, adamw)):
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


def test_hybrid_steps_like_torch_muon_and_adamw_side_by_side() -> None:
    model = _net()
    reference = copy.deepcopy(model)
    opt = MuonAdamW(muon_param_groups(model, 0.1), lr=1e-2)
    groups = muon_param_groups(reference, 0.1)
    muon = torch.optim.Muon(
        [g for g in groups if g["use_muon"]], lr=1e-2, adjust_lr_fn="match_rms_adamw"
    )
    adamw = torch.optim.AdamW([g for g in groups if not g["use_muon"]], lr=1e-2)
    x, y = _batch()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        muon.zero_grad()
        adamw.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        muon.step()
        adamw.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


def test_plain_parameters_send_2d_tensors_to_muon() -> None:
    model = _net()
    opt = create_optimizer("muon", model.parameters(), lr=1e-3)
    shapes = {g["use_muon"]: sorted(tuple(p.shape) for p in g["params"]) for g in opt.param_groups}
    assert shapes[True] == [(3, 8), (4, 8), (8, 8), (10, 8)]
    assert all(len(shape) == 1 for shape in shapes[False])
    with pytest.raises(ValueError, match="Invalid use_muon=True group: Muon steps 2-D"):
        MuonAdamW([{"params": [model.hidden.bias], "use_muon": True}])


def test_hybrid_state_dict_round_trip_resumes_bit_for_bit() -> None:
    model = _net()
    opt = MuonAdamW(muon_param_groups(model, 0.1), lr=1e-2)
    _train(model, opt)
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(opt.state_dict())
    _train(model, opt, steps=2)

    other = _net()
    other.load_state_dict(saved_model)
    reloaded = MuonAdamW(muon_param_groups(other, 0.1), lr=1e-2)
    reloaded.load_state_dict(saved)
    _train(other, reloaded, steps=2)
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q)
    assert set(saved["state"][0]) == {"momentum_buffer"}  # the Muon group's tensor

    flipped = copy.deepcopy(saved)
    flipped["param_groups"][0]["use_muon"] = False
    with pytest.raises(ValueError, match="splits its groups as use_muon"):
        reloaded.load_state_dict(flipped)


def test_hybrid_groups_serve_schedulers_closures_hooks_and_new_groups() -> None:
    model = _net()
    opt = MuonAdamW(muon_param_groups(model, 0.1), lr=1e-2)
    # An lr scheduler reaches both halves: at factor 0 nothing moves (decay scales with lr too).
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 0.0)
    assert scheduler.get_last_lr() == [0.0] * len(opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    calls: list[int] = []
    handle = register_optimizer_step_post_hook(lambda *_: calls.append(1))
    x, y = _batch()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    try:
        loss = opt.step(closure)
    finally:
        handle.remove()
    assert isinstance(loss, torch.Tensor) and calls == [1]
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())

    extra = nn.Parameter(torch.randn(5, 5))
    adamw_only = MuonAdamW([nn.Parameter(torch.randn(5))], lr=1e-2)
    adamw_only.add_param_group({"params": [extra]})
    assert [g["use_muon"] for g in adamw_only.param_groups] == [False, True]
    extra.grad = torch.randn(5, 5)
    start = extra.detach().clone()
    adamw_only.step()
    assert not torch.equal(extra, start) and "momentum_buffer" in adamw_only.state[extra]


def test_missing_package_names_it_and_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry in sys.modules makes ``import`` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "schedulefree", None)
    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)
    for name, package in (("sf_adamw", "schedulefree"), ("lion", "pytorch-optimizer")):
        with pytest.raises(ImportError, match=rf"'{package}'.*pip install \"valleys\[peers\]\""):
            create_optimizer(name, _net(), lr=1e-3)


def test_importing_valleys_optim_imports_no_peer_package() -> None:
    code = (
        "import sys, valleys.optim as o; o.optimizer_info('lion'); "
        "assert not {'pytorch_optimizer', 'schedulefree'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
