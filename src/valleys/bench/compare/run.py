"""``valleys compare``: optimizers side by side on one task, each tuned on an lr grid of equal size.

The default is the paper's claim at laptop scale: ALTO against Lamb, AdamW and SGD at batch 8192
on Fashion-MNIST, three learning rates each, 20 epochs (140 steps) for all. The model is an MLP:
the small CNN costs ~30× more per example (~35 s per epoch on 2 cores), which would leave each run
only a handful of steps within the time budget. Runs go two at a time in worker processes (see
:func:`default_jobs`).

A comparison directory holds ``compare.json`` (its configuration), ``runs/<name>/`` (one training
run each, see :mod:`valleys.bench.run.train`), ``results.json`` (every finished run, rewritten after
each one, so a kill loses at most the run in progress), and when done ``report.md`` with PNG curves.
Rerunning with ``resume=True`` keeps finished runs and continues the interrupted one from its
checkpoint.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from valleys.bench.compare.report import OptimizerSummary, format_table, summarise, write_report
from valleys.bench.run.checkpoint import write_json_atomic
from valleys.bench.run.progress import emit, progress_bar
from valleys.bench.run.train import (
    RESULT_FILE,
    RunResult,
    TrainConfig,
    check_optimizer_name,
    load_result,
    make_optimizer,
    steps_per_epoch,
    train,
)
from valleys.bench.tasks import Task, build_task, get_task_spec

__all__ = [
    "DEFAULT_OPTIMIZERS",
    "CompareConfig",
    "CompareResult",
    "default_jobs",
    "default_lr_grid",
    "default_out_dir",
    "load_compare_config",
    "parse_floats",
    "parse_lr_grids",
    "rerender",
    "run_compare",
]

DEFAULT_OPTIMIZERS = ("alto", "lamb", "adamw", "sgd")

# Each grid is three half-decades centred on where the optimizer did best on the default set-up
# (batch 8192, constant lr): trust-ratio optimizers take a relative step, Adam-like ones an absolute
# step, SGD (momentum 0.9) a larger one.
_LR_GRIDS: dict[str, tuple[float, ...]] = {
    "layerwise": (3e-3, 1e-2, 3e-2),
    "adaptive": (1e-3, 3e-3, 1e-2),
    "sgd": (3e-2, 1e-1, 3e-1),
}

COMPARE_FILE = "compare.json"
RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.json"


def default_lr_grid(optimizer: str) -> tuple[float, ...]:
    """The default lr grid of ``optimizer``, chosen by its family (all grids have 3 points)."""
    from valleys.optim import optimizer_info

    return _LR_GRIDS[optimizer_info(optimizer).family]


def _default_base() -> TrainConfig:
    return TrainConfig(task="fashion-mnist", batch_size=8192, epochs=20, eval_batch_size=10_000)


# The model a comparison uses when none is chosen: the cheapest the task offers, so the default
# grid finishes in minutes; otherwise the task's own default.
_PREFERRED_MODEL = "mlp"


@dataclass
class CompareConfig:
    """A comparison: a base training configuration, the optimizers, their lr grids and the seeds.

    Attributes:
        base: every run's configuration except optimizer, lr and seed.
        optimizers: names from :func:`valleys.optim.available_optimizers`.
        seeds: each grid point is trained once per seed.
        lr_grids: optimizer → learning rates; optimizers missing here get
            :func:`default_lr_grid`. Every grid must have the same size: an equal tuning budget.
    """

    base: TrainConfig = field(default_factory=_default_base)
    optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS
    seeds: tuple[int, ...] = (0,)
    lr_grids: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def resolved(self) -> CompareConfig:
        """This configuration with every optimizer's grid and the model filled in, validated.

        Raises:
            ValueError: unknown optimizer/task/schedule, bad numbers, duplicate names or seeds,
                grids of unequal size, or grids for optimizers not compared.
        """
        if not self.optimizers:
            raise ValueError("optimizers must name at least one optimizer")
        for name in self.optimizers:
            check_optimizer_name(name)
        if len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError(f"optimizers must be distinct, got {list(self.optimizers)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {list(self.seeds)}")
        extra = sorted(set(self.lr_grids) - set(self.optimizers))
        if extra:
            raise ValueError(f"lr grids given for optimizers not compared: {', '.join(extra)}")
        grids = {
            name: tuple(sorted(float(lr) for lr in self.lr_grids.get(name, default_lr_grid(name))))
            for name in self.optimizers
        }
        for name, grid in grids.items():
            if not grid or len(set(grid)) != len(grid):
                raise ValueError(f"lr grid of {name} must hold distinct values, got {list(grid)}")
        sizes = {len(grid) for grid in grids.values()}
        if len(sizes) != 1:
            raise ValueError(
                "lr grids must have the same size for every optimizer (an equal tuning budget); "
                f"got {', '.join(f'{n}: {len(g)}' for n, g in grids.items())}"
            )
        base = self.base
        if base.task_options.model is None and _PREFERRED_MODEL in get_task_spec(base.task).models:
            base = replace(base, task_options=replace(base.task_options, model=_PREFERRED_MODEL))
        for name, grid in grids.items():
            for lr in grid:
                for seed in self.seeds:
                    replace(base, optimizer=name, lr=lr, seed=seed).validate()
        return CompareConfig(base, tuple(self.optimizers), tuple(self.seeds), grids)

    def run_configs(self) -> list[tuple[str, TrainConfig]]:
        """``(run name, config)`` of every run, optimizer by optimizer, lr by lr, seed by seed."""
        return [
            (f"{name}-lr{lr:g}-seed{seed}", replace(self.base, optimizer=name, lr=lr, seed=seed))
            for name in self.optimizers
            for lr in self.lr_grids[name]
            for seed in self.seeds
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "base": self.base.to_dict(),
            "optimizers": list(self.optimizers),
            "seeds": list(self.seeds),
            "lr_grids": {name: list(grid) for name, grid in self.lr_grids.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompareConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            base=TrainConfig.from_dict(data["base"]),
            optimizers=tuple(data["optimizers"]),
            seeds=tuple(data["seeds"]),
            lr_grids={name: tuple(grid) for name, grid in data["lr_grids"].items()},
        )


@dataclass
class CompareResult:
    """A finished comparison: where it is, what ran, and the per-optimizer summary."""

    out_dir: Path
    config: CompareConfig
    results: list[RunResult]
    summaries: list[OptimizerSummary]
    target: float | None
    wall_seconds: float
    report: Path

    def table(self) -> str:
        """The plain-text results table."""
        return format_table(self.summaries, self.target)


def default_out_dir(root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/compare-<YYYYmmdd-HHMMSS>``, suffixed when that already exists."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"compare-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(root) / f"compare-{stamp}-{suffix}"
    return path


def load_compare_config(out_dir: str | os.PathLike[str]) -> CompareConfig:
    """The configuration stored in a comparison directory."""
    path = Path(out_dir) / COMPARE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} is not a comparison directory ({COMPARE_FILE} missing)")
    return CompareConfig.from_dict(json.loads(path.read_text()))


def _check_fits(config: CompareConfig, task: Task) -> None:
    """Fail before the first run on what only the loaded task reveals, or a failing optimizer."""
    steps_per_epoch(len(task.train), config.base.batch_size)
    model = task.build_model()
    for name, run_config in config.run_configs():
        try:
            make_optimizer(run_config, model)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"run {name} cannot build its optimizer: {exc}") from exc


def _finished(run_dir: Path) -> RunResult | None:
    if not (run_dir / RESULT_FILE).is_file():
        return None
    result = load_result(run_dir)
    return result if result.status in ("completed", "diverged") else None


def default_jobs() -> int:
    """Two runs at a time where there are two or more CPUs, else one.

    Measured on a 2-core machine shared with other work: a run with 2 threads slowed down 4-8×
    whenever another process took a core (its threads wait for each other at every operation),
    while single-threaded runs kept their speed; two of them side by side also use both cores
    when the machine is idle.
    """
    return 2 if (os.cpu_count() or 1) >= 2 else 1


# Tasks built by a worker process, by their JSON description: a worker trains many runs of one task
# and loads and preprocesses its data once.
_WORKER_TASKS: dict[str, Task] = {}


def _exit_worker(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _interrupt_run(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    # Ctrl-C reaches the parent, which stops the workers with SIGTERM (see _run_in_parallel); a
    # worker taking Ctrl-C itself would die without returning its result and hang the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_worker)


def _train_in_worker(item: tuple[int, dict[str, Any], str, bool]) -> tuple[int, dict[str, Any]]:
    number, config_dict, run_dir, resume = item
    config = TrainConfig.from_dict(config_dict)
    key = json.dumps([config.task, config_dict["task_options"]], sort_keys=True)
    if key not in _WORKER_TASKS:
        _WORKER_TASKS[key] = build_task(config.task, config.task_options)
    # While training, SIGTERM is an interruption: the run stores itself as interrupted (its last
    # checkpoint intact, no temporary file left behind), then the worker exits.
    signal.signal(signal.SIGTERM, _interrupt_run)
    try:
        result = train(config, run_dir, resume=resume, task=_WORKER_TASKS[key], quiet=True)
    except KeyboardInterrupt:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, _exit_worker)
    return number, result.to_dict()


def _run_in_parallel(
    work: Sequence[tuple[int, TrainConfig, Path]],
    *,
    jobs: int,
    resume: bool,
    record: Callable[[int, RunResult], None],
) -> None:
    """Train ``work`` (number, config, run directory) in ``jobs`` processes; record each result."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    items = [(number, config.to_dict(), str(run_dir), resume) for number, config, run_dir in work]
    # spawn, not fork: forking a process whose OpenMP threads already ran is not safe. Leaving the
    # pool terminates its workers, so on Ctrl-C or an error the runs in progress stop at once
    # (each resumable from its last checkpoint) and queued runs never start.
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, initializer=_init_worker, initargs=(threads,)) as pool:
        for number, result in pool.imap_unordered(_train_in_worker, items):
            record(number, RunResult.from_dict(result))
        # All done: let the workers exit on their own, so no SIGTERM meets one already exiting.
        pool.close()
        pool.join()


def run_compare(
    config: CompareConfig,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    quiet: bool = False,
    task: Task | None = None,
    log: Callable[[str], None] | None = None,
    jobs: int | None = None,
) -> CompareResult:
    """Run every (optimizer, lr, seed) of ``config``, store the results and write the report.

    Args:
        config: the comparison (resolved and validated here, before anything runs).
        out_dir: the comparison's directory (None: :func:`default_out_dir`).
        resume: continue the comparison stored in ``out_dir`` (its stored configuration must match
            ``config``): finished runs are kept, an interrupted one resumes from its checkpoint.
        quiet: no progress bar and no per-run lines.
        task: the task, already built; built from the configuration if None. Runs in worker
            processes (``jobs > 1``) build their own copy.
        log: receives the per-run lines instead of stderr.
        jobs: runs trained at a time, each in its own process with ``cpu_count // jobs`` threads
            (None: :func:`default_jobs`). With one job, runs use this process and its threads.
            Results are reproducible for a given number of threads per run.

    Raises:
        ValueError: an invalid configuration, or ``resume`` with a different stored one.
        FileExistsError: ``out_dir`` already holds a comparison and ``resume`` is False.
        KeyboardInterrupt: after storing every finished run in ``results.json``.
    """
    started = time.perf_counter()
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    config = config.resolved()
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    stored = out / COMPARE_FILE
    if resume and stored.is_file():
        previous = load_compare_config(out)
        if previous.to_dict() != config.to_dict():
            raise ValueError(
                f"{out} holds a comparison with another configuration; resume it with its own "
                "(`valleys compare --resume DIR` alone) or choose another directory"
            )
    elif stored.is_file():
        raise FileExistsError(
            f"{out} already holds a comparison: resume it, or choose another directory"
        )
    if task is None:
        task = build_task(config.base.task, config.base.task_options)
    _check_fits(config, task)
    write_json_atomic(stored, config.to_dict())
    target = config.base.target if config.base.target is not None else task.target

    def say(message: str) -> None:
        if not quiet:
            emit(message, bar, log)

    runs = config.run_configs()
    finished: dict[int, RunResult] = {}
    for number, (name, _) in enumerate(runs):
        previous_result = _finished(out / "runs" / name) if resume else None
        if previous_result is not None:
            finished[number] = previous_result
    pending = [number for number in range(len(runs)) if number not in finished]

    def store() -> None:
        write_json_atomic(
            out / RESULTS_FILE,
            {"config": config.to_dict(), "runs": [finished[k].to_dict() for k in sorted(finished)]},
        )

    def record(number: int, result: RunResult) -> None:
        finished[number] = result
        store()
        bar.update(1)
        say(f"[{len(finished)}/{len(runs)}] {runs[number][0]}: {_run_line(result, task.metric)}")

    if finished:
        # Runs that finished after the last store (the comparison stopped in between) count too.
        store()

    jobs = min(jobs or default_jobs(), max(1, len(pending)))
    bar = progress_bar(len(runs), unit="run", quiet=quiet, initial=len(finished))
    try:
        if jobs == 1:
            for number in pending:
                name, run_config = runs[number]

                def show_epoch(epoch_record: dict[str, Any], name: str = name) -> None:
                    epoch = epoch_record["epoch"]
                    bar.set_postfix_str(f"{name}, epoch {epoch}/{config.base.epochs}")

                result = train(
                    run_config,
                    out / "runs" / name,
                    resume=resume,
                    task=task,
                    quiet=True,
                    on_epoch=show_epoch,
                )
                record(number, result)
        else:
            work = [(n, runs[n][1], out / "runs" / runs[n][0]) for n in pending]
            _run_in_parallel(work, jobs=jobs, resume=resume, record=record)
    finally:
        bar.close()
    results = [finished[k] for k in sorted(finished)]
    wall = time.perf_counter() - started
    summaries = summarise(results)
    threads = torch.get_num_threads() if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)
    execution = f"{jobs} run(s) at a time, {threads} thread(s) each"
    report = write_report(
        out, config.to_dict(), results, target=target, wall_seconds=wall, execution=execution
    )
    write_json_atomic(
        out / SUMMARY_FILE,
        {
            "target": target,
            "wall_seconds": wall,
            "execution": execution,
            "optimizers": [_summary_dict(s) for s in summaries],
        },
    )
    return CompareResult(out, config, results, summaries, target, wall, report)


def _run_line(result: RunResult, metric: str) -> str:
    best = f"{result.best_metric:.4f}" if result.best_metric is not None else "—"
    loss = f"{result.final_train_loss:.4f}" if result.final_train_loss is not None else "—"
    text = f"{result.status}, best test {metric} {best}, final train loss {loss}"
    if result.time_to_target is not None:
        text += f", target at {result.time_to_target:.1f} s"
    return text + f", {result.train_seconds:.1f} s training"


def _summary_dict(summary: OptimizerSummary) -> dict[str, Any]:
    def choice(point: Any, key: str) -> dict[str, Any] | None:
        if point is None:
            return None
        value = getattr(point, key)
        return {"lr": point.lr, "mean": value.mean, "std": value.std, "count": value.count}

    return {
        "optimizer": summary.optimizer,
        "metric": summary.metric,
        "best_metric": choice(summary.by_metric, "best_metric"),
        "final_train_loss": choice(summary.by_loss, "final_train_loss"),
        "time_to_target": choice(summary.by_time, "time_to_target"),
        "runs": summary.runs,
        "diverged": summary.diverged,
    }


def rerender(out_dir: str | os.PathLike[str]) -> tuple[Path, str]:
    """Redraw the report of a comparison directory from its stored results; return it and the
    table (works on an interrupted comparison too, from the runs it finished)."""
    out = Path(out_dir)
    path = out / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{out} holds no stored results ({RESULTS_FILE} missing)")
    stored = json.loads(path.read_text())
    results = [RunResult.from_dict(r) for r in stored["runs"]]
    summaries = summarise(results)
    target = next((r.target for r in results), None)
    report = write_report(out, stored["config"], results, target=target)
    return report, format_table(summaries, target)


def parse_lr_grids(specs: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """``["alto=1e-3,3e-3", ...]`` → ``{"alto": (0.001, 0.003), ...}``; ``ValueError`` if malformed."""
    grids: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"lr grid {spec!r} must look like NAME=LR,LR,...")
        grids[name.strip()] = parse_floats(values, f"lr grid of {name.strip()}")
    return grids


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """``"1e-3,3e-3"`` → ``(0.001, 0.003)``, every value finite and > 0."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values or any(not (v > 0 and v != float("inf")) for v in values):
        raise ValueError(f"{what} must be finite numbers > 0, got {text!r}")
    return values
