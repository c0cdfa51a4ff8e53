"""``valleys compare``: optimizers side by side on one task, each tuned on an lr grid of equal size.

The default is the paper's claim at laptop scale: ALTO against Lamb, AdamW and SGD at batch 8192
on Fashion-MNIST, three learning rates each, 20 epochs (140 steps) for all. The model is an MLP:
the small CNN costs ~30× more per example (~35 s per epoch on 2 cores), which would leave each run
only a handful of steps within the time budget. Runs go two at a time in worker processes (see
:func:`~valleys.bench.run.pool.default_jobs`).

A comparison directory holds ``compare.json`` (its configuration), ``runs/<name>/`` (one training
run each, see :mod:`valleys.bench.run.train`), ``results.json`` (every finished run, rewritten after
each one, so a kill loses at most the run in progress), and when done ``report.md`` with PNG curves.
Rerunning with ``resume=True`` keeps finished runs and continues the interrupted one from its
checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from valleys.bench.compare.report import OptimizerSummary, format_table, summarise, write_report
from valleys.bench.run.batches import steps_per_epoch
from valleys.bench.run.checkpoint import read_json, write_json_atomic
from valleys.bench.run.config import (
    RESULT_FILE,
    RunResult,
    TrainConfig,
    check_optimizer_name,
    load_result,
)
from valleys.bench.run.pool import default_jobs, run_pool, threads_per_worker
from valleys.bench.run.progress import emit, progress_bar
from valleys.bench.run.train import make_optimizer, train
from valleys.bench.tasks import Task, build_task, get_task_spec

__all__ = [
    "DEFAULT_OPTIMIZERS",
    "CompareConfig",
    "CompareResult",
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
    # Lion's sign step moves every coordinate by lr: 3-10x below Adam's lr (Chen et al. 2023).
    "sign": (1e-4, 3e-4, 1e-3),
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
    data = read_json(path)
    try:
        return CompareConfig.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a valid comparison configuration: {exc}") from None


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


# Tasks built by a worker process, by their JSON description: a worker trains many runs of one task
# and loads and preprocesses its data once.
_WORKER_TASKS: dict[str, Task] = {}


def _train_in_worker(item: tuple[dict[str, Any], str, bool]) -> dict[str, Any]:
    """One run in a pool worker, where SIGTERM interrupts it: it stores itself as interrupted (its
    last checkpoint intact, no temporary file left behind) before the worker exits."""
    config_dict, run_dir, resume = item
    config = TrainConfig.from_dict(config_dict)
    key = json.dumps([config.task, config_dict["task_options"]], sort_keys=True)
    if key not in _WORKER_TASKS:
        _WORKER_TASKS[key] = build_task(config.task, config.task_options)
    return train(config, run_dir, resume=resume, task=_WORKER_TASKS[key], quiet=True).to_dict()


class _Session:
    """The runs of one comparison, those finished so far, and how each new result is stored."""

    def __init__(
        self,
        config: CompareConfig,
        out: Path,
        task: Task,
        *,
        resume: bool,
        quiet: bool,
        log: Callable[[str], None] | None,
    ) -> None:
        self.config = config
        self.out = out
        self.task = task
        self.resume = resume
        self.quiet = quiet
        self.log = log
        self.runs = config.run_configs()
        self.finished: dict[int, RunResult] = {}
        if resume:
            for number, (name, _) in enumerate(self.runs):
                previous = _finished(out / "runs" / name)
                if previous is not None:
                    self.finished[number] = previous
        self.pending = [n for n in range(len(self.runs)) if n not in self.finished]
        self.bar = progress_bar(len(self.runs), unit="run", quiet=quiet, initial=len(self.finished))

    def results(self) -> list[RunResult]:
        """The finished runs in the order of :meth:`CompareConfig.run_configs`."""
        return [self.finished[k] for k in sorted(self.finished)]

    def store(self) -> None:
        """Rewrite ``results.json`` with every finished run."""
        write_json_atomic(
            self.out / RESULTS_FILE,
            {"config": self.config.to_dict(), "runs": [r.to_dict() for r in self.results()]},
        )

    def record(self, number: int, result: RunResult) -> None:
        """Store run ``number``'s result before showing it."""
        self.finished[number] = result
        self.store()
        self.bar.update(1)
        if not self.quiet:
            line = _run_line(result, self.task.metric)
            emit(
                f"[{len(self.finished)}/{len(self.runs)}] {self.runs[number][0]}: {line}",
                self.bar,
                self.log,
            )

    def train_here(self) -> None:
        """Train the pending runs one after the other in this process, epochs on the bar."""
        for number in self.pending:
            name, run_config = self.runs[number]

            def show_epoch(epoch_record: dict[str, Any], name: str = name) -> None:
                epoch = epoch_record["epoch"]
                self.bar.set_postfix_str(f"{name}, epoch {epoch}/{self.config.base.epochs}")

            result = train(
                run_config,
                self.out / "runs" / name,
                resume=self.resume,
                task=self.task,
                quiet=True,
                on_epoch=show_epoch,
            )
            self.record(number, result)

    def train_in_workers(self, jobs: int) -> None:
        """Train the pending runs in ``jobs`` worker processes (each builds its own task)."""
        items = [
            (self.runs[n][1].to_dict(), str(self.out / "runs" / self.runs[n][0]), self.resume)
            for n in self.pending
        ]

        def record(index: int, result: dict[str, Any]) -> None:
            self.record(self.pending[index], RunResult.from_dict(result))

        run_pool(_train_in_worker, items, jobs=jobs, on_result=record, name="valleys-compare")


def _check_out_dir(config: CompareConfig, out: Path, resume: bool) -> None:
    """Refuse to overwrite a comparison, or to resume one stored with another configuration."""
    stored = out / COMPARE_FILE
    if resume and stored.is_file():
        if load_compare_config(out).to_dict() != config.to_dict():
            raise ValueError(
                f"{out} holds a comparison with another configuration; resume it with its own "
                "(`valleys compare --resume DIR` alone) or choose another directory"
            )
    elif stored.is_file():
        raise FileExistsError(
            f"{out} already holds a comparison: resume it, or choose another directory"
        )


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
            (None: :func:`~valleys.bench.run.pool.default_jobs`). With one job, runs use this
            process and its threads. Results are reproducible for a given number of threads per
            run.

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
    _check_out_dir(config, out, resume)
    if task is None:
        task = build_task(config.base.task, config.base.task_options)
    _check_fits(config, task)
    write_json_atomic(out / COMPARE_FILE, config.to_dict())
    session = _Session(config, out, task, resume=resume, quiet=quiet, log=log)
    if session.finished:
        # Runs that finished after the last store (the comparison stopped in between) count too.
        session.store()
    jobs = min(jobs or default_jobs(), max(1, len(session.pending)))
    try:
        if jobs == 1:
            session.train_here()
        else:
            session.train_in_workers(jobs)
    finally:
        session.bar.close()
    threads = torch.get_num_threads() if jobs == 1 else threads_per_worker(jobs)
    target = config.base.target if config.base.target is not None else task.target
    execution = f"{jobs} run(s) at a time, {threads} thread(s) each"
    return _finish(session, target, time.perf_counter() - started, execution)


def _finish(session: _Session, target: float | None, wall: float, execution: str) -> CompareResult:
    """Write the report and ``summary.json`` of a finished comparison."""
    results = session.results()
    summaries = summarise(results)
    config = session.config
    report = write_report(
        session.out,
        config.to_dict(),
        results,
        target=target,
        wall_seconds=wall,
        execution=execution,
    )
    write_json_atomic(
        session.out / SUMMARY_FILE,
        {
            "target": target,
            "wall_seconds": wall,
            "execution": execution,
            "optimizers": [_summary_dict(s) for s in summaries],
        },
    )
    return CompareResult(session.out, config, results, summaries, target, wall, report)


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
    stored = read_json(path)
    try:
        results = [RunResult.from_dict(r) for r in stored["runs"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} does not hold stored comparison results: {exc}") from None
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
