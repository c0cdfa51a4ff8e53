"""ALTO under Hugging Face Accelerate, data-parallel over CPU processes (gloo), resumable.

``accelerate launch --cpu --num_processes 2`` starts *one* process on a machine without an MPI
hostfile (its CPU path is the simple launcher), so start the ranks with torchrun; the
``Accelerator(cpu=True)`` in each joins them (gloo) and wraps the model in DDP:

    torchrun --standalone --nproc_per_node 2 examples/accelerate_ddp.py --out runs/accelerate
    torchrun --standalone --nproc_per_node 2 examples/accelerate_ddp.py \
        --out runs/accelerate-resumed --resume runs/accelerate/epoch-1

``accelerator.save_state`` writes ``optimizer.bin``: ALTO's ``state_dict()``, E's buffer
(``grad_ema``) with the moments; ``load_state`` restores it, and a seedable sampler whose epoch is
set explicitly makes the data order resumable, so a resumed run equals an uninterrupted one. Every
rank steps ALTO on the same all-reduced gradient, so every rank holds the same E buffer.

Offline: scikit-learn's bundled digits and a small MLP; seconds on one thread per process.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from valleys import create_optimizer

GLOBAL_BATCH = 128
EPOCH_FILE = "epoch.json"
"""Written next to Accelerate's files in each checkpoint: the epochs it completed."""


def digits(seed: int) -> tuple[TensorDataset, TensorDataset]:
    """A fixed train / test split of the 1,797 digits, pixels scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    y = torch.tensor(y)
    return TensorDataset(x[order[:1500]], y[order[:1500]]), TensorDataset(
        x[order[1500:]], y[order[1500:]]
    )


def train(out: Path, *, epochs: int = 4, resume: Path | None = None, seed: int = 0) -> float:
    """Train for ``epochs`` (continuing ``resume``'s checkpoint), saving one per epoch under
    ``out/epoch-N``; return the test accuracy, the same on every rank."""
    accelerator = Accelerator(
        cpu=True,
        # The shuffle is drawn from (data_seed, epoch) alone: a resumed run replays the same order.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
    )
    set_seed(seed)
    train_set, test_set = digits(seed)
    per_rank = GLOBAL_BATCH // accelerator.num_processes
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    # ALTO's layer-wise trust ratio makes lr a fraction of each weight's norm per step.
    optimizer = create_optimizer("alto", model, lr=1e-1, batch_size=GLOBAL_BATCH, weight_decay=0.01)
    loader = DataLoader(train_set, batch_size=per_rank, shuffle=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    start = 0
    if resume is not None:
        accelerator.load_state(str(resume))
        start = json.loads((resume / EPOCH_FILE).read_text())["epoch"]
    for epoch in range(start, epochs):
        loader.set_epoch(epoch)
        _train_epoch(accelerator, model, optimizer, loader, schedule)
        _save(accelerator, out / f"epoch-{epoch + 1}", epoch + 1)
    accuracy = _accuracy(accelerator.unwrap_model(model), test_set)
    accelerator.print(
        f"{accelerator.num_processes} processes, {epochs} epochs: test accuracy {accuracy:.3f}"
    )
    accelerator.end_training()
    return accuracy


def _train_epoch(
    accelerator: Accelerator, model: nn.Module, optimizer: Any, loader: Any, schedule: Any
) -> None:
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        accelerator.backward(nn.functional.cross_entropy(model(x), y))
        optimizer.step()
        schedule.step()


def _save(accelerator: Accelerator, folder: Path, epoch: int) -> None:
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / EPOCH_FILE).write_text(json.dumps({"epoch": epoch}))
    # No rank may go on (or end) before the checkpoint is complete.
    accelerator.wait_for_everyone()


@torch.no_grad()
def _accuracy(model: nn.Module, test_set: TensorDataset) -> float:
    model.eval()
    x, y = test_set.tensors
    return float((model(x).argmax(-1) == y).float().mean())


def main(argv: Sequence[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("runs/accelerate"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resume", type=Path, help="an epoch-N checkpoint folder to continue")
    args = parser.parse_args(argv)
    return train(args.out, epochs=args.epochs, resume=args.resume)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
