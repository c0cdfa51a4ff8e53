"""``valleys compare``: optimizers on one task, each tuned on an lr grid, as a table and a report.

The comparison itself is :func:`valleys.bench.compare.run.run_compare`; this module reads the
command line and prints the table, the report's path and, when interrupted, how to resume.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valleys.commands._common import optimizer_list, positive_int, seed_list
from valleys.commands._training import add_training_options, given_options
from valleys.commands.flatness import print_flatness

if TYPE_CHECKING:
    from valleys.bench.compare.run import CompareConfig

__all__ = ["add_compare_parser", "compare_command"]

_OWN_OPTIONS = ("optimizers", "seeds", "lrs", "lr_grid", "out")
"""The options of a comparison besides the training options; a resumed one takes none."""


def _lr_list(text: str) -> tuple[float, ...]:
    from valleys.bench.compare.run import parse_floats

    try:
        return parse_floats(text, "--lrs")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_compare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``compare`` to the ``valleys`` subcommands; its handler is :func:`compare_command`."""
    parser = subparsers.add_parser(
        "compare",
        help="compare optimizers, each tuned on an lr grid (the main job)",
        description=(
            "With no options: ALTO vs Lamb, AdamW and SGD at batch 8192 on fashion-mnist (MLP), "
            "3 learning rates each, 20 epochs; prints a table and writes "
            "runs/compare-<time>/report.md with PNG curves."
        ),
    )
    add_training_options(parser, single_run=False)
    parser.add_argument(
        "--optimizers", type=optimizer_list, help="comma-separated (default: alto,lamb,adamw,sgd)"
    )
    parser.add_argument("--seeds", type=seed_list, help="comma-separated seeds (default: 0)")
    parser.add_argument(
        "--lrs", type=_lr_list, help="one lr grid for every optimizer without its own --lr-grid"
    )
    parser.add_argument(
        "--lr-grid",
        action="append",
        metavar="NAME=LR,LR,...",
        help="lr grid of one compared optimizer, in place of --lrs or its default grid; "
        "repeatable (all grids must have the same size)",
    )
    parser.add_argument(
        "--jobs",
        type=positive_int,
        help="runs at a time, each in its own process (default: 2 with 2+ CPUs)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", help="comparison directory (default: runs/compare-<time>)")
    where.add_argument("--resume", metavar="DIR", help="continue the comparison in DIR")
    parser.add_argument(
        "--flatness",
        action="store_true",
        help="then measure every run's end-point flatness and add it to the report",
    )
    parser.set_defaults(handler=compare_command)
    return parser


def _new_comparison(args: argparse.Namespace, given: dict[str, Any]) -> tuple[CompareConfig, Path]:
    from valleys.bench.compare.run import CompareConfig, default_out_dir, parse_lr_grids
    from valleys.bench.run.launch import apply_options

    defaults = CompareConfig()
    optimizers = args.optimizers or defaults.optimizers
    grids = parse_lr_grids(args.lr_grid or [])
    if args.lrs is not None:
        # Grids of optimizers not compared stay, so that the configuration refuses them.
        grids = {**dict.fromkeys(optimizers, args.lrs), **grids}
    config = CompareConfig(
        base=apply_options(defaults.base, given),
        optimizers=optimizers,
        seeds=args.seeds or defaults.seeds,
        lr_grids=grids,
    )
    return config, Path(args.out) if args.out else default_out_dir()


def compare_command(args: argparse.Namespace) -> int:
    """Run (or resume) the comparison ``args`` describe; print its table and report path."""
    from valleys.bench.compare.run import load_compare_config, rerender, run_compare

    given = given_options(args)
    if args.resume is not None:
        chosen = (k for k in _OWN_OPTIONS if getattr(args, k) is not None)
        extra = sorted([*given, *chosen])
        if extra:
            raise ValueError(
                "--resume continues the comparison stored in its directory with that "
                f"configuration; drop {', '.join('--' + k.replace('_', '-') for k in extra)}"
            )
        out = Path(args.resume)
        config = load_compare_config(out)
    else:
        config, out = _new_comparison(args, given)
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
        print_flatness(
            [Path(r.out_dir) for r in result.results if r.status == "completed" and r.out_dir]
        )
        report, _ = rerender(out)
    print(f"\nreport: {report} ({result.wall_seconds:.0f} s)")
    return 0
