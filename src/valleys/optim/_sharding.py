r"""Optimizers on sharded parameters: FSDP2's DTensors.

Under ``torch.distributed.fsdp.fully_shard`` every parameter, its gradient and every state tensor
created with ``zeros_like`` is a :class:`~torch.distributed.tensor.DTensor` of which each rank
holds one (possibly uneven, possibly empty) shard. Elementwise work (moments, E, weight decay)
runs unchanged on the local shards. Norms do not: ALTO/Lamb's trust ratio and global-norm
clipping need the norm of the *whole* tensor, and a norm of the shard gives each rank a different,
wrong ratio (the reason DeepSpeed ZeRO never supported LAMB).

:class:`ShardedNorms` turns per-tensor local sums of squares into full-tensor ones with one
``all_reduce`` of a stacked vector for any number of tensors, never gathering a parameter; E's
telemetry, summed over all tensors, goes the same way (:meth:`ShardedNorms.reduce_total`). A
tensor that is replicated along a mesh dimension has the same local values on every rank of that
dimension, so only the rank at coordinate 0 contributes its sum there (exact, unlike dividing by
the dimension's size).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Partial, Replicate

__all__ = ["ShardedNorms", "as_dtensor_like", "local", "sharded_norms"]


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (sharing its storage, so in-place updates reach it); a plain
    tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


def as_dtensor_like(t: Tensor, like: Tensor) -> Tensor:
    """``t``, a local shard laid out as ``like``'s, wrapped as a DTensor when ``like`` is one:
    state created from a local shard (ESGD's momentum buffer) must be saved as a whole tensor."""
    if not isinstance(like, DTensor):
        return t
    return DTensor.from_local(
        t,
        like.device_mesh,
        like.placements,
        run_check=False,
        shape=like.shape,
        stride=like.stride(),
    )


class ShardedNorms:
    """Full-tensor sums of squares for a list of DTensors on one device mesh.

    Args:
        tensors: the parameters (or gradients) whose norms are needed, all DTensors on one mesh.
    """

    def __init__(self, tensors: list[Tensor]) -> None:
        if not all(isinstance(t, DTensor) for t in tensors):
            raise ValueError(
                "a parameter group mixes DTensor (FSDP2) and plain tensor parameters; shard all "
                "of the optimizer's parameters with fully_shard or none of them"
            )
        dtensors: list[DTensor] = tensors  # type: ignore[assignment]
        self.mesh = dtensors[0].device_mesh
        if any(t.device_mesh != self.mesh for t in dtensors):
            raise ValueError("all of an optimizer's DTensor parameters must be on one device mesh")
        coordinate = self.mesh.get_coordinate() or [0] * self.mesh.ndim
        weights = []
        replicated_dims = set()
        for t in dtensors:
            if any(isinstance(p, Partial) for p in t.placements):
                raise ValueError("parameters with Partial placements have no defined norm")
            counted = all(
                coordinate[d] == 0 for d, p in enumerate(t.placements) if isinstance(p, Replicate)
            )
            weights.append(1.0 if counted else 0.0)
            replicated_dims.add(tuple(isinstance(p, Replicate) for p in t.placements))
        self._weights = weights
        # Whether every tensor is replicated along the same mesh dimensions: then this rank counts
        # all of them or none, and a total over all of them can be weighted as one (placements
        # are the same on every rank, so every rank agrees).
        self._uniform = len(replicated_dims) == 1

    def reduce(self, local_squares: Tensor, indices: list[int]) -> Tensor:
        """All-reduce ``local_squares`` (last dimension: the tensors ``indices`` points at), in one
        collective per mesh dimension, into the full tensors' sums of squares."""
        weights = torch.tensor(
            [self._weights[i] for i in indices],
            dtype=local_squares.dtype,
            device=local_squares.device,
        )
        return self._all_reduce(local_squares * weights)

    def reduce_total(self, local_sums: Tensor) -> Tensor:
        """All-reduce sums that each rank took over its shards of *all* of this object's tensors
        together (E's telemetry, added up over the step's kernels), in one collective per mesh
        dimension, into the full tensors' sums.

        Raises:
            ValueError: the tensors are replicated along different mesh dimensions, so that a
                rank counts some of them and not others and its total cannot be weighted as one.
        """
        if not self._uniform:
            raise ValueError(
                "E's telemetry needs all sharded parameters replicated along the same mesh "
                "dimensions (as fully_shard and HSDP place them); these mix placements"
            )
        return self._all_reduce(local_sums * self._weights[0])

    def _all_reduce(self, total: Tensor) -> Tensor:
        """Sum ``total`` in place over every mesh dimension; return it."""
        for dim in range(self.mesh.ndim):
            dist.all_reduce(total, group=self.mesh.get_group(dim))
        return total

    def global_norm(self, grads: list[Tensor]) -> Tensor:
        """The 2-norm of all of ``grads`` (the DTensors this object was built for) together."""
        dtype = torch.float64 if grads[0].dtype == torch.float64 else torch.float32
        squares = torch.stack(
            [torch.linalg.vector_norm(local(g), dtype=dtype).square() for g in grads]
        )
        return self.reduce(squares, list(range(len(grads)))).sum().sqrt()


def sharded_norms(tensors: list[Tensor]) -> ShardedNorms | None:
    """A :class:`ShardedNorms` for ``tensors`` when any of them is a DTensor, else None."""
    if any(isinstance(t, DTensor) for t in tensors):
        return ShardedNorms(tensors)
    return None
