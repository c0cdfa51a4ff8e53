"""The ``valleys`` command: ``train``, ``compare``, ``study``, ``report`` and ``landscape``.

Every option defaults to "not given" so that the command knows which options the user chose: a
resumed run takes its stored configuration and only the options given on the command line change
it (and a resumed comparison refuses any, since its finished runs fix its configuration).
"""

from __future__ import annotations

import argparse
import ast
import math
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from valleys.commands._argtypes import non_negative_int, positive_int

__all__ = ["build_parser", "main"]

_EXIT_ERROR = 1
_EXIT_USAGE = 2
_EXIT_INTERRUPTED = 130


def _float_check(ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_positive_float = _float_check(lambda v: v > 0, "a finite number > 0")
_non_negative_float = _float_check(lambda v: v >= 0, "a finite number >= 0")
_finite_float = _float_check(lambda v: True, "a finite number")


def _optimizer_name(text: str) -> str:
    from valleys.bench.run.train import check_optimizer_name

    try:
        check_optimizer_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _optimizer_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated optimizer names")
    for name in names:
        _optimizer_name(name)
    return names


def _seed_list(text: str) -> tuple[int, ...]:
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected comma-separated integers >= 0")
    return tuple(non_negative_int(part.strip()) for part in parts)


def _lr_list(text: str) -> tuple[float, ...]:
    from valleys.bench.compare.run import parse_floats

    try:
        return parse_floats(text, "--lrs")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _add_training_options(parser: argparse.ArgumentParser, *, single_run: bool) -> None:
    from valleys.bench.run.schedules import SCALING_RULES, SCHEDULES
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
    task.add_argument("--train-limit", type=positive_int, help="use only N training examples")
    task.add_argument("--test-limit", type=positive_int, help="use only N test examples")

    run = parser.add_argument_group("training")
    if single_run:
        from valleys.bench.run.train import DISTRIBUTED

        run.add_argument("--optimizer", type=_optimizer_name, help="optimizer (default: alto)")
        run.add_argument("--lr", type=_positive_float, help="base learning rate (default: 1e-3)")
        run.add_argument("--seed", type=non_negative_int, help="random seed (default: 0)")
        run.add_argument(
            "--dist",
            choices=DISTRIBUTED,
            help="data-parallel across the processes torchrun starts (gloo on CPU, NCCL on CUDA); "
            "--batch-size stays the global batch",
        )
    run.add_argument("--batch-size", type=positive_int, help="global batch size")
    run.add_argument(
        "--micro-batch-size",
        type=positive_int,
        help="examples per forward/backward pass; gradients accumulate up to --batch-size",
    )
    run.add_argument("--eval-batch-size", type=positive_int, help="examples per eval pass")
    run.add_argument("--epochs", type=positive_int, help="passes over the training set")
    run.add_argument("--schedule", choices=SCHEDULES, help="lr schedule (default: constant)")
    run.add_argument("--warmup-epochs", type=_non_negative_float, help="linear lr warmup")
    run.add_argument("--poly-power", type=_positive_float, help="exponent of the poly schedule")
    run.add_argument("--lr-scaling", choices=SCALING_RULES, help="lr scaling with batch size")
    run.add_argument("--base-batch-size", type=positive_int, help="batch size --lr applies to")
    run.add_argument("--clip-grad-norm", type=_positive_float, help="clip the gradient norm")
    run.add_argument("--weight-decay", type=_non_negative_float, help="weight decay")
    run.add_argument(
        "--opt-arg",
        action="append",
        type=_key_value,
        metavar="KEY=VALUE",
        help="optimizer argument, e.g. alpha=-5 or betas=(0.99,0.9,0.99); repeatable",
    )
    run.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast")
    run.add_argument("--target", type=_finite_float, help="target test metric (time to target)")
    run.add_argument("--device", help="torch device (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no epoch lines")


_TASK_OPTIONS = (
    "model",
    "data_root",
    "data_file",
    "model_path",
    "image_size",
    "max_length",
    "context",
    "vocab_size",
    "train_limit",
    "test_limit",
)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The training options the user gave, as TrainConfig / TaskOptions field names."""
    from valleys.bench.run.train import TrainConfig

    names = {f.name for f in fields(TrainConfig)} | set(_TASK_OPTIONS)
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.opt_arg is not None:
        given["optimizer_args"] = dict(args.opt_arg)
    return given


def _apply(config: Any, given: dict[str, Any]) -> Any:
    options = {k: given[k] for k in _TASK_OPTIONS if k in given}
    changes = {k: v for k, v in given.items() if k not in _TASK_OPTIONS}
    if options:
        changes["task_options"] = replace(config.task_options, **options)
    return replace(config, **changes)


def _train(args: argparse.Namespace) -> int:
    if args.flatness and args.dist == "fsdp":
        raise ValueError(
            "--flatness is not available with --dist fsdp: its checkpoint is sharded; use a "
            "single-process or --dist ddp run"
        )
    if args.dist is not None:
        return _train_distributed(args)
    return _train_run(args)


def _train_run(args: argparse.Namespace) -> int:
    import json

    from valleys.bench.run.train import CONFIG_FILE, TrainConfig, train

    given = _given(args)
    if args.resume is not None:
        out = Path(args.resume)
        stored = out / CONFIG_FILE
        if not stored.is_file():
            raise FileNotFoundError(f"no run to resume in {out} ({CONFIG_FILE} missing)")
        config = _apply(TrainConfig.from_dict(json.loads(stored.read_text())), given)
    else:
        config = _apply(TrainConfig(), given)
        config.validate()
        stamp = _shared(datetime.now().strftime("%Y%m%d-%H%M%S"))
        out = Path(args.out or f"runs/train-{config.task}-{config.optimizer}-{stamp}")
    try:
        result = train(
            config, out, resume=args.resume is not None, quiet=args.quiet, distributed=args.dist
        )
    except KeyboardInterrupt:
        if (out / CONFIG_FILE).is_file() and _is_lead():
            print(f"resume with: valleys train --resume {out}", file=sys.stderr)
        raise
    if not _is_lead():
        return 0 if result.status == "completed" else _EXIT_ERROR
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
        _print_flatness([out])
    return 0 if result.status == "completed" else _EXIT_ERROR


def _print_flatness(runs: Sequence[Path]) -> None:
    from valleys.bench.analysis.flatness_runs import measure_run

    for run in runs:
        f = measure_run(run)
        top = f"{f['top_eigenvalue']:.4g}" if f["top_eigenvalue"] is not None else "not converged"
        print(
            f"flatness of {run}: top Hessian eigenvalue {top}, trace {f['hessian_trace']:.4g} "
            f"± {f['hessian_trace_stderr']:.2g}, distance travelled {f['distance_travelled']:.4g}"
        )


def _train_distributed(args: argparse.Namespace) -> int:
    """``valleys train --dist ...`` as one rank of a torchrun job.

    Joins the process group before anything else, so that every rank agrees on the run folder,
    and leaves it at the end; a finished run then ends its process at once, because FSDP
    processes on gloo can abort at interpreter exit after a successful run.
    """
    import os

    import torch.distributed as dist

    from valleys.bench.run.train import TrainConfig, init_distributed

    init_distributed(args.device or TrainConfig.device)
    try:
        status = _train_run(args)
    except BaseException:
        # The error is reported as for any run; a rare abort at exit cannot hide it.
        dist.destroy_process_group()
        raise
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _is_lead() -> bool:
    """Rank 0 of a distributed run, or the only process."""
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _shared(value: str) -> str:
    """Rank 0's ``value`` on every rank of a distributed run."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])


def _compare(args: argparse.Namespace) -> int:
    from valleys.bench.compare.run import (
        CompareConfig,
        default_out_dir,
        load_compare_config,
        parse_lr_grids,
        rerender,
        run_compare,
    )

    given = _given(args)
    chosen = {k: getattr(args, k) for k in ("optimizers", "seeds", "lrs", "lr_grid", "out")}
    if args.resume is not None:
        extra = sorted([*given, *(k for k, v in chosen.items() if v is not None)])
        if extra:
            raise ValueError(
                "--resume continues the comparison stored in its directory with that "
                f"configuration; drop {', '.join('--' + k.replace('_', '-') for k in extra)}"
            )
        out = Path(args.resume)
        config = load_compare_config(out)
    else:
        defaults = CompareConfig()
        optimizers = args.optimizers or defaults.optimizers
        grids = parse_lr_grids(args.lr_grid or [])
        if args.lrs is not None:
            grids = {name: grids.get(name, args.lrs) for name in optimizers}
        config = CompareConfig(
            base=_apply(defaults.base, given),
            optimizers=optimizers,
            seeds=args.seeds or defaults.seeds,
            lr_grids=grids,
        )
        out = Path(args.out) if args.out else default_out_dir()
    try:
        result = run_compare(
            config, out, resume=args.resume is not None, quiet=args.quiet, jobs=args.jobs
        )
    except KeyboardInterrupt:
        if (out / "results.json").is_file():
            report, table = rerender(out)
            print(f"interrupted; report of the finished runs: {report}\n{table}")
        if (out / "compare.json").is_file():
            print(f"resume with: valleys compare --resume {out}", file=sys.stderr)
        raise
    print(result.table())
    report = result.report
    if args.flatness:
        _print_flatness(
            [Path(r.out_dir) for r in result.results if r.status == "completed" and r.out_dir]
        )
        report, _ = rerender(out)
    print(f"\nreport: {report} ({result.wall_seconds:.0f} s)")
    return 0


def _bench_step(args: argparse.Namespace) -> int:
    from valleys.bench.perf.step import main as bench_main

    return bench_main([])


def _landscape(args: argparse.Namespace) -> int:
    from valleys.bench.analysis.landscape_runs import markdown_table, run_landscapes, write_report

    out = Path(args.out) if args.out else Path("runs") / f"landscape-{datetime.now():%Y%m%d-%H%M%S}"
    result = run_landscapes(
        args.functions,
        args.optimizers,
        lr=args.lr,
        steps=args.steps,
        progress=None if args.quiet else (lambda line: print(line, file=sys.stderr)),
    )
    paths = write_report(result, out)
    print(markdown_table(result))
    print(f"\nreport: {paths['markdown']}  (picture: {paths['png']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``valleys`` command."""
    parser = argparse.ArgumentParser(
        prog="valleys",
        description="Train and compare optimizers (ALTO, Lamb, AdamW, SGD, ...) on real data.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train one run (resumable)",
        description="Train one optimizer on one task; checkpoints every epoch.",
    )
    _add_training_options(train, single_run=True)
    where = train.add_mutually_exclusive_group()
    where.add_argument("--out", help="run directory (default: runs/train-<task>-<opt>-<time>)")
    where.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (given options override)",
    )
    train.add_argument(
        "--flatness",
        action="store_true",
        help="then measure the end point's flatness (as valleys flatness; not with --dist fsdp)",
    )
    train.set_defaults(handler=_train)

    compare = commands.add_parser(
        "compare",
        help="compare optimizers, each tuned on an lr grid (the main job)",
        description=(
            "With no options: ALTO vs Lamb, AdamW and SGD at batch 8192 on fashion-mnist (MLP), "
            "3 learning rates each, 20 epochs; prints a table and writes "
            "runs/compare-<time>/report.md with PNG curves."
        ),
    )
    _add_training_options(compare, single_run=False)
    compare.add_argument(
        "--optimizers", type=_optimizer_list, help="comma-separated (default: alto,lamb,adamw,sgd)"
    )
    compare.add_argument("--seeds", type=_seed_list, help="comma-separated seeds (default: 0)")
    compare.add_argument("--lrs", type=_lr_list, help="one lr grid for every optimizer")
    compare.add_argument(
        "--lr-grid",
        action="append",
        metavar="NAME=LR,LR,...",
        help="lr grid of one optimizer; repeatable (all grids must have the same size)",
    )
    compare.add_argument(
        "--jobs",
        type=positive_int,
        help="runs at a time, each in its own process (default: 2 with 2+ CPUs)",
    )
    where = compare.add_mutually_exclusive_group()
    where.add_argument("--out", help="comparison directory (default: runs/compare-<time>)")
    where.add_argument("--resume", metavar="DIR", help="continue the comparison in DIR")
    compare.add_argument(
        "--flatness",
        action="store_true",
        help="then measure every run's end-point flatness and add it to the report",
    )
    compare.set_defaults(handler=_compare)

    from valleys.bench.analysis.flatness_runs import add_flatness_parser
    from valleys.bench.analysis.landscape import FUNCTIONS
    from valleys.bench.analysis.landscape_runs import DEFAULT_OPTIMIZERS
    from valleys.commands.study import add_report_parser, add_study_parser

    add_study_parser(commands)
    add_report_parser(commands)
    add_flatness_parser(commands)

    bench_step = commands.add_parser(
        "bench-step",
        add_help=False,
        help="optimizer step time, state bytes and peak memory (benchmarks/step.py; --help there)",
    )
    # main() hands everything after "bench-step" to the benchmark's own parser; this entry makes
    # the command show in the help.
    bench_step.set_defaults(handler=_bench_step)

    landscape = commands.add_parser(
        "landscape",
        help="the paper's test functions: trajectories, flatness of the end points",
        description=(
            "Run optimizers on f1, f2 (paper Fig. 8), Rosenbrock, a cardioid valley, two wells and "
            "Rastrigin; print a table and write runs/landscape-<time>/ (Markdown, JSON, PNG). The "
            "lr of each base optimizer is the largest of a grid at which it stays in its first "
            "basin; its E version gets the same lr."
        ),
    )
    landscape.add_argument(
        "--functions",
        type=lambda text: [f.strip() for f in text.split(",") if f.strip()],
        default=list(FUNCTIONS),
        help=f"comma-separated (default: {','.join(FUNCTIONS)})",
    )
    landscape.add_argument(
        "--optimizers",
        type=lambda text: [o.strip() for o in text.split(",") if o.strip()],
        default=list(DEFAULT_OPTIMIZERS),
        help=f"comma-separated registry names (default: {','.join(DEFAULT_OPTIMIZERS)})",
    )
    landscape.add_argument(
        "--lr", type=float, help="one lr for every run (default: the rule above)"
    )
    landscape.add_argument(
        "--steps", type=positive_int, help="steps per run (default: per function)"
    )
    landscape.add_argument("--out", help="output directory (default: runs/landscape-<time>)")
    landscape.add_argument("--quiet", action="store_true", help="no progress lines")
    landscape.set_defaults(handler=_landscape)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``valleys`` command; return its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench-step"]:
        from valleys.bench.perf.step import main as bench_main

        return bench_main(arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    from valleys.bench.data import DatasetMissing
    from valleys.bench.run.checkpoint import CheckpointError

    # A kill (SIGTERM) stops a run the way Ctrl-C does: results and checkpoints are recorded and
    # worker processes are stopped instead of being left behind.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(
            "valleys: interrupted; finished results and the last checkpoint are kept",
            file=sys.stderr,
        )
        return _EXIT_INTERRUPTED
    except (ValueError, FileExistsError, FileNotFoundError, CheckpointError, DatasetMissing) as exc:
        print(f"valleys: error: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
