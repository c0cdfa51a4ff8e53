"""``valleys bench-step`` (also ``benchmarks/step.py``): the optimizer step benchmark.

The benchmark is :mod:`valleys.bench.perf.step`; this module holds its command line, which
``valleys`` hands everything after ``bench-step`` to, and prints its table. Its errors end as the
other commands' do (:func:`~valleys.commands._common.run_command`), from ``valleys`` and from
``benchmarks/step.py`` alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from valleys.commands._common import non_negative_int, positive_float, positive_int, run_command

__all__ = ["add_bench_step_parser", "build_parser", "main"]

_HELP = "optimizer step time, state bytes and peak memory (benchmarks/step.py; --help there)"


def add_bench_step_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench-step`` to the ``valleys`` subcommands' help.

    The entry only lists the command: ``valleys`` hands the arguments after ``bench-step`` to
    :func:`main`, whose parser is the one ``benchmarks/step.py`` has too.
    """
    return subparsers.add_parser("bench-step", add_help=False, help=_HELP)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's own argument parser."""
    from valleys.bench.perf import step

    parser = argparse.ArgumentParser(
        prog="valleys bench-step", description=(step.__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--layout", choices=sorted(step.LAYOUTS), default="25m")
    parser.add_argument(
        "--scale", type=positive_float, default=1.0, help="fraction of the layout's tensors"
    )
    parser.add_argument("--repeats", type=positive_int, default=15, help="timed steps per variant")
    parser.add_argument(
        "--warmup", type=non_negative_int, default=3, help="untimed steps per variant first"
    )
    parser.add_argument(
        "--variants",
        help="comma-separated names (default: all): " + ", ".join(v.name for v in step.VARIANTS),
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="parameter dtype"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 tensors, 3 repeats")
    parser.add_argument("--out", type=Path, required=True, help="JSON output path")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str] | None:
    """Refuse, as usage errors, what the argument types cannot; the chosen variants (None: all)."""
    import torch

    from valleys.bench.perf.step import VARIANTS

    names = args.variants.split(",") if args.variants else None
    unknown = set(names or ()) - {v.name for v in VARIANTS}
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark ``argv`` describes; write its JSON report and print its table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.repeats, args.warmup = min(args.scale, 0.02), 3, 1
    names = _check(parser, args)
    return run_command(lambda: _benchmark(args, names))


def _benchmark(args: argparse.Namespace, names: list[str] | None) -> int:
    import torch

    from valleys.bench.perf.step import markdown_table, run, write_report
    from valleys.bench.run.checkpoint import writable_file

    # Checked before the benchmark, which takes minutes, so that its report is not lost.
    writable_file(args.out)
    report = run(
        args.layout,
        args.scale,
        args.repeats,
        args.warmup,
        names,
        device=args.device,
        dtype=getattr(torch, args.dtype),
    )
    write_report(report, args.out)
    print(markdown_table(report))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0
