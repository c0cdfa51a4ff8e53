"""``valleys study``: batch-size sweeps, grids and equal-budget random tuning, run on Optuna.

A study configuration (TOML or YAML, see :func:`~valleys.bench.study.parse.parse_study_config`)
names a task, the optimizers with a search space each, the batch sizes, the seeds and the budget. It
becomes one Optuna study per (task, optimizer, batch size), named
``<name>/<task>/<optimizer>/bs<batch size>``, in a SQLite file (``<out>/study.db``) or in any
database URL, so that workers on many machines can share it (PostgreSQL:
``postgresql+psycopg://user@host/db`` with ``psycopg[binary]`` installed; SQLAlchemy 2.1 reads a
plain ``postgresql://`` the same way). ``--quick`` shrinks a study to a smoke test as
:func:`~valleys.bench.study.config.describe_quick` states.

**Trial allocation.** Every trial a study will ever run is *planned* before any runs: the planner
adds it to the storage as a ``WAITING`` trial whose parameters are fixed, and workers only ever take
``WAITING`` trials of the current plan; no worker creates a trial. A worker takes one by the storage's
atomic ``WAITING → RUNNING`` transition, which only one worker can win.

- ``grid``: one trial per grid point and seed.
- ``random``: exactly ``trials`` configurations per optimizer and batch size (an equal budget),
  the first ``trials`` points of Optuna's :class:`~optuna.samplers.QMCSampler` (scrambled Halton,
  seeded by ``sampler_seed``) in that optimizer's box, every seed of a configuration run inside one
  trial (its value is the mean over the seeds). Points are drawn by the planner rather than by a
  sampler at trial time because the sampler's counter of points lives in a study attribute that
  concurrent workers update without a lock (two could draw the same point), and because planning
  them makes the budget exact and visible before anything runs. The Halton sequence is a prefix
  sequence: raising ``trials`` later keeps the points already run.

Two planners racing on one storage may both add the same point; a trial is therefore only taken when
no lower-numbered trial with the same parameters is waiting, running or complete, so a duplicate is
never run. A failed point (an error, or retries used up) is planned again by the next run.

**Failures.** Each worker records a heartbeat for its trial from a thread; before taking work it
fails trials whose heartbeat is older than the grace period, and the storage's retry callback adds a
copy of each as a new ``WAITING`` trial. A run's directory is named by its parameters, not by its
trial, so the retry resumes the killed run from its last checkpoint. A run that diverges is a result,
not a failure: see :func:`~valleys.bench.study.config.worst_value`.
"""

from __future__ import annotations

import os
from pathlib import Path

from valleys.bench.run.checkpoint import write_json_atomic
from valleys.bench.run.metrics_log import require_tensorboard
from valleys.bench.run.pool import run_pool
from valleys.bench.study.config import DB_FILE, STUDY_FILE, StudyConfig
from valleys.bench.study.errors import StudyError
from valleys.bench.study.plan import StudyProgress, prepare, progress, study_storage
from valleys.bench.study.points import UnitPlan
from valleys.bench.study.storage import redact_url, sqlite_url
from valleys.bench.study.worker import work, work_in_process

__all__ = ["default_out_dir", "run_study", "storage_url"]


def default_out_dir(config: StudyConfig) -> Path:
    """Where a study's files go unless told otherwise: ``runs/study-<name>``."""
    return Path("runs") / f"study-{config.name}"


def storage_url(config: StudyConfig, folder: str | os.PathLike[str], storage: str | None) -> str:
    """The database a study uses: ``storage``, else the config's, else ``<folder>/study.db``."""
    return storage or config.storage or sqlite_url(Path(folder) / DB_FILE)


def run_study(
    config: StudyConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    jobs: int = 1,
    storage: str | None = None,
    quiet: bool = False,
    tensorboard: bool = False,
) -> StudyProgress:
    """Plan ``config`` into its storage, run the waiting trials with ``jobs`` workers, and return
    the progress once no trial is left waiting or running.

    Args:
        config: the study (``config.quick_version()`` for a smoke test).
        out: the study's folder: ``study.db`` (default storage), ``study.json`` and ``runs/``
            (default: :func:`default_out_dir`).
        jobs: worker processes (1: work in this process).
        storage: a database URL overriding ``config.storage``.
        quiet: no progress lines.
        tensorboard: every run also writes TensorBoard events (not part of the study's identity:
            a study may be resumed with or without them).

    Raises:
        StudyError: the storage cannot be reached, the study name is taken by other settings, or a
            worker process failed.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if tensorboard:
        # Before any trial is taken, rather than failing each.
        require_tensorboard()
    folder = Path(out) if out is not None else default_out_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    url = storage_url(config, folder, storage)
    rdb = study_storage(config, url)
    plans = prepare(config, rdb)
    _write_study_file(config, folder, url, plans)
    before = progress(rdb, plans)
    if not quiet:
        skipped = sum(plan.skipped_unstable for plan in plans)
        note = f"; {skipped} grid points outside E's stable region left out" if skipped else ""
        print(
            f"study {config.name}: {len(plans)} Optuna studies, {before.total} planned trials, "
            f"{before.done} already complete{note}; storage {redact_url(url)}; runs in "
            f"{folder / 'runs'}",
            flush=True,
        )
    if before.done < before.total:
        if jobs == 1:
            work(config, folder, url, quiet=quiet, tensorboard=tensorboard)
        else:
            _run_workers(config, folder, url, jobs, (quiet, tensorboard))
    return progress(rdb, plans)


def _write_study_file(config: StudyConfig, folder: Path, url: str, plans: list[UnitPlan]) -> None:
    """``study.json``: what a report needs to find the study (the URL without its password)."""
    write_json_atomic(
        folder / STUDY_FILE,
        {
            "name": config.name,
            "task": config.task,
            "kind": config.kind,
            "quick": config.quick,
            "storage": redact_url(url),
            "studies": [plan.unit.study_name for plan in plans],
        },
    )


def _run_workers(
    config: StudyConfig, folder: Path, url: str, jobs: int, flags: tuple[bool, bool]
) -> None:
    """``jobs`` worker processes sharing the plan, with :func:`work`'s (quiet, tensorboard)
    ``flags``; Ctrl-C lets each re-queue its trial first."""
    failures = run_pool(
        work_in_process,
        [(config, str(folder), url, *flags)] * jobs,
        jobs=jobs,
        name="valleys-study-worker",
        stop_on_failure=False,
    )
    if failures:
        codes = [failure.exitcode for failure in failures]
        raise StudyError(
            f"{len(failures)} of {jobs} workers failed (exit codes {codes}); their messages are "
            "above; run the study again to resume"
        )
