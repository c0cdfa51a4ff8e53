"""The ``valleys study`` and ``valleys report`` commands, as parsers the main command adds.

``valleys report`` serves both kinds of result folder: a study folder (``study.json``) gets the study
report of :mod:`valleys.bench.study.report`, a comparison folder (``compare.json``) is redrawn by
:func:`valleys.bench.compare.run.rerender` as before, so one ``report`` command covers both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from valleys.commands._argtypes import positive_int

__all__ = ["add_report_parser", "add_study_parser", "report_command", "study_command"]

_EXIT_ERROR = 1
_CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")


def add_study_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``study`` to the ``valleys`` subcommands; its handler is :func:`study_command`."""
    from valleys.bench.study.runner import describe_quick

    parser = subparsers.add_parser(
        "study",
        help="run a sweep or an equal-budget tuning study on Optuna (resumable, parallel)",
        description=(
            "Run the study a TOML or YAML file describes (see studies/): one Optuna study per "
            "optimizer and batch size, in a SQLite file under the study folder or in --storage. "
            "Rerunning resumes; several processes on the same storage share the work."
        ),
    )
    parser.add_argument("config", help="study configuration (.toml, .yaml or .yml)")
    parser.add_argument(
        "--jobs",
        type=positive_int,
        help="worker processes, each with cpu_count / jobs threads (default: 2 where there are 2 or "
        "more CPUs, as for valleys compare: two 1-thread runs beat one 2-thread run)",
    )
    parser.add_argument("--quick", action="store_true", help=describe_quick())
    parser.add_argument("--out", help="study folder (default: runs/study-<name>)")
    parser.add_argument(
        "--storage", help="database URL, e.g. postgresql://user@host/db (default: the config's)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(handler=study_command)
    return parser


def study_command(args: argparse.Namespace) -> int:
    """Run the study of ``args.config``; write its report when every planned trial is complete."""
    from valleys.bench.compare.run import default_jobs
    from valleys.bench.study.report import write_study_report
    from valleys.bench.study.runner import (
        StudyError,
        default_out_dir,
        load_study_config,
        redact_url,
        run_study,
        storage_url,
    )

    try:
        config = load_study_config(args.config)
        if args.quick:
            config = config.quick_version()
        out = Path(args.out) if args.out else default_out_dir(config)
        jobs = args.jobs or default_jobs()
        progress = run_study(config, out, jobs=jobs, storage=args.storage, quiet=args.quiet)
        print(f"study {config.name}: {progress.line()}")
        if progress.done < progress.total:
            again = f"valleys study {args.config}" + (" --quick" if args.quick else "")
            print(f"unfinished: run `{again}` again to retry and resume", file=sys.stderr)
            return _EXIT_ERROR
        url = storage_url(config, out, args.storage)
        report = write_study_report(url, config.name, out, shown_url=redact_url(url))
        print(f"report: {report}")
        return 0
    except (StudyError, ValueError) as exc:
        print(f"valleys: error: {exc}", file=sys.stderr)
        return _EXIT_ERROR


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report`` to the ``valleys`` subcommands; its handler is :func:`report_command`."""
    parser = subparsers.add_parser(
        "report",
        help="write the report of a study or a comparison from its stored results",
        description=(
            "STUDY is a study folder (runs/study-...), a study configuration file, or a "
            "comparison folder (runs/compare-...). A study's report (report.md with PNGs) is "
            "read from its Optuna storage and written into its folder; a comparison's is redrawn."
        ),
    )
    parser.add_argument("target", metavar="STUDY", help="study folder, study config, or comparison")
    parser.add_argument("--storage", help="database URL (default: the one the study recorded)")
    parser.add_argument("--quick", action="store_true", help="with a config file: its --quick run")
    parser.add_argument("--out", help="folder for a study's report (default: the study folder)")
    parser.set_defaults(handler=report_command)
    return parser


def report_command(args: argparse.Namespace) -> int:
    """Write the report of ``args.target`` (a study folder, a study config, or a comparison)."""
    from valleys.bench.compare.run import COMPARE_FILE, rerender
    from valleys.bench.study.report import study_location, write_study_report
    from valleys.bench.study.runner import (
        STUDY_FILE,
        StudyError,
        default_out_dir,
        load_study_config,
        redact_url,
    )

    target = Path(args.target)
    try:
        if not target.exists():
            raise FileNotFoundError(
                f"{target} does not exist; expected a study folder, a study config file or a "
                "comparison folder"
            )
        if (
            target.is_dir()
            and (target / COMPARE_FILE).is_file()
            and not (target / STUDY_FILE).is_file()
        ):
            report, table = rerender(target)
            print(table)
            print(f"\nreport: {report}")
            return 0
        if target.is_file() and target.suffix.lower() in _CONFIG_SUFFIXES:
            config = load_study_config(target)
            folder = default_out_dir(config.quick_version() if args.quick else config)
        else:
            folder = target
        url, name = study_location(folder, args.storage)
        report = write_study_report(url, name, args.out or folder, shown_url=redact_url(url))
        print(f"report: {report}")
        return 0
    except (StudyError, ValueError, FileNotFoundError) as exc:
        print(f"valleys: error: {exc}", file=sys.stderr)
        return _EXIT_ERROR
