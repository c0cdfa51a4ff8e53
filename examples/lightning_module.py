"""ALTO in PyTorch Lightning: ``configure_optimizers`` returns it, with a per-step lr schedule.

Lightning checkpoints every optimizer's ``state_dict()`` under ``optimizer_states`` and restores it
on ``Trainer.fit(..., ckpt_path=...)``; ALTO's state dict carries E's buffer (``grad_ema``), so a
resumed run continues exactly as if it had never stopped. The data order is made resumable too: a
sampler whose shuffle depends on (seed, epoch) only, which Lightning sets at every epoch.

    python examples/lightning_module.py --out runs/lightning --epochs 4
    python examples/lightning_module.py --out runs/lightning --epochs 4 --resume runs/lightning/epoch=1.ckpt

Offline: scikit-learn's bundled digits (1,797 images of 8×8), a small MLP; seconds on one thread.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from valleys import create_optimizer

BATCH_SIZE = 128


class DigitsClassifier(pl.LightningModule):
    """An MLP on 8×8 digits, trained by ALTO under a cosine schedule stepped every batch."""

    def __init__(self, lr: float = 1e-1, total_steps: int = 60) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        x, y = batch
        self.log("val_accuracy", (self(x).argmax(-1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        # Parameter groups (no decay, no trust ratio on biases) and E's α, β1 for this batch size.
        optimizer = create_optimizer(
            "alto", self, lr=self.hparams.lr, batch_size=BATCH_SIZE, weight_decay=0.01
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.hparams.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def digits_loaders(seed: int = 0) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Train and validation loaders over a fixed split of the digits."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, val = order[:1500], order[1500:]
    train_set = TensorDataset(x[train], y[train])
    # One replica: a shuffle drawn from (seed, epoch) alone. Lightning calls set_epoch every epoch,
    # so a resumed run sees the batches the uninterrupted one saw; a DataLoader's own shuffle
    # draws from the global RNG, which a Lightning checkpoint does not hold.
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=seed)
    return (
        DataLoader(train_set, batch_size=BATCH_SIZE, sampler=sampler),
        DataLoader(TensorDataset(x[val], y[val]), batch_size=512),
    )


def fit(
    out: Path, *, epochs: int = 4, resume: str | None = None, seed: int = 0
) -> tuple[pl.Trainer, DigitsClassifier]:
    """Train for ``epochs`` (from ``resume``, a checkpoint, if given), saving one per epoch."""
    pl.seed_everything(seed, verbose=False)
    train_loader, val_loader = digits_loaders(seed)
    model = DigitsClassifier(total_steps=epochs * len(train_loader))
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=out,
        callbacks=[ModelCheckpoint(dirpath=out, filename="{epoch}", save_top_k=-1)],
    )
    trainer.fit(model, train_loader, val_loader, ckpt_path=resume)
    return trainer, model


def main(argv: Sequence[str] | None = None) -> float:
    """Train (or resume); return the last validation accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lightning"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resume", help="a checkpoint (.ckpt) to continue from")
    args = parser.parse_args(argv)
    trainer, _ = fit(args.out, epochs=args.epochs, resume=args.resume)
    accuracy = float(trainer.callback_metrics["val_accuracy"])
    print(f"epoch {trainer.current_epoch}: validation accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
