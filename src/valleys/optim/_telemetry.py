r"""E's telemetry: how far E moves the gradient, measured on the device.

For the gradients :math:`g` that E transforms (after clipping and, where the optimizer adds it to
the gradient, weight decay) and the :math:`\hat g = g + c\,(g - e_{k-1})` it returns, over all of
them together,

.. math::
    \text{e\_perturbation} = \frac{\lVert \hat g - g \rVert}{\lVert g \rVert}, \qquad
    \text{e\_cosine} = \cos(\hat g, g)
        = \frac{\lVert g \rVert^2 + \lVert \hat g \rVert^2 - \lVert \hat g - g \rVert^2}
               {2\,\lVert g \rVert\,\lVert \hat g \rVert}.

Both follow from three sums of squares, :math:`(\lVert g\rVert^2, \lVert\hat g\rVert^2,
\lVert\hat g - g\rVert^2)`, which every kernel adds up per tensor while it has :math:`g` and
:math:`\hat g` at hand (the compiled kernels inside their one loop over the elements), as 0-d
tensors: nothing is read on the host. Parameters whose group has E off (α = 0) do not count.

Under FSDP2 every kernel sees its rank's shards only, so the step's sums are local; reading the
telemetry all-reduces them (one collective per mesh dimension, see ``_sharding.py``) into the full
tensors' sums, so every rank reads the same, whole-model values and must read them together.

Telemetry is off by default, and then no kernel computes anything for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._ops import _opmath
from ._sharding import sharded_norms

__all__ = [
    "ETelemetry",
    "perturbation_sums",
    "perturbation_sums_multi",
    "stacked_norms",
    "sums_from_norms",
]


def perturbation_sums(grad: Tensor, ghat: Tensor) -> Tensor:
    r"""One tensor's :math:`(\lVert g\rVert^2, \lVert\hat g\rVert^2, \lVert\hat g - g\rVert^2)`,
    shape (3,), in the opmath dtype (also traced into the compiled kernels)."""
    dtype = _opmath(grad.dtype)
    g, h = grad.to(dtype), ghat.to(dtype)
    return torch.stack([g.square().sum(), h.square().sum(), (h - g).square().sum()])


def stacked_norms(tensors: list[Tensor]) -> Tensor:
    """The 2-norms of ``tensors`` (one device and dtype), stacked, in the opmath dtype."""
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=_opmath(tensors[0].dtype)))


def sums_from_norms(grad_norms: Tensor, ghat_norms: Tensor, diff_norms: Tensor) -> Tensor:
    r""":func:`perturbation_sums` of many tensors from their norms of :math:`g`, :math:`\hat g`
    and :math:`\hat g - g`, added up: shape (3,)."""
    return torch.stack([grad_norms, ghat_norms, diff_norms]).square().sum(1)


def perturbation_sums_multi(grads: list[Tensor], ghats: list[Tensor]) -> Tensor:
    """:func:`perturbation_sums` of lists of tensors (one device and dtype), added up."""
    diffs = torch._foreach_sub(ghats, grads)
    return sums_from_norms(stacked_norms(grads), stacked_norms(ghats), stacked_norms(diffs))


class ETelemetry:
    """Opt-in telemetry of an optimizer that applies E (ALTO, EAdam(W), ESGD, :class:`Explore`).

    ``enable_telemetry()`` turns it on; after each step, :meth:`e_telemetry` returns that step's
    ``e_perturbation`` and ``e_cosine`` as 0-d device tensors (reading them is the caller's sync).
    A setting of this object, not state: ``state_dict`` does not carry it, and copies
    (``deepcopy``, pickling) start with it off.
    """

    param_groups: list[dict[str, Any]]
    _e_enabled: bool = False
    _e_sums: list[Tensor] | None = None

    def enable_telemetry(self, enabled: bool = True) -> None:
        """Record E's perturbation and cosine on every step from now on (or stop: ``False``)."""
        self._e_enabled = enabled
        self._e_sums = None

    def _telemetry_begin(self) -> list[Tensor] | None:
        """The list this step's kernels add their sums to; None (nothing computed) when off."""
        if not self._e_enabled:
            return None
        self._e_sums = []
        return self._e_sums

    def e_telemetry(self) -> dict[str, Tensor]:
        r"""The last step's ``e_perturbation`` :math:`\lVert\hat g - g\rVert / \lVert g\rVert` and
        ``e_cosine`` :math:`\cos(\hat g, g)` over every parameter E transformed, as 0-d tensors
        on the first parameter's device; empty before the first step with telemetry on, or when
        no parameter was transformed. NaN where all those gradients are zero. With FSDP2
        (DTensor) parameters a collective: every rank reads them, and reads the same values."""
        if not self._e_sums:
            return {}
        first = self._e_sums[0]
        sums = torch.stack([s.to(first.device, first.dtype) for s in self._e_sums]).sum(0)
        sharded = sharded_norms([p for group in self.param_groups for p in group["params"]])
        if sharded is not None:
            sums = sharded.reduce_total(sums)
        g2, h2, d2 = sums.unbind(0)
        return {
            "e_perturbation": (d2 / g2).sqrt(),
            "e_cosine": (g2 + h2 - d2) / (2 * (g2 * h2).sqrt()),
        }
