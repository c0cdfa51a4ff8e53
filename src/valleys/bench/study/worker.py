"""A study's worker: take a planned trial, run its seeds, record the result; again until done.

A worker takes a ``WAITING`` trial by the storage's atomic ``WAITING → RUNNING`` transition, which
only one worker can win, and records a heartbeat for it from a thread while it runs. Before taking
work it fails trials whose heartbeat is older than the grace period; the storage's retry callback
adds a copy of each as a new ``WAITING`` trial, whose runs resume from their checkpoints.
"""

from __future__ import annotations

import math
import socket
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valleys.bench.study.config import StudyConfig, worst_value
from valleys.bench.study.errors import StudyConfigError, StudyError
from valleys.bench.study.plan import progress, study_storage, trial_key
from valleys.bench.study.points import StudyUnit, UnitPlan
from valleys.bench.study.spaces import PARAMETERS, Range
from valleys.bench.study.storage import (
    RUN_KEY_ATTR,
    cached,
    heartbeat_ages,
    quiet_optuna,
    retry_callback,
    study_id,
)

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.trial import FrozenTrial, Trial

    from valleys.bench.run.config import RunResult
    from valleys.bench.tasks import Task

__all__ = ["work", "work_in_process"]


class _Heartbeat:
    """Records the trial's heartbeat now and then every ``interval`` seconds from a thread."""

    def __init__(self, storage: BaseStorage, trial_id: int, interval: float) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="valleys-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as exc:  # a dropped connection: try again at the next beat
                print(f"valleys study: heartbeat not recorded ({exc})", file=sys.stderr)


def _runnable(
    trials: Sequence[FrozenTrial], planned: frozenset[tuple[tuple[str, float], ...]]
) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """The ``WAITING`` trials of the plan a worker may take, and the planned ones running.

    A waiting trial is left alone when a lower-numbered trial with the same point is waiting,
    running or complete (a duplicate from racing planners, never run) or when its point is not in
    this plan (planned by an older configuration).
    """
    from optuna.trial import TrialState

    claimed = set()
    runnable: list[FrozenTrial] = []
    running: list[FrozenTrial] = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state == TrialState.FAIL:
            continue
        key = trial_key(trial)
        first = key not in claimed
        claimed.add(key)
        if key not in planned:
            continue
        if trial.state == TrialState.RUNNING:
            running.append(trial)
        if trial.state == TrialState.WAITING and first:
            runnable.append(trial)
    return runnable, running


def _take(storage: BaseStorage, study: int, candidates: Sequence[FrozenTrial]) -> int | None:
    """Atomically move the first candidate still ``WAITING`` to ``RUNNING``; return its id.

    The candidates were read a moment ago: another worker may have taken one since, or even
    finished it. Optuna answers False for a trial now ``RUNNING`` but raises for a finished one;
    both mean "taken", so the next candidate is tried.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for trial in candidates:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study, trial.number)
        try:
            taken = storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        except UpdateFinishedTrialError:
            continue
        if taken:
            # Before anything else: a trial without any heartbeat is never seen as stale.
            storage.record_heartbeat(trial_id)
            return trial_id
    return None


def _load_task(config: StudyConfig) -> Task:
    """The study's task, refused if a batch size exceeds its training set."""
    from valleys.bench.tasks import build_task

    task = build_task(config.task, config.task_options)
    too_big = [batch for batch in config.batch_sizes if batch > len(task.train)]
    if too_big:
        raise StudyConfigError(
            f"batch_sizes {too_big} exceed the {len(task.train)} training examples of "
            f"{config.task!r}"
        )
    return task


def work(
    config: StudyConfig, out: Path, url: str, *, quiet: bool, tensorboard: bool = False
) -> int:
    """Take and run planned trials until none is waiting or running; return how many ran (each
    run also writing TensorBoard events with ``tensorboard``)."""
    plans = config.plan()
    # The data is loaded before any trial is taken, so a missing data set fails no trial.
    rdb = study_storage(config, url)
    worker = _Worker(config, out, rdb, plans, _load_task(config), quiet, tensorboard)
    ran = 0
    poll = min(config.heartbeat_interval, 5)
    shown: frozenset[int] = frozenset()
    while True:
        taken, held = worker.take()
        if taken is not None:
            worker.run_trial(*taken)
            ran += 1
            continue
        if not held:
            return ran
        # Other workers are running the rest; wait in case one dies and its trial comes back.
        shown = worker.show_wait(held, shown)
        time.sleep(poll)


def work_in_process(job: tuple[StudyConfig, str, str, bool, bool]) -> None:
    """:func:`work` in a worker process of :func:`~valleys.bench.run.pool.run_pool`: the errors
    that stop a study are printed as one line and end the worker with exit code 1."""
    from valleys.bench.data import DatasetMissing
    from valleys.bench.run.checkpoint import CheckpointError

    config, out, url, quiet, tensorboard = job
    try:
        work(config, Path(out), url, quiet=quiet, tensorboard=tensorboard)
    except (StudyError, ValueError, CheckpointError, DatasetMissing) as exc:
        print(f"valleys study: worker error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


class _Worker:
    """What one worker needs from trial to trial: its storage, plan, task and Optuna studies."""

    def __init__(
        self,
        config: StudyConfig,
        out: Path,
        rdb: RDBStorage,
        plans: Sequence[UnitPlan],
        task: Task,
        quiet: bool,
        tensorboard: bool,
    ) -> None:
        import optuna

        self.config = config
        self.out = out
        self.rdb = rdb
        storage = self.storage = cached(rdb)
        self.plans = plans
        self.task = task
        self.quiet = quiet
        self.tensorboard = tensorboard
        with quiet_optuna():
            self.studies = {
                plan.unit: optuna.load_study(
                    study_name=plan.unit.study_name,
                    storage=storage,
                    sampler=optuna.samplers.RandomSampler(seed=0),
                )
                for plan in plans
            }
        self.study_ids = {plan.unit: study_id(storage, plan.unit.study_name) for plan in plans}

    def take(self) -> tuple[tuple[UnitPlan, int] | None, list[tuple[UnitPlan, FrozenTrial]]]:
        """A trial this worker now holds (its unit and id) if any, and the planned trials other
        workers hold (none: no work remains)."""
        import optuna
        from optuna.storages import fail_stale_trials

        held = []
        for plan in self.plans:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(self.studies[plan.unit])
            trials = self.storage.get_all_trials(self.study_ids[plan.unit], deepcopy=False)
            candidates, running = _runnable(trials, plan.keys)
            trial_id = _take(self.storage, self.study_ids[plan.unit], candidates)
            if trial_id is not None:
                return (plan, trial_id), held
            # Candidates not taken were just taken by others.
            held += [(plan, trial) for trial in (*running, *candidates)]
        return None, held

    def show_wait(
        self, held: Sequence[tuple[UnitPlan, FrozenTrial]], shown: frozenset[int]
    ) -> frozenset[int]:
        """Say which trials this worker waits for and when they would be retried here, once per
        set of trials (``shown``, the last one said); return the set now said."""
        ids = {
            self.storage.get_trial_id_from_study_id_trial_number(
                self.study_ids[plan.unit], trial.number
            ): f"#{trial.number} of {plan.unit.study_name}"
            for plan, trial in held
        }
        if self.quiet or frozenset(ids) == shown:
            return frozenset(ids)
        # The longest silent trial goes stale first.
        silent = max(heartbeat_ages(self.rdb, ids).values(), default=0.0)
        retry = datetime.now() + timedelta(seconds=max(0.0, self.config.grace_period - silent))
        print(
            f"valleys study: waiting for trial(s) {', '.join(ids.values())}, held by other "
            f"workers (last heartbeat {silent:.0f} s ago); if one's worker is gone, it is retried "
            f"here from {retry:%H:%M:%S} ({self.config.grace_period} s without a heartbeat)",
            flush=True,
        )
        return frozenset(ids)

    def run_trial(self, plan: UnitPlan, trial_id: int) -> None:
        """Run every seed of the trial, then complete it, or fail it on an error."""
        from optuna.trial import Trial, TrialState

        unit, study = plan.unit, self.studies[plan.unit]
        started = time.perf_counter()
        trial = Trial(study, trial_id)
        with _Heartbeat(self.storage, trial_id, self.config.heartbeat_interval):
            try:
                frozen = self.storage.get_trial(trial_id)
                params, seeds = _suggest(trial, frozen, self.config, unit)
                run_key = frozen.user_attrs.get(RUN_KEY_ATTR) or ",".join(
                    f"{k}={v!r}" for k, v in params.items()
                )
                try:
                    records, values = self._train(unit, params, seeds, run_key)
                except Exception as exc:
                    self._fail(study, trial, unit, params, exc)
                    return
            except KeyboardInterrupt:
                # Failed and re-queued at once, so a rerun resumes it without waiting for the
                # grace period to expire.
                study.tell(trial, state=TrialState.FAIL)
                retry_callback(self.config.max_retry)(study, self.storage.get_trial(trial_id))
                raise
            attrs = _trial_attrs(records)
            value = statistics.fmean(values)
            if not self._complete(study, trial, attrs, value, frozen.number, unit):
                return
        if not self.quiet:
            self._show(unit, params, seeds, value, attrs["status"], started)

    def _train(
        self, unit: StudyUnit, params: Mapping[str, Any], seeds: Sequence[int], run_key: str
    ) -> tuple[list[dict[str, Any]], list[float]]:
        """Train (or resume) the trial's run for each seed: per-seed records and values."""
        from valleys.bench.run.config import CHECKPOINT_FILE
        from valleys.bench.run.train import train

        records, values = [], []
        for seed in seeds:
            run_dir = self.out / "runs" / unit.dirname / run_key / f"seed-{seed}"
            resumed = (run_dir / CHECKPOINT_FILE).exists()
            config = self.config.train_config(unit, params, seed)
            result = train(
                replace(config, tensorboard=self.tensorboard),
                run_dir,
                resume=True,
                task=self.task,
                quiet=True,
            )
            value = _seed_value(self.config, result)
            values.append(value)
            records.append(_seed_record(result, seed, resumed, value))
            if self.config.flatness and result.status == "completed":
                records[-1].update(_flatness_record(run_dir))
        return records, values

    def _fail(
        self,
        study: optuna.Study,
        trial: Trial,
        unit: StudyUnit,
        params: Mapping[str, Any],
        exc: Exception,
    ) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
        study.tell(trial, state=TrialState.FAIL)
        if not self.quiet:
            print(
                f"[trial failed] {unit.name} bs={unit.batch_size} "
                f"{_format_params(params)}: {type(exc).__name__}: {exc}",
                flush=True,
            )

    def _complete(
        self,
        study: optuna.Study,
        trial: Trial,
        attrs: Mapping[str, Any],
        value: float,
        number: int,
        unit: StudyUnit,
    ) -> bool:
        """Store the trial's attributes and value; False if it was failed as stale meanwhile."""
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            for key, item in attrs.items():
                trial.set_user_attr(key, item)
            study.tell(trial, value)
        except UpdateFinishedTrialError:
            # Another worker failed it as stale (its heartbeats were held up); the retry it queued
            # finds these runs finished and completes at once.
            print(
                f"valleys study: trial {number} of {unit.study_name} was failed as stale "
                "while it ran; its retry reuses the finished runs",
                file=sys.stderr,
            )
            return False
        return True

    def _show(
        self,
        unit: StudyUnit,
        params: Mapping[str, Any],
        seeds: Sequence[int],
        value: float,
        status: str,
        started: float,
    ) -> None:
        done = progress(self.storage, self.plans)
        shown = f"{value:.4f}" if math.isfinite(value) else "worst (diverged or target missed)"
        seed_text = f" seed={seeds[0]}" if self.config.kind == "grid" else f" seeds {list(seeds)}"
        print(
            f"[{done.done}/{done.total}] {unit.name} bs={unit.batch_size} "
            f"{_format_params(params)}{seed_text}: {_objective_label(self.config)} {shown} "
            f"({status}, {time.perf_counter() - started:.0f} s)",
            flush=True,
        )


def _suggest(
    trial: Trial, frozen: FrozenTrial, config: StudyConfig, unit: StudyUnit
) -> tuple[dict[str, Any], list[int]]:
    """Record the trial's planned parameters through ``trial``; return them and its seeds."""
    fixed = frozen.params or frozen.system_attrs.get("fixed_params", {})
    space = config.space(unit)
    params: dict[str, Any] = {}
    for name in PARAMETERS:
        if name not in fixed:
            continue
        s = space[name]
        # Grid values are recorded as floats over the grid's span (a categorical would refuse
        # a grid that grows between runs); random ones with the range they were drawn from.
        if isinstance(s, Range):
            params[name] = trial.suggest_float(name, s.low, s.high, log=s.log)
        else:
            span = [*s, float(fixed[name])]
            params[name] = trial.suggest_float(name, min(span), max(span))
    if "seed" in fixed:
        span = [*config.seeds, int(fixed["seed"])]
        return params, [trial.suggest_int("seed", min(span), max(span))]
    return params, list(config.seeds)


def _trial_attrs(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A finished trial's attributes: per-seed records and their means (the report reads them)."""
    diverged = any(r["status"] == "diverged" for r in records)
    return {
        "status": "diverged" if diverged else "completed",
        "per_seed": list(records),
        "best_metric": _mean([r["best_metric"] for r in records]),
        "final_metric": _mean([r["final_metric"] for r in records]),
        "final_train_loss": _mean([r["final_train_loss"] for r in records]),
        "time_to_target": _mean([r["time_to_target"] for r in records]),
        "host": socket.gethostname(),
    }


def _seed_record(result: RunResult, seed: int, resumed: bool, value: float) -> dict[str, Any]:
    return {
        "seed": seed,
        "status": result.status,
        "value": value if math.isfinite(value) else None,
        "best_metric": result.best_metric,
        "final_metric": result.final_metric,
        "final_train_loss": result.final_train_loss,
        "time_to_target": result.time_to_target,
        "epochs_to_target": result.epochs_to_target,
        "epochs_completed": result.epochs_completed,
        "train_seconds": result.train_seconds,
        "diverged_at_step": result.diverged_at_step,
        "resumed": resumed,
        "run_dir": result.out_dir,
    }


def _flatness_record(run_dir: Path) -> dict[str, Any]:
    """The end point's flatness (``valleys flatness``), for studies with ``flatness = true``."""
    from valleys.bench.analysis.flatness_runs import measure_run

    measured = measure_run(run_dir)
    return {
        "top_eigenvalue": measured["top_eigenvalue"],
        "hessian_trace": measured["hessian_trace"],
        "distance_travelled": measured["distance_travelled"],
    }


def _seed_value(config: StudyConfig, result: RunResult) -> float:
    worst = worst_value(config.maximize)
    if result.status == "diverged":
        return worst
    value = getattr(result, config.objective)
    return float(value) if value is not None and math.isfinite(value) else worst


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else None


def _objective_label(config: StudyConfig) -> str:
    if config.objective == "time_to_target":
        return "seconds to target"
    return f"{config.objective.split('_')[0]} {config.metric}"


def _format_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in params.items())
