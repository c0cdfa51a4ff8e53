"""``valleys flatness RUN...``: how flat is the minimum each finished run ended in?

The measurement is :func:`valleys.bench.analysis.flatness_runs.measure_run`; this module prints it,
as a table for this command and as one line per run after ``valleys train|compare --flatness``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from valleys.commands._common import int_at_least, positive_float, positive_int

__all__ = ["add_flatness_parser", "flatness_command", "print_flatness"]


def add_flatness_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``flatness`` to the ``valleys`` subcommands; its handler is :func:`flatness_command`."""
    from valleys.bench.analysis.flatness_runs import FlatnessSettings

    defaults = FlatnessSettings()
    parser = subparsers.add_parser(
        "flatness",
        help="flatness of finished runs: top Hessian eigenvalue, trace, loss profile, distance",
        description=(
            "Measure each RUN's end point on a fixed training subset (model in eval mode): the "
            "dominant Hessian eigenvalue (power iteration; reported only if it converged), the "
            "Hutchinson trace, the loss along a filter-normalised direction and ||theta_T - "
            "theta_0||. Writes flatness.json into each run and prints a table."
        ),
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories of valleys train")
    parser.add_argument(
        "--examples", type=positive_int, default=defaults.examples, help="training subset size"
    )
    parser.add_argument("--power-iters", type=positive_int, default=defaults.power_iters)
    parser.add_argument(
        "--tol", type=positive_float, default=defaults.tol, help="power iteration tolerance"
    )
    # Hutchinson's standard error needs two samples.
    parser.add_argument("--trace-samples", type=int_at_least(2), default=defaults.trace_samples)
    parser.add_argument("--profile-points", type=positive_int, default=defaults.profile_points)
    parser.add_argument("--lanczos-steps", type=positive_int, default=defaults.lanczos_steps)
    parser.add_argument("--plot", help="PNG of the loss profiles of all runs")
    parser.set_defaults(handler=flatness_command)
    return parser


def _cell(value: float | None, digits: int = 4) -> str:
    return "not converged" if value is None else f"{value:.{digits}g}"


def flatness_command(args: argparse.Namespace) -> int:
    """Measure every run of ``args.runs``; print a table; plot the loss profiles if asked."""
    from valleys.bench.analysis.flatness_runs import (
        FlatnessSettings,
        check_run,
        measure_run,
        plot_profiles,
    )
    from valleys.bench.run.checkpoint import writable_file

    # Every run and the plot's folder are checked first: measuring takes minutes, writing a moment.
    for run in args.runs:
        check_run(run)
    if args.plot:
        writable_file(args.plot)

    settings = FlatnessSettings(
        examples=args.examples,
        power_iters=args.power_iters,
        tol=args.tol,
        trace_samples=args.trace_samples,
        profile_points=args.profile_points,
        lanczos_steps=args.lanczos_steps,
    )
    results = [measure_run(run, settings) for run in args.runs]
    print(
        "| optimizer | seed | batch | top eigenvalue | Lanczos min … max | trace (± se) | distance "
        "| loss | run |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        trace = f"{r['hessian_trace']:.4g} ± {r['hessian_trace_stderr']:.2g}"
        extremes = f"{_cell(r['lanczos_min_eigenvalue'])} … {_cell(r['lanczos_max_eigenvalue'])}"
        print(
            f"| {r['optimizer']} | {r['seed']} | {r['batch_size']} | {_cell(r['top_eigenvalue'])} | "
            f"{extremes} | {trace} | {r['distance_travelled']:.4g} | "
            f"{r['train_loss_on_subset']:.4g} | {r['run']} |"
        )
    if args.plot:
        print(f"\nprofiles: {plot_profiles(results, Path(args.plot))}")
    return 0


def print_flatness(runs: Sequence[Path]) -> None:
    """Measure each finished run and print one line of its flatness (``--flatness`` of train and
    compare)."""
    from valleys.bench.analysis.flatness_runs import measure_run

    for run in runs:
        f = measure_run(run)
        top = f"{f['top_eigenvalue']:.4g}" if f["top_eigenvalue"] is not None else "not converged"
        print(
            f"flatness of {run}: top Hessian eigenvalue {top}, trace {f['hessian_trace']:.4g} "
            f"± {f['hessian_trace_stderr']:.2g}, distance travelled {f['distance_travelled']:.4g}"
        )
