"""A global batch per optimizer step: which examples, and the gradient of their mean loss.

The global batch size is decoupled from memory: each optimizer step accumulates the gradient over
micro-batches, each micro-batch's mean loss weighted by its share of the batch, so the accumulated
gradient *is* the gradient of the whole batch's mean loss (exactly, up to float rounding) — for
models without batch-dependent layers. With BatchNorm, statistics are those of each micro-batch
("ghost batch norm"), as on a multi-GPU run where each device normalises its own shard.

The order of examples depends only on (seed, epoch), so a resumed run needs no sampler state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from valleys.bench.run.distributed import ContextFactory
from valleys.bench.tasks import Split, Task

__all__ = ["accumulate_gradients", "epoch_batches", "steps_per_epoch"]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimizer steps per epoch: whole batches only; ``ValueError`` if not even one fits."""
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size ({batch_size}) exceeds the number of training examples ({num_examples})"
        )
    return num_examples // batch_size


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> Tensor:
    """The example indices of each optimizer step of ``epoch``: ``int64 [steps, batch_size]``.

    A fresh permutation per epoch from a generator seeded by (seed, epoch), so that the order
    depends on nothing else (and a resumed run needs no sampler state). The remainder that does not
    fill a whole batch is left out, a different remainder each epoch.
    """
    steps = steps_per_epoch(num_examples, batch_size)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)[: steps * batch_size].view(steps, -1)


def accumulate_gradients(
    model: nn.Module,
    task: Task,
    split: Split,
    index: Tensor,
    micro_batch_size: int,
    autocast: ContextFactory | None = None,
    no_sync: ContextFactory | None = None,
    on_micro: Callable[[], None] | None = None,
) -> Tensor:
    """Add the gradient of the mean loss over ``split[index]`` to ``.grad``, in micro-batches.

    Each micro-batch's mean loss is weighted by its share of the batch, so the sum over
    micro-batches is the batch's mean loss and so is its gradient. Returns that loss, detached.
    ``no_sync`` (DDP's ``model.no_sync``) wraps every micro-batch but the last, so that gradients
    are communicated once per optimizer step. ``on_micro`` is called after each micro-batch (a
    progress bar's tick: at a large batch one step is many of them).
    """
    total = index.numel()
    loss_sum = torch.zeros((), dtype=torch.float64, device=index.device)
    micros = index.split(micro_batch_size)
    for i, micro in enumerate(micros):
        inputs, targets = split.select(micro)
        last = i == len(micros) - 1
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            with autocast() if autocast is not None else contextlib.nullcontext():
                output = task.forward(model, inputs)
            loss = task.loss(output, targets) * (micro.numel() / total)
            loss.backward()
        loss_sum += loss.detach().double()
        if on_micro is not None:
            on_micro()
    return loss_sum
