"""The ``valleys`` command: its top-level parser, built from one module per command, and dispatch.

Each command module adds its sub-parser and does its own printing; here a command's handler runs
under :func:`~valleys.commands._common.run_command`: a SIGTERM is treated as Ctrl-C, and the
errors a user can act on end as one ``valleys: error`` line instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from valleys import __version__
from valleys.commands._common import run_command
from valleys.commands.bench_step import add_bench_step_parser
from valleys.commands.compare import add_compare_parser
from valleys.commands.flatness import add_flatness_parser
from valleys.commands.landscape import add_landscape_parser
from valleys.commands.report import add_report_parser
from valleys.commands.study import add_study_parser
from valleys.commands.train import add_train_parser

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``valleys`` command."""
    parser = argparse.ArgumentParser(
        prog="valleys",
        description="Train and compare optimizers (ALTO, Lamb, AdamW, SGD, ...) on real data.",
    )
    parser.add_argument("--version", action="version", version=f"valleys {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The order of the help's command list.
    for add in (
        add_train_parser,
        add_compare_parser,
        add_study_parser,
        add_report_parser,
        add_flatness_parser,
        add_bench_step_parser,
        add_landscape_parser,
    ):
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``valleys`` command; return its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench-step"]:
        # The benchmark keeps its own parser and error handling, shared with benchmarks/step.py.
        from valleys.commands.bench_step import main as bench_step

        return bench_step(arguments[1:])
    args = build_parser().parse_args(arguments)
    return run_command(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
