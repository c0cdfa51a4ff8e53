r"""What the compiled kernels of ``_fused.py`` take as 0-d tensor inputs rather than constants.

Whatever may change from one step to the next (the lr, the bias corrections, the weight decay,
E's α and β1 under a schedule or auto-E) is an argument of a compiled kernel, never part of its
key, so that no change recompiles. Each is filled on the device (no host-to-device copy) in the
bucket's scalar dtype, from values computed on the host in double precision as the constants of
a kernel were folded before, so that results with constant hyperparameters are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._e import ghat_coefficient
from ._ops import Number, _opmath


def _scalar_tensor(value: Number, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``value`` as a 0-d tensor on ``device``: a fill for a float (no host-to-device copy)."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype)
    return torch.full((), value, dtype=dtype, device=device)


EScalars = tuple[Tensor, Tensor, Tensor]
"""E's scalars as a kernel takes them (see :func:`_e_scalars`)."""


def _e_scalars(alpha: Number, beta: float, dtype: torch.dtype, device: torch.device) -> EScalars:
    r"""E's scalars as 0-d tensor inputs of a kernel: :math:`c = \alpha(1-\beta_1)`, and
    :math:`e`'s update :math:`e + w(g - e)`, :math:`w = 1-\beta_1`, in the form ``torch.lerp``
    evaluates it: from :math:`e` with :math:`w` where :math:`w < 1/2`, otherwise from :math:`g`
    with :math:`w - 1` (the factor, and whether to start from :math:`g`).

    The factors are computed here in double precision, as the compile-time constants they
    replace were folded, so that results with constant hyperparameters are unchanged bit for
    bit; ``lerp`` with a tensor weight would compute :math:`w - 1` in the tensor's precision."""
    weight = 1 - beta
    from_grad = weight >= 0.5
    return (
        _scalar_tensor(ghat_coefficient(alpha, beta), dtype, device),
        _scalar_tensor(weight - 1 if from_grad else weight, dtype, device),
        torch.full((), from_grad, dtype=torch.bool, device=device),
    )


def _step_scalars(
    steps: list[Tensor],
    lr: Number,
    device: torch.device,
    dtype: torch.dtype,
    beta2: float,
    beta3: float,
    bias_correction: bool,
) -> tuple[Tensor, list[Tensor | None], list[Tensor | None]]:
    r"""Advance one (device, dtype) bucket's step counters and return what its kernels take: the
    lr as a 0-d tensor and, per tensor, :math:`1/(1-\beta_2^k)` and :math:`1/\sqrt{1-\beta_3^k}`
    (None without bias correction), all in the bucket's scalar dtype."""
    torch._foreach_add_(steps, 1)
    opmath = _opmath(dtype)
    lr_t = _scalar_tensor(lr, opmath, device)
    if not bias_correction:
        return lr_t, [None] * len(steps), [None] * len(steps)
    k = torch.stack(steps).to(opmath)
    m_scales = torch.reciprocal(1 - torch.pow(beta2, k))
    v_scales = torch.rsqrt(1 - torch.pow(beta3, k))
    return lr_t, list(m_scales.unbind(0)), list(v_scales.unbind(0))


def _variable_scalars(
    grad_emas: list[Tensor] | None, alpha: Number, beta: float, weight_decay: float, like: Tensor
) -> tuple[EScalars | None, Tensor | None]:
    """What a schedule may change, as the 0-d tensors a bucket's kernels take (in the dtype and on
    the device of ``like``, its lr): E's scalars (None without E) and the weight decay (None when
    it is 0, a flag read from the Python value, as the kernels branch on it)."""
    e_scalars = None if grad_emas is None else _e_scalars(alpha, beta, like.dtype, like.device)
    decay = None if weight_decay == 0 else _scalar_tensor(weight_decay, like.dtype, like.device)
    return e_scalars, decay
