"""Data-parallel training under ``torchrun``: joining the process group, ranks, DDP and FSDP2.

Each rank takes a disjoint, equal slice of every global batch (the same per-epoch permutation on
every rank, so no sampler state needs saving), accumulates over its micro-batches without
communicating, and the gradients are averaged once per optimizer step: the step equals one
process's step on the whole batch. Losses are averaged across ranks; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DISTRIBUTED",
    "ContextFactory",
    "Ranks",
    "full_tensor",
    "init_distributed",
    "join_ranks",
    "shard_units",
    "wrap_model",
]

DISTRIBUTED = ("ddp", "fsdp")
"""Data-parallel strategies under ``torchrun``: DistributedDataParallel, or FSDP2 (``fully_shard``)."""

ContextFactory = Callable[[], contextlib.AbstractContextManager[Any]]
"""A callable that opens a context, e.g. bf16 autocast or DDP's ``no_sync``."""


def init_distributed(device: str) -> torch.device:
    """Join the process group ``torchrun`` describes (if not yet joined); return this rank's device.

    NCCL and the rank's own GPU (``LOCAL_RANK``) when ``device`` is CUDA, gloo otherwise.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    wanted = torch.device(device)
    if wanted.type == "cuda":
        wanted = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(wanted)
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise RuntimeError(
                "--dist needs the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, ...): "
                "launch with `torchrun --nproc_per_node=N -m valleys.commands.main train ... --dist ddp`"
            )
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo")
    return wanted


@dataclass
class Ranks:
    """This process's place in a data-parallel run (world 1, rank 0 when not distributed)."""

    strategy: str | None = None
    world: int = 1
    rank: int = 0

    @property
    def lead(self) -> bool:
        """Rank 0, the one that writes files and prints."""
        return self.rank == 0

    def local(self, index: Tensor) -> Tensor:
        """This rank's slice of a global batch's indices."""
        per_rank = index.numel() // self.world
        return index[self.rank * per_rank : (self.rank + 1) * per_rank]

    def mean(self, value: Tensor) -> Tensor:
        """``value`` averaged across ranks (every rank's share of the batch is the same size)."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        dist.all_reduce(value)
        return value / self.world

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a single process)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def join_ranks(distributed: str | None, device: str, batch_size: int) -> tuple[Ranks, torch.device]:
    """This process's :class:`Ranks` for ``distributed`` (None: a single process) and its device.

    ``ValueError`` for an unknown strategy or a global batch that does not split evenly.
    """
    if distributed is None:
        return Ranks(), torch.device(device)
    if distributed not in DISTRIBUTED:
        raise ValueError(
            f"unknown distributed strategy {distributed!r}; valid: {', '.join(DISTRIBUTED)}"
        )
    import torch.distributed as dist

    rank_device = init_distributed(device)
    ranks = Ranks(distributed, dist.get_world_size(), dist.get_rank())
    if batch_size % ranks.world != 0:
        raise ValueError(
            f"batch_size ({batch_size}) must be a multiple of the world size "
            f"({ranks.world}): each rank takes batch_size / world_size examples per step"
        )
    return ranks, rank_device


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards on their own before the root: the elements of the outermost
    ``nn.ModuleList`` objects (the layers of Hugging Face's GPT-2 and BERT, any stack of blocks kept in a
    list), the usual per-block wrapping. Models without such a list are one unit, the root."""
    units: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside or not isinstance(module, nn.ModuleList):
            continue
        for block in module:
            units.append(block)
            inside.update(id(m) for m in block.modules())
    return units


def wrap_model(
    model: nn.Module, ranks: Ranks, device: torch.device
) -> tuple[nn.Module, ContextFactory | None]:
    """The model to train (wrapped for the strategy) and its ``no_sync`` context factory.

    A DDP wrapper holds ``model`` as its ``module``; FSDP2 shards ``model`` in place and returns it.
    """
    if ranks.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids)
        return wrapped, wrapped.no_sync
    if ranks.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # In place: the module's parameters become DTensors sharded over all ranks. Each block
        # is its own unit, so that the forward and backward gather one block's parameters at a
        # time (and overlap that with compute) instead of the whole model's.
        for block in shard_units(model):
            fully_shard(block)
        sharded: Any = fully_shard(model)

        @contextlib.contextmanager
        def no_sync() -> Iterator[None]:
            sharded.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                sharded.set_requires_gradient_sync(True)

        return sharded, no_sync
    return model, None


def full_tensor(t: Tensor) -> Tensor:
    """A DTensor (e.g. FSDP's gradient norm) as the whole tensor; a plain one as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t
