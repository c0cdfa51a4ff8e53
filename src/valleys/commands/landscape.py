"""``valleys landscape``: the paper's test functions, with each optimizer's trajectory.

The runs and the report files are :mod:`valleys.bench.analysis.landscape_runs`; this module reads
the command line, shows progress on stderr and prints the table and the report's path.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from valleys.commands._common import name_list, positive_float, positive_int

__all__ = ["add_landscape_parser", "landscape_command"]


def add_landscape_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``landscape`` to the ``valleys`` subcommands; its handler is :func:`landscape_command`."""
    from valleys.bench.analysis.landscape import FUNCTIONS
    from valleys.bench.analysis.landscape_runs import DEFAULT_OPTIMIZERS

    parser = subparsers.add_parser(
        "landscape",
        help="the paper's test functions: trajectories, flatness of the end points",
        description=(
            "Run optimizers on f1, f2 (paper Fig. 8), Rosenbrock, a cardioid valley, two wells and "
            "Rastrigin; print a table and write runs/landscape-<time>/ (Markdown, JSON, PNG). The "
            "lr of each base optimizer is the largest of a grid at which it stays in its first "
            "basin; its E version gets the same lr."
        ),
    )
    parser.add_argument(
        "--functions",
        type=name_list,
        default=list(FUNCTIONS),
        help=f"comma-separated (default: {','.join(FUNCTIONS)})",
    )
    parser.add_argument(
        "--optimizers",
        type=name_list,
        default=list(DEFAULT_OPTIMIZERS),
        help=f"comma-separated registry names (default: {','.join(DEFAULT_OPTIMIZERS)})",
    )
    parser.add_argument(
        "--lr", type=positive_float, help="one lr for every run (default: the rule above)"
    )
    parser.add_argument("--steps", type=positive_int, help="steps per run (default: per function)")
    parser.add_argument("--out", help="output directory (default: runs/landscape-<time>)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(handler=landscape_command)
    return parser


def landscape_command(args: argparse.Namespace) -> int:
    """Run the chosen optimizers on the chosen functions; print the table; write the report."""
    from valleys.bench.analysis.landscape_runs import markdown_table, run_landscapes, write_report
    from valleys.bench.run.checkpoint import writable_dir

    out = Path(args.out) if args.out else Path("runs") / f"landscape-{datetime.now():%Y%m%d-%H%M%S}"
    # Checked before the runs, so that a folder that cannot be written fails at once.
    writable_dir(out)
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
