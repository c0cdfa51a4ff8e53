"""Parameter groups and the optimizer registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from valleys.optim import (
    ALTO,
    ESGD,
    EAdamW,
    Explore,
    Lamb,
    available_optimizers,
    create_optimizer,
    optimizer_info,
    param_groups,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3)
        self.bn = nn.BatchNorm1d(4)
        self.ln = nn.LayerNorm(4)
        self.gn = nn.GroupNorm(2, 4)
        self.rms = nn.RMSNorm(4)
        self.head = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.ones(()))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _names(model: nn.Module, group: dict) -> set[str]:  # type: ignore[type-arg]
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_param_groups_split_by_module_type_name_and_shape() -> None:
    model = Net()
    decay, no_decay = param_groups(model, 0.1)
    assert _names(model, decay) == {"embed.weight", "conv.weight", "head.weight"}
    assert _names(model, no_decay) == {
        "conv.bias",
        "bn.weight",
        "bn.bias",
        "ln.weight",
        "ln.bias",
        "gn.weight",
        "gn.bias",
        "rms.weight",
        "head.bias",
        "scale",
    }
    assert decay["weight_decay"] == 0.1 and "trust_ratio" not in decay
    assert no_decay["weight_decay"] == 0.0 and no_decay["trust_ratio"] is False


def test_embeddings_can_join_the_no_decay_group() -> None:
    model = Net()
    decay, no_decay = param_groups(model, 0.1, decay_embeddings=False)
    assert "embed.weight" in _names(model, no_decay)
    assert "embed.weight" not in _names(model, decay)


def test_zero_initialised_bias_moves_with_the_groups_and_is_trapped_without() -> None:
    """The paper's trust ratio on a zero bias gives a step of about lr·ε3: the LAMB trap."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 3), torch.randn(64, 2)
    results = {}
    for label, groups in (("grouped", True), ("literal", False)):
        torch.manual_seed(1)
        model = nn.Linear(3, 2)
        nn.init.zeros_(model.bias)
        params = param_groups(model, 1e-4) if groups else model.parameters()
        opt = ALTO(params, lr=0.01)
        for _ in range(20):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        results[label] = model.bias.detach().abs().max().item()
    assert results["literal"] < 1e-8
    assert results["grouped"] > 1e-2


def test_registry_names_and_metadata() -> None:
    names = available_optimizers()
    for name in (
        "alto",
        "alto_vanilla",
        "lamb",
        "eadam",
        "eadamw",
        "esgd",
        "sgd",
        "adamw",
        "e_adamw",
        "e_sgd",
    ):
        assert name in names
    assert optimizer_info("ALTO").layerwise and optimizer_info("alto").explores
    assert optimizer_info("lamb").layerwise and not optimizer_info("lamb").explores
    assert optimizer_info("e-adamw").explores


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"Unknown optimizer 'adamz'; valid names: .*alto.*e_adamw"
    ):
        create_optimizer("adamz", [torch.zeros(1, requires_grad=True)], lr=0.1)


@pytest.mark.parametrize(
    ("batch_size", "alpha", "beta1"),
    [(None, -5.0, 0.99), (4096, -5.0, 0.99), (1024, -5.0, 0.99), (128, 0.5, 0.01)],
)
def test_batch_size_picks_the_papers_alpha_and_beta1(batch_size, alpha, beta1) -> None:  # type: ignore[no-untyped-def]
    model = Net()
    alto = create_optimizer("alto", model, lr=1e-3, batch_size=batch_size)
    assert isinstance(alto, ALTO)
    assert alto.param_groups[0]["alpha"] == alpha and alto.param_groups[0]["betas"] == (
        beta1,
        0.9,
        0.99,
    )
    esgd = create_optimizer("esgd", model, lr=1e-3, batch_size=batch_size)
    assert isinstance(esgd, ESGD)
    assert (esgd.param_groups[0]["alpha"], esgd.param_groups[0]["beta"]) == (alpha, beta1)
    assert esgd.param_groups[0]["momentum"] == 0.9
    wrapped = create_optimizer("e_adamw", model, lr=1e-3, batch_size=batch_size)
    assert isinstance(wrapped, Explore) and isinstance(wrapped.optimizer, torch.optim.AdamW)
    assert wrapped.param_groups[0]["explore_alpha"] == alpha
    assert wrapped.param_groups[0]["explore_beta"] == beta1


def test_overrides_win_and_groups_come_from_the_model() -> None:
    model = Net()
    opt = create_optimizer(
        "eadamw", model, lr=2e-3, batch_size=8192, weight_decay=0.05, alpha=-2.0, eps=1e-6
    )
    assert isinstance(opt, EAdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["alpha"] == -2.0 and decay["eps"] == 1e-6 and decay["betas"][0] == 0.99
    lamb = create_optimizer("lamb", model, lr=1e-3)
    assert isinstance(lamb, Lamb) and lamb.param_groups[1]["trust_ratio"] is False
    vanilla = create_optimizer("alto_vanilla", model.parameters(), lr=1e-3)
    assert vanilla.param_groups[0]["bias_correction"] is False


def test_every_registered_optimizer_trains_a_model() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randn(32, 2)
    for name in available_optimizers():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        opt = create_optimizer(name, model, lr=1e-3, batch_size=2048)
        before = [p.detach().clone() for p in model.parameters()]
        for _ in range(2):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        changed = any(
            not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True)
        )
        assert changed, name


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="Invalid batch_size: 0; expected a positive integer"):
        create_optimizer("alto", Net(), lr=1e-3, batch_size=0)


def test_a_default_clip_of_zero_counts_as_no_clip() -> None:
    # pytorch_optimizer's Adan defaults max_grad_norm to 0.0, meaning "do not clip".
    assert not optimizer_info("adan").clips and optimizer_info("adan").default_clip is None
    assert optimizer_info("alto").clips and optimizer_info("alto").default_clip == 1.0
    assert not optimizer_info("adamw").clips


def test_auto_e_options_reach_explore_not_the_wrapped_optimizer() -> None:
    model = torch.nn.Linear(4, 2)
    opt = create_optimizer(
        "e_adamw", model, lr=1e-3, alpha="auto", target_perturbation=0.05, explore_foreach=False
    )
    assert isinstance(opt, Explore)
    assert all(g["explore_target_perturbation"] == 0.05 for g in opt.param_groups)
