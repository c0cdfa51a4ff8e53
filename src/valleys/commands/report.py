"""``valleys report STUDY``: the report of a study or of a comparison, from its stored results.

``valleys report`` serves both kinds of result folder: a study folder (``study.json``) gets the study
report of :mod:`valleys.bench.study.report`, a comparison folder (``compare.json``) is redrawn by
:func:`valleys.bench.compare.run.rerender` as before, so one ``report`` command covers both.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from valleys.commands._common import fail

__all__ = ["add_report_parser", "report_command"]

_CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")


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
    from valleys.bench.study.config import STUDY_FILE
    from valleys.bench.study.errors import StudyError
    from valleys.bench.study.parse import load_study_config
    from valleys.bench.study.report import write_study_report
    from valleys.bench.study.results import study_location
    from valleys.bench.study.runner import default_out_dir
    from valleys.bench.study.storage import redact_url

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
        return fail(exc)
