"""``valleys study CONFIG``: a sweep or an equal-budget tuning study on Optuna.

The study is :func:`valleys.bench.study.runner.run_study`; this module reads the command line,
prints the study's progress line and writes its report once every planned trial is complete. A study
left unfinished (failed trials, or interrupted) ends with the exact command that resumes it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from valleys.commands._common import EXIT_ERROR, fail, positive_int
from valleys.commands._training import add_tensorboard_option

__all__ = ["add_study_parser", "study_command"]


def add_study_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``study`` to the ``valleys`` subcommands; its handler is :func:`study_command`."""
    from valleys.bench.study.config import describe_quick

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
    add_tensorboard_option(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(handler=study_command)
    return parser


def study_command(args: argparse.Namespace) -> int:
    """Run the study of ``args.config``; write its report when every planned trial is complete."""
    from valleys.bench.run.pool import default_jobs
    from valleys.bench.study.errors import StudyError
    from valleys.bench.study.parse import load_study_config
    from valleys.bench.study.report import write_study_report
    from valleys.bench.study.runner import default_out_dir, run_study, storage_url
    from valleys.bench.study.storage import redact_url

    try:
        config = load_study_config(args.config)
        if args.quick:
            config = config.quick_version()
        out = Path(args.out) if args.out else default_out_dir(config)
        jobs = args.jobs or default_jobs()
        again = _rerun_command(args, out, jobs)
        try:
            progress = run_study(
                config,
                out,
                jobs=jobs,
                storage=args.storage,
                quiet=args.quiet,
                tensorboard=bool(args.tensorboard),
            )
        except KeyboardInterrupt:
            print(f"resume with: {again}", file=sys.stderr)
            raise
        print(f"study {config.name}: {progress.line()}")
        if progress.done < progress.total:
            print(f"unfinished: run `{again}` to retry and resume", file=sys.stderr)
            return EXIT_ERROR
        url = storage_url(config, out, args.storage)
        report = write_study_report(url, config.name, out, shown_url=redact_url(url))
        print(f"report: {report}")
        return 0
    except (StudyError, ValueError) as exc:
        return fail(exc)


def _rerun_command(args: argparse.Namespace, out: Path, jobs: int) -> str:
    """The command that resumes this study: same config, folder, storage (password hidden),
    workers and options, so that it neither starts a fresh study elsewhere nor reruns trials."""
    from valleys.bench.study.storage import redact_url

    words = ["valleys", "study", args.config, "--out", str(out), "--jobs", str(jobs)]
    if args.storage:
        words += ["--storage", redact_url(args.storage)]
    flags = (("--quick", args.quick), ("--quiet", args.quiet), ("--tensorboard", args.tensorboard))
    words += [flag for flag, on in flags if on]
    return shlex.join(words)
