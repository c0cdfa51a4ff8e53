"""The training options ``valleys train`` and ``valleys compare`` share, and reading them back.

Every option defaults to "not given" (None) so that the command knows which options the user
chose: a resumed run takes its stored configuration and only the options given on the command line
change it (and a resumed comparison refuses any, since its finished runs fix its configuration).
"""

from __future__ import annotations

import argparse
from typing import Any

from valleys.commands._common import (
    finite_float,
    key_value,
    non_negative_float,
    non_negative_int,
    optimizer_name,
    positive_float,
    positive_int,
)

__all__ = ["add_tensorboard_option", "add_training_options", "given_options"]


def add_training_options(parser: argparse.ArgumentParser, *, single_run: bool) -> None:
    """Add the task and training options; ``single_run`` adds those a comparison varies itself."""
    _add_task_options(parser)
    run = parser.add_argument_group("training")
    if single_run:
        from valleys.bench.run.distributed import DISTRIBUTED

        run.add_argument("--optimizer", type=optimizer_name, help="optimizer (default: alto)")
        run.add_argument("--lr", type=positive_float, help="base learning rate (default: 1e-3)")
        run.add_argument("--seed", type=non_negative_int, help="random seed (default: 0)")
        run.add_argument(
            "--dist",
            choices=DISTRIBUTED,
            help="data-parallel across the processes torchrun starts (gloo on CPU, NCCL on CUDA); "
            "--batch-size stays the global batch",
        )
    _add_run_options(run)
    add_tensorboard_option(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no epoch lines")


def add_tensorboard_option(parser: argparse.ArgumentParser) -> None:
    """``--tensorboard``, for every command that trains (``train``, ``compare``, ``study``)."""
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        # None when not given, so that a resumed run keeps its stored choice.
        default=None,
        help="also write each run's metrics (loss, accuracy, lr, E's e_perturbation and e_cosine) "
        "as TensorBoard events in its folder's tensorboard/ (needs valleys[integrations])",
    )


def _add_task_options(parser: argparse.ArgumentParser) -> None:
    from valleys.bench.tasks import TASKS

    models = sorted({model for spec in TASKS.values() for model in spec.models})
    task = parser.add_argument_group("task")
    task.add_argument("--task", choices=list(TASKS), help="the task (default: fashion-mnist)")
    task.add_argument(
        "--model", choices=models, help="the model, for tasks offering several (image tasks)"
    )
    task.add_argument("--data-root", help="data folder (cifar10, cifar100, imagefolder)")
    task.add_argument("--data-file", help="text file (text-lm)")
    task.add_argument("--model-path", help="local Hugging Face checkpoint to fine-tune (text)")
    task.add_argument("--image-size", type=positive_int, help="imagefolder image side")
    task.add_argument("--max-length", type=positive_int, help="tokens per text")
    task.add_argument("--context", type=positive_int, help="characters per LM window")
    task.add_argument("--vocab-size", type=positive_int, help="WordPiece vocabulary size")
    task.add_argument(
        "--width", type=positive_int, help="model width: channels, hidden or embedding size"
    )
    task.add_argument("--layers", type=positive_int, help="Transformer blocks (text, LM)")
    task.add_argument("--train-limit", type=positive_int, help="use only N training examples")
    task.add_argument("--test-limit", type=positive_int, help="use only N test examples")


def _add_run_options(run: argparse._ArgumentGroup) -> None:
    from valleys.bench.run.schedules import E_SCHEDULES, SCALING_RULES, SCHEDULES

    run.add_argument("--batch-size", type=positive_int, help="global batch size")
    run.add_argument(
        "--micro-batch-size",
        type=positive_int,
        help="examples per forward/backward pass; gradients accumulate up to --batch-size",
    )
    run.add_argument("--eval-batch-size", type=positive_int, help="examples per eval pass")
    run.add_argument("--epochs", type=positive_int, help="passes over the training set")
    run.add_argument("--schedule", choices=SCHEDULES, help="lr schedule (default: constant)")
    run.add_argument("--warmup-epochs", type=non_negative_float, help="linear lr warmup")
    run.add_argument("--poly-power", type=positive_float, help="exponent of the poly schedule")
    run.add_argument(
        "--e-schedule",
        choices=E_SCHEDULES,
        help="E's alpha: constant, or decayed to 0 over the run (linear, cosine)",
    )
    run.add_argument("--lr-scaling", choices=SCALING_RULES, help="lr scaling with batch size")
    run.add_argument("--base-batch-size", type=positive_int, help="batch size --lr applies to")
    run.add_argument("--clip-grad-norm", type=positive_float, help="clip the gradient norm")
    run.add_argument("--weight-decay", type=non_negative_float, help="weight decay")
    run.add_argument(
        "--opt-arg",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="optimizer argument, e.g. alpha=-5 or betas=(0.99,0.9,0.99); repeatable",
    )
    run.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast")
    run.add_argument("--target", type=finite_float, help="target test metric (time to target)")
    run.add_argument("--device", help="torch device (default: cpu)")


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The training options the user gave, as TrainConfig / TaskOptions field names."""
    from valleys.bench.run.launch import OPTION_NAMES

    given = {k: v for k, v in vars(args).items() if k in OPTION_NAMES and v is not None}
    if args.opt_arg is not None:
        given["optimizer_args"] = dict(args.opt_arg)
    return given
