"""``valleys train``: one run, resumable, also as one rank of a ``torchrun`` job (``--dist``).

The run's configuration, folder and process group come from :mod:`valleys.bench.run.launch`; this
module reads the command line and prints the outcome (on rank 0 only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from valleys.commands._common import EXIT_ERROR
from valleys.commands._training import add_training_options, given_options
from valleys.commands.flatness import print_flatness

__all__ = ["add_train_parser", "train_command"]


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` to the ``valleys`` subcommands; its handler is :func:`train_command`."""
    parser = subparsers.add_parser(
        "train",
        help="train one run (resumable)",
        description="Train one optimizer on one task; checkpoints every epoch.",
    )
    add_training_options(parser, single_run=True)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", help="run directory (default: runs/train-<task>-<opt>-<time>)")
    where.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (given options override)",
    )
    parser.add_argument(
        "--flatness",
        action="store_true",
        help="then measure the end point's flatness (as valleys flatness; not with --dist fsdp)",
    )
    parser.set_defaults(handler=train_command)
    return parser


def train_command(args: argparse.Namespace) -> int:
    """Train (or resume) the run ``args`` describe; under ``--dist`` as this rank of the job."""
    if args.flatness and args.dist == "fsdp":
        raise ValueError(
            "--flatness is not available with --dist fsdp: its checkpoint is sharded; use a "
            "single-process or --dist ddp run"
        )
    if args.dist is not None:
        from valleys.bench.run.config import TrainConfig
        from valleys.bench.run.launch import run_distributed

        run_distributed(args.device or TrainConfig.device, lambda: _train(args))
    return _train(args)


def _train(args: argparse.Namespace) -> int:
    from valleys.bench.run.config import CONFIG_FILE
    from valleys.bench.run.launch import is_lead, prepare_run
    from valleys.bench.run.train import train

    resume = Path(args.resume) if args.resume is not None else None
    config, out = prepare_run(
        given_options(args), resume=resume, out=Path(args.out) if args.out else None
    )
    try:
        result = train(
            config, out, resume=resume is not None, quiet=args.quiet, distributed=args.dist
        )
    except KeyboardInterrupt:
        if (out / CONFIG_FILE).is_file() and is_lead():
            print(f"resume with: valleys train --resume {out}", file=sys.stderr)
        raise
    status = 0 if result.status == "completed" else EXIT_ERROR
    if not is_lead():
        return status
    best = f"{result.best_metric:.4f}" if result.best_metric is not None else "—"
    loss = f"{result.final_train_loss:.4f}" if result.final_train_loss is not None else "—"
    reached = (
        f"{result.time_to_target:.1f} s (epoch {result.epochs_to_target})"
        if result.time_to_target is not None
        else "not reached"
        if result.target is not None
        else "no target"
    )
    print(
        f"{result.status}: {result.epochs_completed} epochs, {result.steps} steps; "
        f"best test {result.metric} {best} (epoch {result.best_epoch}); final train loss {loss}; "
        f"time to target {reached}; results in {out}"
    )
    if args.flatness and result.status == "completed":
        print_flatness([out])
    return status
