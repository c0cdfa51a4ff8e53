"""Hyperparameter checks shared by the optimizers: each error names the argument and its range."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_lr(lr: float | Tensor) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"lr as a Tensor must hold one element, got shape {tuple(lr.shape)}")
        if lr.requires_grad:
            raise ValueError("lr as a Tensor must not require grad")
        return
    check_non_negative("lr", lr)


def check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0.0):
        raise ValueError(f"Invalid {name}: {value!r}; expected a finite number >= 0")


def check_beta(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value < 1.0):
        raise ValueError(f"Invalid {name}: {value!r}; expected 0 <= {name} < 1")


def check_betas(betas: tuple[float, ...], names: tuple[str, ...]) -> None:
    if not isinstance(betas, tuple | list) or len(betas) != len(names):
        raise ValueError(
            f"Invalid betas: {betas!r}; expected a tuple of {len(names)} floats ({', '.join(names)})"
        )
    for i, (name, value) in enumerate(zip(names, betas, strict=True)):
        check_beta(f"betas[{i}] ({name})", value)


def e_stable(alpha: float, beta: float) -> bool:
    r"""Whether E is stable: :math:`0 \le \beta_1 < 1` and :math:`|\alpha| < 1/(1-\beta_1)`
    (PAPER.md, "The E adaptor")."""
    return 0.0 <= beta < 1.0 and abs(alpha) < 1.0 / (1.0 - beta)


def check_alpha(alpha: float, beta: float, beta_name: str) -> None:
    r"""Refuse an α outside E's stable region (:func:`e_stable`) for a valid β1."""
    if not (isinstance(alpha, int | float) and math.isfinite(alpha)):
        raise ValueError(f"Invalid alpha: {alpha!r}; expected a finite number")
    if not e_stable(alpha, beta):
        bound = 1.0 / (1.0 - beta)
        raise ValueError(
            f"Invalid alpha: {alpha!r}; E is stable only for |alpha| < 1/(1 - {beta_name}) = "
            f"{bound:g} with {beta_name}={beta!r}"
        )


def check_max_grad_norm(value: float | None) -> None:
    if value is None:
        return
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0.0):
        raise ValueError(f"Invalid max_grad_norm: {value!r}; expected a number > 0, or None")


def check_state_dtype(value: torch.dtype | None) -> None:
    if value is None:
        return
    if not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise ValueError(
            f"Invalid state_dtype: {value!r}; expected None (the parameter's dtype) or a floating "
            "dtype such as torch.float32"
        )
