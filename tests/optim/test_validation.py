"""Bad input fails at construction with a message naming the argument and its range."""

from __future__ import annotations

import pytest
import torch
from conftest import make_params

from valleys.optim import ALTO, ESGD, EAdam, EAdamW, Lamb

BAD_INPUT = [
    (ALTO, {"lr": -1e-3}, r"Invalid lr: -0\.001; expected a finite number >= 0"),
    (ALTO, {"lr": torch.ones(2)}, r"lr as a Tensor must hold one element"),
    (ALTO, {"eps": -1.0}, r"Invalid eps: -1\.0; expected a finite number >= 0"),
    (ALTO, {"eps2": float("nan")}, r"Invalid eps2"),
    (ALTO, {"weight_decay": -0.1}, r"Invalid weight_decay: -0\.1"),
    (ALTO, {"betas": (1.0, 0.9, 0.99)}, r"Invalid betas\[0\] \(beta1\): 1\.0; expected 0 <= "),
    (ALTO, {"betas": (0.9, -0.1, 0.99)}, r"Invalid betas\[1\] \(beta2\)"),
    (ALTO, {"betas": (0.9, 0.9)}, r"expected a tuple of 3 floats \(beta1, beta2, beta3\)"),
    (ALTO, {"alpha": -100.0}, r"\|alpha\| < 1/\(1 - beta1\) = 100 with beta1=0\.99"),
    (ALTO, {"alpha": 11.0, "betas": (0.9, 0.9, 0.99)}, r"= 10 with beta1=0\.9"),
    (ALTO, {"max_grad_norm": 0.0}, r"Invalid max_grad_norm: 0\.0; expected a number > 0, or None"),
    (Lamb, {"trust_ratio": "always"}, r"Invalid trust_ratio: 'always'; expected True, False or "),
    (Lamb, {"betas": (0.9, 0.99, 0.999)}, r"expected a tuple of 2 floats \(beta2, beta3\)"),
    (EAdam, {"betas": (0.99, 0.9, 1.5)}, r"Invalid betas\[2\] \(beta3\)"),
    (EAdamW, {"alpha": float("inf")}, r"Invalid alpha: inf; expected a finite number"),
    (ESGD, {"momentum": 1.0}, r"Invalid momentum: 1\.0"),
    (ESGD, {"beta": 0.5, "alpha": 2.0}, r"\|alpha\| < 1/\(1 - beta\) = 2"),
    (ESGD, {"nesterov": True}, r"Nesterov momentum needs momentum > 0 and dampening = 0"),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), BAD_INPUT)
def test_bad_hyperparameters_raise_value_error(cls, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        cls(make_params(), **kwargs)


def test_bad_per_group_value_is_refused_too() -> None:
    params = make_params()
    with pytest.raises(ValueError, match=r"Invalid lr"):
        ALTO([{"params": params[:1]}, {"params": params[1:], "lr": -1.0}])
    opt = ALTO(params[:1])
    with pytest.raises(ValueError, match=r"\|alpha\| <"):
        opt.add_param_group({"params": params[1:], "alpha": 500.0})


def test_alpha_at_the_stability_bound_is_refused_just_inside_accepted() -> None:
    ALTO(make_params(), alpha=-99.9, betas=(0.99, 0.9, 0.99))
    with pytest.raises(ValueError):
        ALTO(make_params(), alpha=-100.0, betas=(0.99, 0.9, 0.99))
