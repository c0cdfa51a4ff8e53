"""One pool of worker processes for the harness: a comparison's runs and a study's workers.

Workers are spawned, not forked: forking a process whose OpenMP threads already ran is not safe.
They share the CPUs (:func:`threads_per_worker`) and leave Ctrl-C to the parent. The terminal sends
SIGINT to the whole process group, and a worker acting on it by itself could die while the parent
waits for its answer; the parent instead stops the pool by sending each worker SIGTERM, which a
worker takes as :class:`KeyboardInterrupt`, so that the item in progress cleans up (a run stores
itself as interrupted, a study trial is failed and queued again) before the worker exits. A worker
whose parent ends, however it ends (``kill -9`` included), interrupts itself the same way: an
orphan would otherwise work on, alongside a rerun, on the same run folders.

Each worker has its own pipe to the parent: the parent hands it one item at a time and it answers
with the result or the exception its work raised. A worker that ends without answering (killed,
out of memory) closes its end, so the parent learns of it at once instead of waiting forever.

Every worker's set-up happens in :func:`_set_up_worker`, and every stop goes through
:meth:`_Pool.stop`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Generic, TypeVar

__all__ = [
    "WorkerFailed",
    "WorkerFailure",
    "default_jobs",
    "run_pool",
    "threads_per_worker",
]

Item = TypeVar("Item")
Result = TypeVar("Result")

_EXIT_INTERRUPTED = 128 + signal.SIGTERM

_STOP_SECONDS = 60.0
"""How long a stopped worker may take to clean up its item (a study trial waits for SQLite's write
lock) before it is killed; a killed study trial is retried once its heartbeat goes stale."""


def default_jobs() -> int:
    """Two workers where there are two or more CPUs, else one.

    Measured on a 2-core machine shared with other work: a run with 2 threads slowed down 4-8×
    whenever another process took a core (its threads wait for each other at every operation),
    while single-threaded runs kept their speed; two of them side by side also use both cores
    when the machine is idle.
    """
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def threads_per_worker(jobs: int) -> int:
    """Torch threads of each of ``jobs`` workers: the cores shared out, at least one each.

    All workers using every core would fight over them instead.
    """
    return max(1, (os.cpu_count() or 1) // jobs)


@dataclass(frozen=True)
class WorkerFailure:
    """A worker that ended abnormally: its name, exit code, and the exception its work raised."""

    name: str
    exitcode: int | None
    error: BaseException | None = None


class WorkerFailed(RuntimeError):
    """A worker ended abnormally without an exception to show for it (killed, out of memory)."""


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, shown as the cause of its re-raise."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0])


def run_pool(
    work: Callable[[Item], Result],
    items: Sequence[Item],
    *,
    jobs: int,
    on_result: Callable[[int, Result], None] | None = None,
    name: str = "valleys-worker",
    stop_on_failure: bool = True,
) -> list[WorkerFailure]:
    """Run ``work`` on every item in ``jobs`` spawned workers, one item at a time per worker.

    Args:
        work: a module-level function (a worker imports it by name); runs with SIGTERM raising
            :class:`KeyboardInterrupt` and SIGINT ignored.
        items: picklable arguments, handed out in order to whichever worker is free.
        jobs: worker processes, each with :func:`threads_per_worker` torch threads.
        on_result: called in this process with ``(index of the item, result)`` as results arrive.
        name: prefix of the workers' process names.
        stop_on_failure: on the first failed worker, stop the others and raise (the exception
            its work raised, or :class:`WorkerFailed`); otherwise let them go on (a failed
            worker's item is not handed to another) and return the failures.

    Raises:
        KeyboardInterrupt: after every worker has stopped.
    """
    pool = _Pool(work, jobs, name)
    try:
        pool.start()
        return pool.run(iter(enumerate(items)), on_result, stop_on_failure)
    except BaseException:
        pool.stop()
        raise
    finally:
        pool.join()


class _Pool(Generic[Item, Result]):
    """The workers of one :func:`run_pool` call, keyed by the parent's end of their pipes."""

    def __init__(self, work: Callable[[Item], Result], jobs: int, name: str) -> None:
        self._work = work
        self._jobs = jobs
        self._name = name
        self._workers: dict[Connection, BaseProcess] = {}

    def start(self) -> None:
        """Start the workers; each is in :attr:`_workers` before it starts, so a stop reaches it
        even when an interrupt arrives while the others are starting."""
        context = multiprocessing.get_context("spawn")
        threads = threads_per_worker(self._jobs)
        for index in range(self._jobs):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_serve, args=(self._work, theirs, threads), name=f"{self._name}-{index}"
            )
            self._workers[ours] = process
            process.start()
            # Our copy of the worker's end would keep the pipe open after the worker died.
            theirs.close()

    def run(
        self,
        items: Iterator[tuple[int, Item]],
        on_result: Callable[[int, Result], None] | None,
        stop_on_failure: bool,
    ) -> list[WorkerFailure]:
        failures: list[WorkerFailure] = []
        errors: dict[Connection, BaseException] = {}
        for conn in self._workers:
            _hand_out(conn, items)
        busy = set(self._workers)
        while busy:
            for conn in wait(list(busy)):
                assert isinstance(conn, Connection)
                message = _receive(conn)
                if message is None:
                    busy.discard(conn)
                    failure = self._ended(conn, errors.pop(conn, None))
                    if failure is not None and stop_on_failure:
                        raise _failure_error(failure)
                    if failure is not None:
                        failures.append(failure)
                    continue
                index, ok, payload, remote = message
                if ok:
                    if on_result is not None:
                        on_result(index, payload)
                    _hand_out(conn, items)
                    continue
                payload.__cause__ = _RemoteTraceback(remote)
                if not stop_on_failure:
                    # Nobody else will show it: print it as an unhandled exception would be.
                    print(f"{self._workers[conn].name}: {remote}", file=sys.stderr, flush=True)
                errors[conn] = payload
        return failures

    def _ended(self, conn: Connection, error: BaseException | None) -> WorkerFailure | None:
        process = self._workers[conn]
        process.join()
        if process.exitcode == 0 and error is None:
            return None
        return WorkerFailure(process.name, process.exitcode, error)

    def stop(self) -> None:
        """Interrupt every worker still running: each cleans up its item, then exits; one that
        is still running after :data:`_STOP_SECONDS` is killed."""
        started = [p for p in self._workers.values() if p.pid is not None and p.is_alive()]
        for process in started:
            process.terminate()
        deadline = time.monotonic() + _STOP_SECONDS
        for process in started:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()

    def join(self) -> None:
        """Wait for every started worker to end and close the pipes."""
        for conn, process in self._workers.items():
            if process.pid is not None:
                process.join()
            conn.close()


def _failure_error(failure: WorkerFailure) -> BaseException:
    if failure.error is not None:
        return failure.error
    return WorkerFailed(f"worker {failure.name} ended with exit code {failure.exitcode}")


def _receive(conn: Connection) -> tuple[int, bool, Any, str | None] | None:
    """A worker's next answer, or None once it has ended (its end of the pipe closed)."""
    try:
        return conn.recv()
    except (EOFError, ConnectionResetError):
        return None


def _hand_out(conn: Connection, items: Iterator[tuple[int, Any]]) -> None:
    """Send the worker its next item, or None (no more work) when there is none."""
    # A worker that is gone cannot take it; reading its end reports that.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.send(next(items, None))


def _interrupt(signum: int, frame: object) -> None:
    # The parent's stop and its death can both signal: a second interrupt would cut short the
    # clean-up the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _watch_parent(parent: BaseProcess) -> None:
    """Interrupt this worker as the parent's SIGTERM would once the parent has ended."""
    parent.join()
    os.kill(os.getpid(), signal.SIGTERM)


def _set_up_worker(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    # A spawned worker holds the read end of a pipe whose write end only the parent holds, so the
    # parent's end (even by SIGKILL) wakes this thread at once, on every platform. Linux's
    # PR_SET_PDEATHSIG would add nothing: its signal ends in the same handler as this one's.
    parent = multiprocessing.parent_process()
    if parent is not None:
        name = "valleys-parent-watch"
        threading.Thread(target=_watch_parent, args=(parent,), name=name, daemon=True).start()
    import torch

    torch.set_num_threads(threads)


def _serve(work: Callable[[Any], Any], conn: Connection, threads: int) -> None:
    """A worker's body: run the items the parent sends until it sends None."""
    try:
        _set_up_worker(threads)
        while (task := conn.recv()) is not None:
            index, item = task
            try:
                result = work(item)
            except Exception as exc:
                conn.send((index, False, _picklable(exc), traceback.format_exc()))
                sys.exit(1)
            conn.send((index, True, result, None))
    except KeyboardInterrupt:
        sys.exit(_EXIT_INTERRUPTED)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the parent is gone: nobody is left to work for, or to tell


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
