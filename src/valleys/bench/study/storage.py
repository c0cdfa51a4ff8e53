"""A study's Optuna storage: opening it (heartbeats, retries, SQLite locking), and its attributes.

Nothing here knows a study's configuration: this is the plumbing between the study and Optuna.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valleys.bench.study.errors import StudyError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage, RDBStorage

__all__ = [
    "META_ATTR",
    "RUN_KEY_ATTR",
    "cached",
    "heartbeat_ages",
    "open_storage",
    "quiet_optuna",
    "redact_url",
    "retry_callback",
    "sqlite_url",
    "study_id",
]

META_ATTR = "valleys"
"""The Optuna study attribute holding the facts a report needs (see ``StudyConfig.meta``)."""

RUN_KEY_ATTR = "run_key"
"""The trial attribute naming the folder of its runs."""


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The URL of the SQLite file at ``path``, made absolute so that spawned workers and later
    reports find the same file."""
    return f"sqlite:///{Path(path).resolve()}"


def redact_url(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password we could find
        return url


def retry_callback(max_retry: int) -> Any:
    """Optuna's callback that queues a copy of a failed trial, up to ``max_retry`` times."""
    from optuna import storages
    from optuna.exceptions import ExperimentalWarning

    # Optuna 4.9 renamed the callback; the old name still works but warns.
    cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", storages.RetryFailedTrialCallback)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return cls(max_retry=max_retry)


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = 0,
    create: bool = True,
) -> RDBStorage:
    """The study's Optuna storage, with heartbeats and the retry callback when
    ``heartbeat_interval`` is given (workers), without for readers; fails clearly.

    On SQLite every transaction starts with ``BEGIN IMMEDIATE``: Python's driver otherwise starts
    transactions only at the first write, so two workers could both read a trial as ``WAITING`` and
    both take it. PostgreSQL locks the row (``SELECT ... FOR UPDATE``) and needs nothing extra.
    A new SQLite file gets its tables from one process at a time (see :func:`_creation_lock`); a
    worker that loses the race to create a new server database's tables opens it again
    (:func:`_created_once`).

    Args:
        create: False for readers: a SQLite file that does not exist is an error, not created.

    Raises:
        StudyError: the URL is malformed, its driver is missing, the database cannot be reached,
            or (``create=False``) the SQLite file does not exist.
    """
    import optuna
    import sqlalchemy
    from optuna.storages import RDBStorage

    try:
        parsed = sqlalchemy.engine.make_url(url)
        dialect = parsed.get_backend_name()
    except Exception as exc:
        raise StudyError(f"invalid storage URL {redact_url(url)!r}: {exc}") from None
    database = parsed.database if dialect == "sqlite" and parsed.database != ":memory:" else None
    if database and not create and not Path(database).is_file():
        raise StudyError(f"no study database at {database}")
    heartbeat = _heartbeat_kwargs(heartbeat_interval, grace_period, max_retry)
    try:
        with warnings.catch_warnings(), _creation_lock(database):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = _created_once(
                lambda: RDBStorage(url, engine_kwargs=_engine_kwargs(dialect), **heartbeat)
            )
    except ImportError as exc:
        raise StudyError(
            f"cannot open storage {redact_url(url)}: the database driver is not installed ({exc}); "
            "for PostgreSQL: pip install 'psycopg[binary]'"
        ) from None
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise StudyError(
            f"cannot open storage {redact_url(url)}: {reason[0] if reason else type(exc).__name__}"
        ) from None
    if dialect == "sqlite":
        _begin_immediate(storage.engine)
    return storage


def _created_once(open_: Callable[[], RDBStorage], attempts: int = 5) -> RDBStorage:
    """``open_()``, again when it lost the race to create a new database's tables.

    A database server has no file to lock (:func:`_creation_lock`): two workers opening a new
    PostgreSQL database at once both find no tables, and the slower one's ``CREATE`` or schema
    stamp fails on the other's ("duplicate key value", "already exists"). Opened again, it finds the
    tables and the stamp and creates nothing.
    """
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(1, attempts):
        try:
            return open_()
        except (IntegrityError, ProgrammingError):
            time.sleep(0.1 * attempt)
    return open_()


@contextlib.contextmanager
def _creation_lock(database: str | None) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.lock`` (a SQLite file), or do nothing.

    Optuna creates a storage's tables and stamps its schema version without a lock: two processes
    opening a new file at the same moment race, and one fails ("UNIQUE constraint failed:
    alembic_version.version_num", "table ... already exists"). Held while the storage is opened,
    the lock makes the second process find the tables complete. Windows has no ``flock``; there the
    race stays (studies share storage through a database server rather than SQLite anyway).
    """
    if database is None or sys.platform == "win32":
        yield
        return
    import fcntl

    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _engine_kwargs(dialect: str) -> dict[str, Any]:
    if dialect == "sqlite":
        # Workers queue for the write lock rather than fail after the driver's default 5 s.
        return {"connect_args": {"timeout": 120}}
    if dialect == "postgresql":
        return {"connect_args": {"connect_timeout": 10}}
    return {}


def _heartbeat_kwargs(
    heartbeat_interval: int | None, grace_period: int | None, max_retry: int
) -> dict[str, Any]:
    from optuna.storages import RDBStorage

    if heartbeat_interval is None:
        return {}
    # Optuna 4.9 renamed the argument along with the callback.
    callback_arg = (
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters
        else "failed_trial_callback"
    )
    return {
        "heartbeat_interval": heartbeat_interval,
        "grace_period": grace_period,
        callback_arg: retry_callback(max_retry),
    }


def _begin_immediate(engine: Any) -> None:
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below.
        dbapi_connection.isolation_level = None

    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    # Connections opened while the storage set its tables up predate the listeners.
    engine.dispose()


def cached(storage: RDBStorage) -> BaseStorage:
    """The storage wrapped as Optuna's studies wrap it, so that workers and studies share one
    view of the trials (a study keeps a cache that would not know of trials taken around it)."""
    from optuna.storages import get_storage

    return get_storage(storage)


def heartbeat_ages(storage: RDBStorage, trial_ids: Collection[int]) -> dict[int, float]:
    """Seconds since each trial's last heartbeat, by the database's clock as Optuna measures
    staleness; trials without a heartbeat are left out. Optuna has no public reader for them."""
    import sqlalchemy

    table = sqlalchemy.table(
        "trial_heartbeats",
        sqlalchemy.column("trial_id", sqlalchemy.Integer),
        sqlalchemy.column("heartbeat", sqlalchemy.DateTime),
    )
    query = sqlalchemy.select(table.c.trial_id, table.c.heartbeat).where(
        table.c.trial_id.in_(list(trial_ids))
    )
    with storage.engine.connect() as connection:
        now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        rows = connection.execute(query).all()
    # PostgreSQL answers with time zones, SQLite without (Optuna drops them too).
    now = now.replace(tzinfo=None)
    return {trial: (now - beat.replace(tzinfo=None)).total_seconds() for trial, beat in rows}


def study_id(storage: BaseStorage, study_name: str) -> int:
    """The storage's id of the Optuna study ``study_name``."""
    return storage.get_study_id_from_name(study_name)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines (one per trial) would duplicate the study's progress lines."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
