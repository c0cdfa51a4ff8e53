"""``valleys study``: batch-size sweeps, grids and equal-budget random tuning, run on Optuna.

A study configuration (TOML or YAML, see :func:`parse_study_config`) names a task, the optimizers
with a search space each, the batch sizes, the seeds and the budget. It becomes one Optuna study per
(task, optimizer, batch size), named ``<name>/<task>/<optimizer>/bs<batch size>``, in a SQLite file
(``<out>/study.db``) or in any database URL, so that workers on many machines can share it
(PostgreSQL: ``postgresql+psycopg://user@host/db`` with ``psycopg[binary]`` installed; SQLAlchemy
2.1 reads a plain ``postgresql://`` the same way). ``--quick`` shrinks a study to a smoke test as
:func:`describe_quick` states.

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
not a failure: see :func:`worst_value`.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import math
import multiprocessing
import os
import re
import socket
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valleys.bench.tasks import KINDS as TASK_KINDS
from valleys.bench.tasks import TaskOptions, check_task_options, get_task_spec

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.trial import FrozenTrial

    from valleys.bench.run.train import RunResult, TrainConfig
    from valleys.bench.tasks import Task

__all__ = [
    "KINDS",
    "OBJECTIVES",
    "PARAMETERS",
    "STUDY_FILE",
    "TRAINING_KEYS",
    "PlannedTrial",
    "Range",
    "StudyConfig",
    "StudyConfigError",
    "StudyError",
    "StudyProgress",
    "StudyUnit",
    "UnitPlan",
    "default_out_dir",
    "describe_quick",
    "load_study_config",
    "open_storage",
    "param_key",
    "parse_study_config",
    "read_study_file",
    "redact_url",
    "run_study",
    "storage_url",
    "worst_value",
]

KINDS = ("grid", "random")
"""Study kinds: every point of a grid, or an equal number of quasi-random points per optimizer."""

PARAMETERS = ("lr", "weight_decay", "alpha", "beta1", "momentum", "warmup_epochs")
"""Parameters a search space may cover. ``beta1`` is E's β1 (``betas[0]`` or ``beta``)."""

OBJECTIVES = ("best_metric", "final_metric", "time_to_target")
"""What a trial's value is: the best or final test metric, or the training time to the target."""

TRAINING_KEYS = (
    "schedule",
    "lr_scaling",
    "base_batch_size",
    "micro_batch_size",
    "eval_batch_size",
    "bf16",
    "clip_grad_norm",
    "poly_power",
    "device",
)
"""Training options shared by every run of a study (see :class:`~valleys.bench.run.train.TrainConfig`)."""

STUDY_FILE = "study.json"
"""Written into a study's output directory: its name, storage and configuration, for reports."""

QUICK_TRAIN_LIMIT = 2048
QUICK_TEST_LIMIT = 512

_TOP_KEYS = (
    "name",
    "task",
    "kind",
    "trials",
    "sampler_seed",
    "batch_sizes",
    "seeds",
    "storage",
    "task_options",
    "budget",
    "training",
    "workers",
    "optimizers",
    "flatness",
)
_BUDGET_KEYS = ("epochs", "target", "objective")
_WORKER_KEYS = ("heartbeat_interval", "grace_period", "max_retry")
_RANGE_KEYS = ("low", "high", "log")
_BY_BATCH = "by_batch_size"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_META_ATTR = "valleys"
_RUN_KEY_ATTR = "run_key"


class StudyConfigError(ValueError):
    """A study configuration that cannot run; the message names the key and the valid choices."""


class StudyError(RuntimeError):
    """A study cannot proceed: unreachable storage, a name taken by other settings, failed workers."""


@dataclass(frozen=True)
class Range:
    """A continuous interval a random study samples from (log-uniformly when ``log``)."""

    low: float
    high: float
    log: bool = False


Space = tuple[float, ...] | Range
"""A parameter's space at one batch size: grid values (one value: fixed) or a :class:`Range`."""


@dataclass
class OptimizerSpace:
    """One optimizer's search space.

    Attributes:
        optimizer: a registered optimizer name.
        params: parameter → ``[(from_batch_size, space), ...]`` in ascending order; the space used
            at a batch size is the last one whose threshold it reaches (a plain space is ``[(1, s)]``).
    """

    optimizer: str
    params: dict[str, list[tuple[int, Space]]]

    def at(self, batch_size: int) -> dict[str, Space]:
        """The space of every parameter at ``batch_size``."""
        return {
            name: [space for start, space in steps if start <= batch_size][-1]
            for name, steps in self.params.items()
        }


@dataclass(frozen=True)
class StudyUnit:
    """One Optuna study of a configuration: one optimizer at one batch size."""

    optimizer: str
    batch_size: int
    study_name: str

    @property
    def dirname(self) -> str:
        """Folder of this unit's runs under ``<out>/runs/``."""
        return f"{self.optimizer}-bs{self.batch_size}"


@dataclass(frozen=True)
class PlannedTrial:
    """A trial the plan calls for.

    Attributes:
        params: the trial's parameters in :data:`PARAMETERS` order (plus ``seed`` in a grid).
        run_key: folder of its runs under the unit's folder: named by the parameters (grid) or the
            point's index (random), never by the trial number, so that a retry finds the runs.
    """

    params: dict[str, float | int]
    run_key: str

    @property
    def key(self) -> tuple[tuple[str, float], ...]:
        """Identity of the point: two trials with equal keys are the same planned work."""
        return param_key(self.params)


@dataclass(frozen=True)
class UnitPlan:
    """The planned trials of one unit and how many grid points fell outside E's stable region."""

    unit: StudyUnit
    trials: tuple[PlannedTrial, ...]
    skipped_unstable: int = 0

    @property
    def keys(self) -> frozenset[tuple[tuple[str, float], ...]]:
        """Keys of the planned trials."""
        return frozenset(trial.key for trial in self.trials)


def param_key(params: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    """A hashable identity of a parameter set (values compared as floats, names sorted)."""
    return tuple(sorted((name, float(value)) for name, value in params.items()))


@dataclass
class StudyConfig:
    """A validated study configuration (see :func:`parse_study_config` for the file format)."""

    name: str
    task: str
    kind: str
    optimizers: list[OptimizerSpace]
    batch_sizes: list[int]
    epochs: int
    seeds: list[int] = field(default_factory=lambda: [0])
    target: float | None = None
    objective: str = "best_metric"
    trials: int | None = None
    sampler_seed: int = 0
    task_options: TaskOptions = field(default_factory=TaskOptions)
    training: dict[str, Any] = field(default_factory=dict)
    storage: str | None = None
    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 2
    flatness: bool = False
    quick: bool = False

    # --- derived facts -------------------------------------------------------------------------

    @property
    def metric(self) -> str:
        """The task's primary metric."""
        return TASK_KINDS[get_task_spec(self.task).kind][0]

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger primary metric is better."""
        return TASK_KINDS[get_task_spec(self.task).kind][1]

    @property
    def maximize(self) -> bool:
        """The direction of every trial's value."""
        return self.objective != "time_to_target" and self.higher_is_better

    def units(self) -> list[StudyUnit]:
        """The Optuna studies of this configuration, optimizer by optimizer."""
        return [
            StudyUnit(
                space.optimizer, batch, f"{self.name}/{self.task}/{space.optimizer}/bs{batch}"
            )
            for space in self.optimizers
            for batch in self.batch_sizes
        ]

    def space(self, unit: StudyUnit) -> dict[str, Space]:
        """The search space of ``unit``."""
        return next(s for s in self.optimizers if s.optimizer == unit.optimizer).at(unit.batch_size)

    def fingerprint(self, unit: StudyUnit) -> dict[str, Any]:
        """What results stored under ``unit.study_name`` depend on, beyond the planned points.

        A grid's values and seeds may grow between runs (new points are simply added), but a random
        study's points depend on its whole space and its trials on every seed, so those are included.
        """
        data: dict[str, Any] = {
            "task": self.task,
            "task_options": _public_dict(self.task_options),
            "epochs": self.epochs,
            "target": self.target,
            "objective": self.objective,
            "training": dict(sorted(self.training.items())),
        }
        if self.kind == "random":
            data["space"] = {name: _space_to_data(s) for name, s in self.space(unit).items()}
            data["seeds"] = list(self.seeds)
            data["sampler_seed"] = self.sampler_seed
        return json.loads(json.dumps(data))

    def meta(self, unit: StudyUnit) -> dict[str, Any]:
        """The facts stored with each Optuna study, enough to report on it without this file."""
        return {
            "config": self.name,
            "task": self.task,
            "optimizer": unit.optimizer,
            "batch_size": unit.batch_size,
            "kind": self.kind,
            "objective": self.objective,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "target": self.target,
            "seeds": list(self.seeds),
            "fingerprint": self.fingerprint(unit),
        }

    def train_config(
        self, unit: StudyUnit, params: Mapping[str, float | int], seed: int
    ) -> TrainConfig:
        """The run of ``params`` (without ``seed``) for ``seed``: E's β1 passed the optimizer's way."""
        from valleys.bench.run.train import TrainConfig
        from valleys.optim import optimizer_info

        info = optimizer_info(unit.optimizer)
        args = info.e_kwargs(params.get("alpha"), params.get("beta1"))
        if "momentum" in params:
            args["momentum"] = float(params["momentum"])
        weight_decay = params.get("weight_decay")
        return TrainConfig(
            task=self.task,
            optimizer=unit.optimizer,
            lr=float(params["lr"]),
            batch_size=unit.batch_size,
            epochs=self.epochs,
            seed=seed,
            weight_decay=float(weight_decay) if weight_decay is not None else None,
            warmup_epochs=float(params.get("warmup_epochs", 0.0)),
            optimizer_args=args,
            target=self.target,
            task_options=self.task_options,
            **self.training,
        )

    # --- planning ------------------------------------------------------------------------------

    def plan(self) -> list[UnitPlan]:
        """Every trial of every unit, each point checked by building its optimizer (no data).

        Raises:
            StudyConfigError: a point the optimizer or the training loop refuses, a random box
                reaching outside E's stable region, or a unit left without any point.
        """
        plans = []
        for unit in self.units():
            space = self.space(unit)
            if self.kind == "grid":
                points, skipped = self._grid_points(unit, space)
            else:
                points, skipped = self._random_points(unit, space), 0
            if not points:
                raise StudyConfigError(
                    f"[optimizers.{unit.optimizer}] at batch size {unit.batch_size}: every grid "
                    f"point lies outside E's stable region |alpha| < 1/(1 - beta1)"
                )
            for params, _ in points:
                self._check_point(unit, params)
            if self.kind == "grid":
                trials = tuple(
                    PlannedTrial({**params, "seed": seed}, run_key)
                    for params, run_key in points
                    for seed in self.seeds
                )
            else:
                trials = tuple(PlannedTrial(params, run_key) for params, run_key in points)
            plans.append(UnitPlan(unit, trials, skipped))
        return plans

    def _grid_points(
        self, unit: StudyUnit, space: dict[str, Space]
    ) -> tuple[list[tuple[dict[str, float], str]], int]:
        names = [name for name in PARAMETERS if name in space]
        points, skipped = [], 0
        for values in itertools.product(*(space[name] for name in names)):
            params = dict(zip(names, values, strict=True))
            if not _stable(unit, params):
                skipped += 1
                continue
            run_key = ",".join(f"{name}={value!r}" for name, value in params.items())
            points.append((params, run_key))
        return points, skipped

    def _random_points(
        self, unit: StudyUnit, space: dict[str, Space]
    ) -> list[tuple[dict[str, float], str]]:
        ranges = {name: s for name, s in space.items() if isinstance(s, Range)}
        if not ranges:
            raise StudyConfigError(
                f"[optimizers.{unit.optimizer}]: a random study needs at least one parameter "
                "given as a range {low, high, log}; every one is fixed"
            )
        _check_stable_box(unit, space)
        assert self.trials is not None
        fixed = {name: s[0] for name, s in space.items() if not isinstance(s, Range)}
        points = []
        for index, sampled in enumerate(_qmc_points(ranges, self.trials, self.sampler_seed)):
            values = {**fixed, **sampled}
            params = {name: values[name] for name in PARAMETERS if name in values}
            points.append((params, f"point-{index:04d}"))
        return points

    def _check_point(self, unit: StudyUnit, params: Mapping[str, float]) -> None:
        from torch import nn

        from valleys.bench.run.train import make_optimizer

        try:
            config = self.train_config(unit, params, self.seeds[0])
            config.validate()
            make_optimizer(config, nn.Linear(2, 2))
        except (ValueError, TypeError) as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise StudyConfigError(
                f"[optimizers.{unit.optimizer}] at batch size {unit.batch_size} ({shown}): {exc}"
            ) from None

    def quick_version(self) -> StudyConfig:
        """This study shrunk to a smoke test (see :func:`describe_quick`)."""
        limit = min(self.task_options.train_limit or QUICK_TRAIN_LIMIT, QUICK_TRAIN_LIMIT)
        test_limit = min(self.task_options.test_limit or QUICK_TEST_LIMIT, QUICK_TEST_LIMIT)
        ends = sorted({min(self.batch_sizes), max(self.batch_sizes)})
        batch_sizes = sorted({min(batch, limit) for batch in ends})
        optimizers = [
            OptimizerSpace(
                space.optimizer,
                {
                    name: [(start, _quick_space(name, s)) for start, s in steps]
                    for name, steps in space.params.items()
                },
            )
            for space in self.optimizers
        ]
        return replace(
            self,
            name=f"{self.name}-quick",
            seeds=self.seeds[:1],
            epochs=1,
            trials=min(self.trials, 2) if self.trials is not None else None,
            batch_sizes=batch_sizes,
            optimizers=optimizers,
            task_options=replace(self.task_options, train_limit=limit, test_limit=test_limit),
            quick=True,
        )


def describe_quick() -> str:
    """What ``--quick`` does, for help texts and the documentation."""
    return (
        "shrink the study to a smoke test: name '<name>-quick' (its own Optuna studies and "
        "output folder), the first seed only, 1 epoch, the first 2 values of each grid "
        "parameter (random: 2 trials), only the smallest and largest batch size, the task "
        f"cut to fixed subsets of {QUICK_TRAIN_LIMIT} training and {QUICK_TEST_LIMIT} test "
        "examples, batch sizes capped at the training subset and warmup at 1 epoch"
    )


def _quick_space(name: str, space: Space) -> Space:
    if isinstance(space, Range):
        if name != "warmup_epochs":
            return space
        low, high = min(space.low, 1.0), min(space.high, 1.0)
        return Range(low, high, space.log) if low < high else (low,)
    values = space[:2]
    if name == "warmup_epochs":
        values = tuple(dict.fromkeys(min(v, 1.0) for v in values))
    return values


def _effective_e(unit: StudyUnit, params: Mapping[str, float]) -> tuple[float, float]:
    """(α, β1) a run will use: given values, else the paper's rule for the batch size."""
    from valleys.optim.registry import explore_defaults

    rule = explore_defaults(unit.batch_size)
    return float(params.get("alpha", rule["alpha"])), float(params.get("beta1", rule["beta1"]))


def _stable(unit: StudyUnit, params: Mapping[str, float]) -> bool:
    from valleys.optim import optimizer_info

    info = optimizer_info(unit.optimizer)
    return not info.explores or info.stable(*_effective_e(unit, params))


def _check_stable_box(unit: StudyUnit, space: Mapping[str, Space]) -> None:
    """Refuse a random box with unstable corners: rejecting points would break equal budgets."""
    from valleys.optim import optimizer_info

    if not optimizer_info(unit.optimizer).explores:
        return
    corners: dict[str, tuple[float, ...]] = {}
    for name in ("alpha", "beta1"):
        s = space.get(name)
        if isinstance(s, Range):
            corners[name] = (s.low, s.high)
        elif s is not None:
            corners[name] = (s[0],)
    for alpha, beta1 in itertools.product(*(corners.get(n, (None,)) for n in ("alpha", "beta1"))):
        params = {k: v for k, v in (("alpha", alpha), ("beta1", beta1)) if v is not None}
        if not _stable(unit, params):
            eff_alpha, eff_beta1 = _effective_e(unit, params)
            raise StudyConfigError(
                f"[optimizers.{unit.optimizer}] at batch size {unit.batch_size}: the box reaches "
                f"alpha={eff_alpha}, beta1={eff_beta1}, outside E's stable region "
                f"|alpha| < 1/(1 - beta1) = {1 / (1 - eff_beta1) if eff_beta1 < 1 else math.inf:g}; "
                "narrow alpha or raise beta1's low end"
            )


def _qmc_points(ranges: Mapping[str, Range], count: int, seed: int) -> list[dict[str, float]]:
    """The first ``count`` points of Optuna's scrambled-Halton QMC sampler over ``ranges``.

    Drawn through the sampler's own ``sample_relative`` in a throw-away in-memory study, so the
    points are exactly those the sampler would give trials 0, 1, ... of a study of its own.
    """
    import optuna
    from optuna.distributions import FloatDistribution

    space = {
        name: FloatDistribution(r.low, r.high, log=r.log) for name, r in sorted(ranges.items())
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.QMCSampler(qmc_type="halton", scramble=True, seed=seed)
    with _quiet_optuna():
        scratch = optuna.create_study(sampler=sampler)
        scratch.ask()
        trial = scratch.trials[0]
        points = [sampler.sample_relative(scratch, trial, space) for _ in range(count)]
    return [{name: float(value) for name, value in point.items()} for point in points]


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines (one per trial) would duplicate this module's progress lines."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _public_dict(options: TaskOptions) -> dict[str, Any]:
    return {f.name: getattr(options, f.name) for f in fields(options)}


def _space_to_data(space: Space) -> Any:
    if isinstance(space, Range):
        return {"low": space.low, "high": space.high, "log": space.log}
    return list(space)


# --- parsing ------------------------------------------------------------------------------------


def read_study_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw contents of a TOML (``.toml``) or YAML (``.yaml``/``.yml``) study file."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text()
    except OSError as exc:
        raise StudyConfigError(f"cannot read study configuration {path}: {exc}") from None
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise StudyConfigError(f"{path}: a study configuration is a .toml, .yaml or .yml file")
    except StudyConfigError:
        raise
    except Exception as exc:  # the TOML and YAML parsers raise their own error types
        raise StudyConfigError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise StudyConfigError(f"{path}: expected a table of settings at the top level")
    return data


def load_study_config(path: str | os.PathLike[str]) -> StudyConfig:
    """Read and validate a study configuration file (see :func:`parse_study_config`)."""
    try:
        return parse_study_config(read_study_file(path))
    except StudyConfigError as exc:
        message = str(exc)
        prefix = f"{path}: "
        raise StudyConfigError(
            message if message.startswith(prefix) else prefix + message
        ) from None


def parse_study_config(data: Mapping[str, Any]) -> StudyConfig:
    """Validate raw settings into a :class:`StudyConfig`, refusing anything that could not run.

    Keys (TOML shown; YAML has the same structure)::

        name = "batch-sweep"            # letters, digits, . _ - ; names the Optuna studies
        task = "fashion-mnist"          # valleys.bench.tasks.available_tasks()
        kind = "grid"                   # or "random"
        trials = 16                     # random only: configurations per optimizer and batch
        sampler_seed = 0                # random only: seeds the Halton scrambling
        batch_sizes = [128, 8192]
        seeds = [0, 1, 2]               # default [0]
        storage = "postgresql://..."    # default: sqlite <out>/study.db

        [task_options]                  # TaskOptions fields: model, train_limit, ...
        [budget]                        # epochs (required), target, objective
        [training]                      # schedule, lr_scaling, base_batch_size, bf16, ...
        [workers]                       # heartbeat_interval, grace_period (s), max_retry

        [optimizers.alto]               # one table per optimizer; lr is required
        lr = [0.001, 0.01]              # grid: a list, or one number (fixed)
        beta1 = { low = 0.9, high = 0.999 }              # random: a range, or one number
        alpha = { by_batch_size = { 1 = 0.5, 1024 = -5 } }  # any space may depend on the batch

    Raises:
        StudyConfigError: the first problem, naming the key and the valid choices.
    """
    _check_keys(data, _TOP_KEYS, "at the top level")
    for key in ("name", "task", "kind", "batch_sizes", "budget", "optimizers"):
        if key not in data:
            raise StudyConfigError(f"missing key {key!r} at the top level")
    name = data["name"]
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise StudyConfigError(
            f"name must be letters, digits, '.', '_' or '-' (not starting with . _ -), got {name!r}"
        )
    task = data["task"]
    try:
        get_task_spec(str(task))
    except ValueError as exc:
        raise StudyConfigError(f"task: {exc}") from None
    kind = data["kind"]
    if kind not in KINDS:
        raise StudyConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")

    task_options = _parse_task_options(task, data.get("task_options", {}))
    budget = _table(data["budget"], "budget")
    _check_keys(budget, _BUDGET_KEYS, "in [budget]")
    if "epochs" not in budget:
        raise StudyConfigError("missing key 'epochs' in [budget]")
    epochs = _int(budget["epochs"], "budget.epochs", minimum=1)
    target = budget.get("target")
    if target is not None:
        target = _number(target, "budget.target")
    objective = budget.get("objective", "best_metric")
    if objective not in OBJECTIVES:
        raise StudyConfigError(
            f"budget.objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}"
        )
    if objective == "time_to_target" and target is None:
        raise StudyConfigError("budget.objective 'time_to_target' needs budget.target")

    trials = data.get("trials")
    if kind == "random":
        if trials is None:
            raise StudyConfigError(
                "a random study needs 'trials': the number of configurations sampled per "
                "optimizer and batch size (the equal budget)"
            )
        trials = _int(trials, "trials", minimum=1)
    elif trials is not None:
        raise StudyConfigError("'trials' applies to random studies only; a grid runs every point")
    sampler_seed = _int(data.get("sampler_seed", 0), "sampler_seed", minimum=0)
    if kind == "grid" and "sampler_seed" in data:
        raise StudyConfigError("'sampler_seed' applies to random studies only")

    batch_sizes = _int_list(data["batch_sizes"], "batch_sizes", minimum=1)
    seeds = _int_list(data.get("seeds", [0]), "seeds", minimum=0)
    storage = data.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage.strip()):
        raise StudyConfigError(f"storage must be a database URL, got {storage!r}")

    training = _table(data.get("training", {}), "training")
    _check_keys(training, TRAINING_KEYS, "in [training]")
    workers = _table(data.get("workers", {}), "workers")
    _check_keys(workers, _WORKER_KEYS, "in [workers]")
    heartbeat = _int(workers.get("heartbeat_interval", 10), "workers.heartbeat_interval", minimum=1)
    grace = _int(workers.get("grace_period", 6 * heartbeat), "workers.grace_period", minimum=1)
    if grace <= heartbeat:
        raise StudyConfigError(
            f"workers.grace_period ({grace} s) must exceed workers.heartbeat_interval "
            f"({heartbeat} s), or live trials would be failed"
        )
    max_retry = _int(workers.get("max_retry", 2), "workers.max_retry", minimum=0)

    flatness = data.get("flatness", False)
    if not isinstance(flatness, bool):
        raise StudyConfigError(f"flatness must be true or false, got {flatness!r}")

    optimizers = _parse_optimizers(data["optimizers"], kind, epochs, min(batch_sizes))
    config = StudyConfig(
        name=name,
        task=task,
        kind=kind,
        optimizers=optimizers,
        batch_sizes=batch_sizes,
        epochs=epochs,
        seeds=seeds,
        target=target,
        objective=objective,
        trials=trials,
        sampler_seed=sampler_seed,
        task_options=task_options,
        training=dict(training),
        storage=storage,
        heartbeat_interval=heartbeat,
        grace_period=grace,
        max_retry=max_retry,
        flatness=flatness,
    )
    config.plan()
    return config


def _check_keys(table: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    for key in table:
        if key not in valid:
            raise StudyConfigError(
                f"unknown key {key!r} {where}; valid keys: {', '.join(sorted(valid))}"
            )


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise StudyConfigError(f"[{where}] must be a table of settings, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StudyConfigError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _int(value: Any, where: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StudyConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _int_list(value: Any, where: str, *, minimum: int) -> list[int]:
    if not isinstance(value, list) or not value:
        raise StudyConfigError(f"{where} must be a non-empty list of integers, got {value!r}")
    items = [_int(v, where, minimum=minimum) for v in value]
    if len(set(items)) != len(items):
        raise StudyConfigError(f"{where} must not repeat values, got {items}")
    return items


def _parse_task_options(task: str, value: Any) -> TaskOptions:
    table = _table(value, "task_options")
    names = [f.name for f in fields(TaskOptions)]
    _check_keys(table, names, "in [task_options]")
    try:
        options = TaskOptions(**table)
        check_task_options(task, options)
    except (TypeError, ValueError) as exc:
        raise StudyConfigError(f"task_options: {exc}") from None
    return options


# Domain of each parameter: (check, description) — ranges must lie inside it too.
_DOMAINS: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "alpha": (lambda v: True, "a finite number"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
}


def _parse_optimizers(
    value: Any, kind: str, epochs: int, smallest_batch: int
) -> list[OptimizerSpace]:
    from valleys.optim import optimizer_info

    table = _table(value, "optimizers")
    if not table:
        raise StudyConfigError("[optimizers] must name at least one optimizer")
    spaces = []
    for name, params in table.items():
        try:
            info = optimizer_info(name)
        except ValueError as exc:
            raise StudyConfigError(f"[optimizers]: {exc}") from None
        if info.name != name:
            raise StudyConfigError(f"[optimizers]: write optimizer {name!r} as {info.name!r}")
        params = _table(params, f"optimizers.{name}")
        valid = _valid_parameters(info)
        _check_keys(params, valid, f"in [optimizers.{name}] (what {name} takes)")
        if "lr" not in params:
            raise StudyConfigError(f"missing key 'lr' in [optimizers.{name}]")
        parsed = {
            param: _parse_param(params[param], param, kind, epochs, smallest_batch, name)
            for param in PARAMETERS
            if param in params
        }
        spaces.append(OptimizerSpace(name, parsed))
    return spaces


def _valid_parameters(info: Any) -> list[str]:
    optional = ("weight_decay", "momentum", "alpha", "beta1")
    return ["lr", "warmup_epochs", *(name for name in optional if info.accepts(name))]


def _parse_param(
    value: Any, name: str, kind: str, epochs: int, smallest_batch: int, optimizer: str
) -> list[tuple[int, Space]]:
    where = f"optimizers.{optimizer}.{name}"
    if isinstance(value, Mapping) and _BY_BATCH in value:
        _check_keys(value, (_BY_BATCH,), f"in {where}")
        steps_table = _table(value[_BY_BATCH], f"{where}.{_BY_BATCH}")
        steps = []
        for start, space in steps_table.items():
            try:
                threshold = int(start)
            except (TypeError, ValueError):
                threshold = 0
            if threshold < 1 or str(threshold) != str(start).strip():
                raise StudyConfigError(
                    f"{where}.{_BY_BATCH}: keys are batch sizes (integers >= 1), got {start!r}"
                )
            steps.append(
                (threshold, _parse_space(space, name, kind, epochs, f"{where}[{threshold}]"))
            )
        if not steps:
            raise StudyConfigError(f"{where}.{_BY_BATCH} is empty")
        steps.sort(key=lambda item: item[0])
        if steps[0][0] > smallest_batch:
            raise StudyConfigError(
                f"{where}.{_BY_BATCH} has no value for batch size {smallest_batch} (its smallest "
                f"key is {steps[0][0]}): add a key <= {smallest_batch}"
            )
        return steps
    return [(1, _parse_space(value, name, kind, epochs, where))]


def _parse_space(value: Any, name: str, kind: str, epochs: int, where: str) -> Space:
    check, expected = _DOMAINS[name]
    if name == "warmup_epochs":
        check, expected = (lambda v: 0 <= v <= epochs), f"in [0, epochs={epochs}]"

    def in_domain(v: Any, label: str) -> float:
        number = _number(v, label)
        if not check(number):
            raise StudyConfigError(f"{label} must be {expected}, got {v!r}")
        return number

    if isinstance(value, Mapping):
        if kind == "grid":
            raise StudyConfigError(
                f"{where}: a grid study takes a list of values or one number, not a range "
                f"(ranges {{low, high, log}} are for random studies)"
            )
        _check_keys(value, _RANGE_KEYS, f"in {where}")
        if "low" not in value or "high" not in value:
            raise StudyConfigError(f"{where}: a range needs both 'low' and 'high'")
        low = in_domain(value["low"], f"{where}.low")
        high = in_domain(value["high"], f"{where}.high")
        log = value.get("log", False)
        if not isinstance(log, bool):
            raise StudyConfigError(f"{where}.log must be true or false, got {log!r}")
        if not low < high:
            raise StudyConfigError(f"{where}: low ({low:g}) must be < high ({high:g})")
        if log and low <= 0:
            raise StudyConfigError(f"{where}: a log range needs low > 0, got {low:g}")
        return Range(low, high, log)
    if isinstance(value, list):
        if kind == "random":
            raise StudyConfigError(
                f"{where}: a random study samples from a range {{low, high, log}} (or takes one "
                "fixed number), not a list"
            )
        if not value:
            raise StudyConfigError(f"{where}: the list of values is empty")
        values = tuple(in_domain(v, f"{where} value") for v in value)
        if len(set(values)) != len(values):
            raise StudyConfigError(f"{where}: values repeat: {list(values)}")
        return values
    return (in_domain(value, where),)


# --- storage ------------------------------------------------------------------------------------


def default_out_dir(config: StudyConfig) -> Path:
    """Where a study's files go unless told otherwise: ``runs/study-<name>``."""
    return Path("runs") / f"study-{config.name}"


def storage_url(config: StudyConfig, folder: str | os.PathLike[str], storage: str | None) -> str:
    """The database a study uses: ``storage``, else the config's, else ``<folder>/study.db``.

    The SQLite path is made absolute so that spawned workers and later reports find the same file.
    """
    return storage or config.storage or f"sqlite:///{(Path(folder) / 'study.db').resolve()}"


def redact_url(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password we could find
        return url


def _retry_callback(max_retry: int) -> Any:
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
) -> RDBStorage:
    """The study's Optuna storage, with heartbeats and the retry callback when
    ``heartbeat_interval`` is given (workers), without for readers; fails clearly.

    On SQLite every transaction starts with ``BEGIN IMMEDIATE``: Python's driver otherwise starts
    transactions only at the first write, so two workers could both read a trial as ``WAITING`` and
    both take it. PostgreSQL locks the row (``SELECT ... FOR UPDATE``) and needs nothing extra.

    Raises:
        StudyError: the URL is malformed, its driver is missing, or the database cannot be reached.
    """
    import optuna
    import sqlalchemy
    from optuna.storages import RDBStorage

    try:
        dialect = sqlalchemy.engine.make_url(url).get_backend_name()
    except Exception as exc:
        raise StudyError(f"invalid storage URL {redact_url(url)!r}: {exc}") from None
    engine_kwargs: dict[str, Any] = {}
    if dialect == "sqlite":
        # Workers queue for the write lock rather than fail after the driver's default 5 s.
        engine_kwargs["connect_args"] = {"timeout": 120}
    elif dialect == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval is not None:
        callback_arg = (
            "heartbeat_stale_trial_callback"
            if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters
            else "failed_trial_callback"
        )
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            callback_arg: _retry_callback(max_retry),
        }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                **heartbeat,
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


def _cached(storage: RDBStorage) -> BaseStorage:
    """The storage wrapped as Optuna's studies wrap it, so that workers and studies share one
    view of the trials (a study keeps a cache that would not know of trials taken around it)."""
    from optuna.storages import get_storage

    return get_storage(storage)


def _study_storage(config: StudyConfig, url: str) -> BaseStorage:
    """The storage at ``url`` with ``config``'s heartbeat and retry settings, as workers use it."""
    return _cached(
        open_storage(
            url,
            heartbeat_interval=config.heartbeat_interval,
            grace_period=config.grace_period,
            max_retry=config.max_retry,
        )
    )


def worst_value(maximize: bool) -> float:
    """The value of a diverged run, and of a run that never reached the target.

    −∞ when maximising, +∞ when minimising: worse than every finite result whatever the metric, so
    an optimizer that diverges loses the comparison at that point (and a random configuration
    diverging on one seed scores the worst mean) instead of the trial disappearing as a failure.
    The trial is still ``COMPLETE``, with ``status = "diverged"`` among its attributes; reports
    leave diverged seeds out of means and count them.
    """
    return -math.inf if maximize else math.inf


# --- planning into the storage ------------------------------------------------------------------


def _study_id(storage: BaseStorage, unit: StudyUnit) -> int:
    return storage.get_study_id_from_name(unit.study_name)


def _trial_key(trial: FrozenTrial) -> tuple[tuple[str, float], ...]:
    """The planned point of a trial: its parameters, or the fixed ones if not yet recorded."""
    return param_key(trial.params or trial.system_attrs.get("fixed_params", {}))


def _prepare(config: StudyConfig, storage: BaseStorage) -> list[UnitPlan]:
    """Create the units' Optuna studies and add every planned trial that is missing."""
    import optuna
    from optuna.trial import TrialState

    plans = config.plan()
    for plan in plans:
        meta = config.meta(plan.unit)
        with _quiet_optuna():
            study = optuna.create_study(
                storage=storage,
                study_name=plan.unit.study_name,
                direction="maximize" if config.maximize else "minimize",
                load_if_exists=True,
            )
        stored = study.user_attrs.get(_META_ATTR)
        if stored is None:
            study.set_user_attr(_META_ATTR, meta)
        elif stored.get("fingerprint") != meta["fingerprint"]:
            changed = sorted(
                key
                for key in set(stored.get("fingerprint", {})) | set(meta["fingerprint"])
                if stored.get("fingerprint", {}).get(key) != meta["fingerprint"].get(key)
            )
            raise StudyError(
                f"Optuna study {plan.unit.study_name!r} holds results of other settings "
                f"(changed: {', '.join(changed)}); give the study another name or use another "
                "storage"
            )
        # A point counts as planned while any of its trials is not FAILED; a failed one (an error,
        # or retries used up) is planned again. Optuna's own skip_if_exists counts failed trials
        # as existing (and matches values only to 1e-5), so it is not used here.
        existing = {
            _trial_key(t) for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL
        }
        for trial in plan.trials:
            if trial.key not in existing:
                study.enqueue_trial(trial.params, user_attrs={_RUN_KEY_ATTR: trial.run_key})
    return plans


@dataclass
class StudyProgress:
    """Counts of planned trials over all units of a study."""

    total: int
    done: int
    running: int
    waiting: int
    failed: int
    diverged: int

    def line(self) -> str:
        """One line for the terminal."""
        parts = [f"{self.done}/{self.total} trials complete"]
        for label, count in (
            ("running", self.running),
            ("waiting", self.waiting),
            ("failed", self.failed),
            ("diverged", self.diverged),
        ):
            if count:
                parts.append(f"{count} {label}")
        return ", ".join(parts)


def _progress(storage: BaseStorage, plans: Sequence[UnitPlan]) -> StudyProgress:
    from optuna.trial import TrialState

    counts = dict.fromkeys(("total", "done", "running", "waiting", "failed", "diverged"), 0)
    for plan in plans:
        states: dict[tuple[tuple[str, float], ...], set[TrialState]] = {}
        diverged = set()
        for trial in storage.get_all_trials(_study_id(storage, plan.unit), deepcopy=False):
            key = _trial_key(trial)
            states.setdefault(key, set()).add(trial.state)
            if trial.state == TrialState.COMPLETE and trial.user_attrs.get("status") == "diverged":
                diverged.add(key)
        for key in plan.keys:
            seen = states.get(key, set())
            counts["total"] += 1
            if TrialState.COMPLETE in seen:
                counts["done"] += 1
                counts["diverged"] += key in diverged
            elif TrialState.RUNNING in seen:
                counts["running"] += 1
            elif TrialState.WAITING in seen:
                counts["waiting"] += 1
            else:
                counts["failed"] += 1
    return StudyProgress(**counts)


# --- workers ------------------------------------------------------------------------------------


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
) -> tuple[list[FrozenTrial], bool]:
    """The ``WAITING`` trials of the plan a worker may take, and whether any planned one is running.

    A waiting trial is left alone when a lower-numbered trial with the same point is waiting,
    running or complete (a duplicate from racing planners, never run) or when its point is not in
    this plan (planned by an older configuration).
    """
    from optuna.trial import TrialState

    claimed = set()
    runnable, running = [], False
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state == TrialState.FAIL:
            continue
        key = _trial_key(trial)
        first = key not in claimed
        claimed.add(key)
        if key not in planned:
            continue
        running |= trial.state == TrialState.RUNNING
        if trial.state == TrialState.WAITING and first:
            runnable.append(trial)
    return runnable, running


def _take(storage: BaseStorage, study_id: int, candidates: Sequence[FrozenTrial]) -> int | None:
    """Atomically move the first candidate still ``WAITING`` to ``RUNNING``; return its id."""
    from optuna.trial import TrialState

    for trial in candidates:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
            # Before anything else: a trial without any heartbeat is never seen as stale.
            storage.record_heartbeat(trial_id)
            return trial_id
    return None


def _work(config: StudyConfig, out: Path, url: str, *, quiet: bool) -> int:
    """A worker: take and run planned trials until none is waiting or running; return how many."""
    import optuna
    from optuna.storages import fail_stale_trials

    from valleys.bench.tasks import build_task

    storage = _study_storage(config, url)
    plans = config.plan()
    # The data is loaded before any trial is taken, so a missing data set fails no trial.
    task = build_task(config.task, config.task_options)
    too_big = [batch for batch in config.batch_sizes if batch > len(task.train)]
    if too_big:
        raise StudyConfigError(
            f"batch_sizes {too_big} exceed the {len(task.train)} training examples of "
            f"{config.task!r}"
        )
    with _quiet_optuna():
        studies = {
            plan.unit: optuna.load_study(
                study_name=plan.unit.study_name,
                storage=storage,
                sampler=optuna.samplers.RandomSampler(seed=0),
            )
            for plan in plans
        }
    study_ids = {plan.unit: _study_id(storage, plan.unit) for plan in plans}
    ran = 0
    poll = min(config.heartbeat_interval, 5)
    while True:
        took = busy = False
        for plan in plans:
            study = studies[plan.unit]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)
            trials = storage.get_all_trials(study_ids[plan.unit], deepcopy=False)
            candidates, running = _runnable(trials, plan.keys)
            busy |= running or bool(candidates)
            trial_id = _take(storage, study_ids[plan.unit], candidates)
            if trial_id is not None:
                _run_trial(config, plan, study, trial_id, task, out, storage, plans, quiet)
                ran += 1
                took = True
                break
        if took:
            continue
        if not busy:
            return ran
        # Another worker is running the rest; wait in case it dies and its trial comes back.
        time.sleep(poll)


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


def _run_trial(
    config: StudyConfig,
    plan: UnitPlan,
    study: optuna.Study,
    trial_id: int,
    task: Task,
    out: Path,
    storage: BaseStorage,
    plans: Sequence[UnitPlan],
    quiet: bool,
) -> None:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import Trial, TrialState

    from valleys.bench.run.train import CHECKPOINT_FILE, train

    unit = plan.unit
    started = time.perf_counter()
    frozen = storage.get_trial(trial_id)
    with _Heartbeat(storage, trial_id, config.heartbeat_interval):
        trial = Trial(study, trial_id)
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
            seeds = [trial.suggest_int("seed", min(span), max(span))]
        else:
            seeds = list(config.seeds)
        run_key = frozen.user_attrs.get(_RUN_KEY_ATTR) or ",".join(
            f"{k}={v!r}" for k, v in params.items()
        )
        records, values = [], []
        try:
            for seed in seeds:
                run_dir = out / "runs" / unit.dirname / run_key / f"seed-{seed}"
                resumed = (run_dir / CHECKPOINT_FILE).exists()
                result = train(
                    config.train_config(unit, params, seed),
                    run_dir,
                    resume=True,
                    task=task,
                    quiet=True,
                )
                value = _seed_value(config, result)
                values.append(value)
                records.append(_seed_record(result, seed, resumed, value))
                if config.flatness and result.status == "completed":
                    records[-1].update(_flatness_record(run_dir))
        except KeyboardInterrupt:
            # Failed and re-queued at once, so a rerun resumes it without waiting for the grace
            # period to expire.
            study.tell(trial, state=TrialState.FAIL)
            _retry_callback(config.max_retry)(study, storage.get_trial(trial_id))
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
            study.tell(trial, state=TrialState.FAIL)
            if not quiet:
                print(
                    f"[trial failed] {unit.optimizer} bs={unit.batch_size} "
                    f"{_format_params(params)}: {type(exc).__name__}: {exc}",
                    flush=True,
                )
            return
        diverged = any(r["status"] == "diverged" for r in records)
        attrs = {
            "status": "diverged" if diverged else "completed",
            "per_seed": records,
            "best_metric": _mean([r["best_metric"] for r in records]),
            "final_metric": _mean([r["final_metric"] for r in records]),
            "final_train_loss": _mean([r["final_train_loss"] for r in records]),
            "time_to_target": _mean([r["time_to_target"] for r in records]),
            "host": socket.gethostname(),
        }
        value = statistics.fmean(values)
        try:
            for key, item in attrs.items():
                trial.set_user_attr(key, item)
            study.tell(trial, value)
        except UpdateFinishedTrialError:
            # Another worker failed it as stale (its heartbeats were held up); the retry it queued
            # finds these runs finished and completes at once.
            print(
                f"valleys study: trial {frozen.number} of {unit.study_name} was failed as stale "
                "while it ran; its retry reuses the finished runs",
                file=sys.stderr,
            )
            return
    if not quiet:
        progress = _progress(storage, plans)
        shown = f"{value:.4f}" if math.isfinite(value) else "worst (diverged or target missed)"
        seed_text = f" seed={seeds[0]}" if config.kind == "grid" else f" seeds {seeds}"
        print(
            f"[{progress.done}/{progress.total}] {unit.optimizer} bs={unit.batch_size} "
            f"{_format_params(params)}{seed_text}: {_objective_label(config)} {shown} "
            f"({attrs['status']}, {time.perf_counter() - started:.0f} s)",
            flush=True,
        )


def _objective_label(config: StudyConfig) -> str:
    if config.objective == "time_to_target":
        return "seconds to target"
    return f"{config.objective.split('_')[0]} {config.metric}"


def _format_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in params.items())


def _worker_entry(config: StudyConfig, out: str, url: str, jobs: int, quiet: bool) -> None:
    """Body of a ``--jobs`` worker process (spawned: a fresh interpreter)."""
    import torch

    from valleys.bench.data import DatasetMissing
    from valleys.bench.run.checkpoint import CheckpointError

    # N workers on C cores: each gets C/N threads instead of all of them fighting over C.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    try:
        _work(config, Path(out), url, quiet=quiet)
    except KeyboardInterrupt:
        sys.exit(130)
    except (StudyError, ValueError, CheckpointError, DatasetMissing) as exc:
        print(f"valleys study: worker error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


def run_study(
    config: StudyConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    jobs: int = 1,
    storage: str | None = None,
    quiet: bool = False,
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

    Raises:
        StudyError: the storage cannot be reached, the study name is taken by other settings, or a
            worker process failed.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    folder = Path(out) if out is not None else default_out_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    url = storage_url(config, folder, storage)
    rdb = _study_storage(config, url)
    plans = _prepare(config, rdb)
    from valleys.bench.run.checkpoint import write_json_atomic

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
    before = _progress(rdb, plans)
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
            _work(config, folder, url, quiet=quiet)
        else:
            _run_workers(config, folder, url, jobs, quiet)
    return _progress(rdb, plans)


def _run_workers(config: StudyConfig, folder: Path, url: str, jobs: int, quiet: bool) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=_worker_entry,
            args=(config, str(folder), url, jobs, quiet),
            name=f"valleys-study-worker-{index}",
        )
        for index in range(jobs)
    ]
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        # The terminal's Ctrl-C reached the workers too: let them re-queue their trials first.
        for worker in workers:
            worker.join()
        raise
    failed = [w.exitcode for w in workers if w.exitcode != 0]
    if failed:
        raise StudyError(
            f"{len(failed)} of {jobs} workers failed (exit codes {failed}); their messages are "
            "above; run the study again to resume"
        )
