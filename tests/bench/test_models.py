"""Every model runs forward and backward on a batch and returns the documented shape."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from valleys.bench.models import (
    gpt2_lm,
    mlp,
    resnet20,
    small_cnn,
    text_classifier,
    text_classifier_from_pretrained,
)


def _assert_all_parameters_get_gradients(model: nn.Module) -> None:
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("build", "input_shape", "output_shape"),
    [
        (lambda: resnet20(10, in_channels=1), (4, 1, 28, 28), (4, 10)),
        (lambda: resnet20(100), (3, 3, 32, 32), (3, 100)),
        (lambda: small_cnn(10), (5, 1, 28, 28), (5, 10)),
        (lambda: small_cnn(10, in_channels=3, image_size=32), (2, 3, 32, 32), (2, 10)),
        (lambda: small_cnn(10, image_size=8), (2, 1, 8, 8), (2, 10)),
        (lambda: mlp(), (16, 1), (16, 1)),
        (lambda: mlp(in_features=3, hidden=8, out_features=2, depth=1), (4, 3), (4, 2)),
    ],
    ids=["resnet20-28x1", "resnet20-32x3", "cnn-28", "cnn-32x3", "cnn-8", "mlp", "mlp-depth1"],
)
def test_vision_and_mlp_forward_backward(
    build: Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
) -> None:
    torch.manual_seed(0)
    model = build()
    output = model(torch.randn(input_shape))
    assert output.shape == output_shape
    output.square().mean().backward()
    _assert_all_parameters_get_gradients(model)


def test_resnet20_is_he_et_al() -> None:
    model = resnet20(10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    # 19 convolutions + 1 linear layer; option-A shortcuts have no weights.
    assert len(convs) == 19 and len(linears) == 1
    assert {conv.out_channels for conv in convs} == {16, 32, 64}
    # The 0.27 M of the paper; 1x1-conv (option B) shortcuts would make it 272,474.
    assert sum(p.numel() for p in model.parameters()) == 269_722


def test_small_cnn_normalises_each_convolution_with_batchnorm() -> None:
    model = small_cnn(10, width=8)
    norms = [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert norms == [8, 16] and all(conv.bias is None for conv in convs)


def test_mlp_has_three_linear_layers() -> None:
    layers = [m for m in mlp().modules() if isinstance(m, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in layers] == [
        (1, 64),
        (64, 64),
        (64, 1),
    ]


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="image_size"):
        small_cnn(10, image_size=3)
    with pytest.raises(ValueError, match="width"):
        small_cnn(10, width=0)
    with pytest.raises(ValueError, match="width"):
        resnet20(10, width=0)
    with pytest.raises(ValueError, match="depth"):
        mlp(depth=0)


def test_text_classifier_forward_backward() -> None:
    torch.manual_seed(0)
    model = text_classifier(vocab_size=300, num_classes=5, max_length=32, hidden_size=32)
    input_ids = torch.randint(5, 300, (3, 32))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 10:] = 0
    input_ids[0, 10:] = 0
    labels = torch.tensor([0, 4, 2])
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert output.logits.shape == (3, 5)
    output.loss.backward()
    _assert_all_parameters_get_gradients(model)


def test_text_classifier_from_pretrained(tmp_path: Path) -> None:
    text_classifier(vocab_size=100, num_classes=2, hidden_size=16, layers=1).save_pretrained(
        tmp_path
    )
    model = text_classifier_from_pretrained(tmp_path, num_classes=3)
    logits = model(input_ids=torch.randint(0, 100, (2, 7))).logits
    assert logits.shape == (2, 3)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        text_classifier_from_pretrained(tmp_path / "nowhere", num_classes=3)


def test_gpt2_lm_forward_backward() -> None:
    torch.manual_seed(0)
    model = gpt2_lm(vocab_size=81, context=16, n_embd=32, n_layer=2, n_head=4)
    input_ids = torch.randint(0, 81, (2, 16))
    output = model(input_ids=input_ids, labels=input_ids)
    assert output.logits.shape == (2, 16, 81)
    # An untrained model predicts close to uniformly: loss near ln(vocab).
    assert output.loss.item() == pytest.approx(torch.log(torch.tensor(81.0)).item(), rel=0.1)
    output.loss.backward()
    _assert_all_parameters_get_gradients(model)
