"""A validated study configuration (:class:`StudyConfig`) and what follows from it: its units, the
facts stored with each, every run's training configuration, its plan, and its ``--quick`` version.

Files become a :class:`StudyConfig` in :mod:`valleys.bench.study.parse`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from valleys.bench.study.errors import StudyConfigError
from valleys.bench.study.points import (
    PlannedTrial,
    StudyUnit,
    UnitPlan,
    grid_points,
    random_points,
)
from valleys.bench.study.spaces import OptimizerSpace, Space, quick_space, space_to_data
from valleys.bench.tasks import KINDS as TASK_KINDS
from valleys.bench.tasks import TaskOptions, get_task_spec

if TYPE_CHECKING:
    from valleys.bench.run.config import TrainConfig

__all__ = [
    "DB_FILE",
    "KINDS",
    "OBJECTIVES",
    "STUDY_FILE",
    "TRAINING_KEYS",
    "StudyConfig",
    "describe_quick",
    "maximizes",
    "worst_value",
]

KINDS = ("grid", "random")
"""Study kinds: every point of a grid, or an equal number of quasi-random points per optimizer."""

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
"""Training options shared by every run of a study (see :class:`~valleys.bench.run.config.TrainConfig`)."""

STUDY_FILE = "study.json"
"""Written into a study's output directory: its name, storage and configuration, for reports."""

DB_FILE = "study.db"
"""A study's SQLite storage in its output directory, unless the study uses another database."""

QUICK_TRAIN_LIMIT = 2048
QUICK_TEST_LIMIT = 512


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
        return maximizes(self.objective, self.higher_is_better)

    def units(self) -> list[StudyUnit]:
        """The Optuna studies of this configuration, optimizer by optimizer."""
        return [
            StudyUnit(
                space.optimizer,
                batch,
                f"{self.name}/{self.task}/{space.name}/bs{batch}",
                space.label,
            )
            for space in self.optimizers
            for batch in self.batch_sizes
        ]

    def _optimizer_space(self, unit: StudyUnit) -> OptimizerSpace:
        return next(s for s in self.optimizers if s.name == unit.name)

    def space(self, unit: StudyUnit) -> dict[str, Space]:
        """The search space of ``unit``."""
        return self._optimizer_space(unit).at(unit.batch_size)

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
        # Added only where used, so that studies from before these settings keep their results.
        if unit.label is not None:
            data["optimizer"] = unit.optimizer
        e_schedule = self._optimizer_space(unit).e_schedule
        if e_schedule != "constant":
            data["e_schedule"] = e_schedule
        if self.kind == "random":
            data["space"] = {name: space_to_data(s) for name, s in self.space(unit).items()}
            data["seeds"] = list(self.seeds)
            data["sampler_seed"] = self.sampler_seed
        return json.loads(json.dumps(data))

    def meta(self, unit: StudyUnit) -> dict[str, Any]:
        """The facts stored with each Optuna study, enough to report on it without this file."""
        return {
            "config": self.name,
            "task": self.task,
            "optimizer": unit.name,
            "registered": unit.optimizer,
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
        from valleys.bench.run.config import TrainConfig
        from valleys.optim import optimizer_info

        info = optimizer_info(unit.optimizer)
        args = info.e_kwargs(params.get("alpha"), params.get("beta1"))
        for name in ("momentum", "target_perturbation"):
            if name in params:
                args[name] = float(params[name])
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
            e_schedule=self._optimizer_space(unit).e_schedule,
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
                points, skipped = grid_points(unit, space)
            else:
                assert self.trials is not None
                points, skipped = random_points(unit, space, self.trials, self.sampler_seed), 0
            if not points:
                raise StudyConfigError(
                    f"[optimizers.{unit.name}] at batch size {unit.batch_size}: every grid "
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
                f"[optimizers.{unit.name}] at batch size {unit.batch_size} ({shown}): {exc}"
            ) from None

    def quick_version(self) -> StudyConfig:
        """This study shrunk to a smoke test (see :func:`describe_quick`)."""
        limit = min(self.task_options.train_limit or QUICK_TRAIN_LIMIT, QUICK_TRAIN_LIMIT)
        test_limit = min(self.task_options.test_limit or QUICK_TEST_LIMIT, QUICK_TEST_LIMIT)
        ends = sorted({min(self.batch_sizes), max(self.batch_sizes)})
        batch_sizes = sorted({min(batch, limit) for batch in ends})
        optimizers = [
            replace(
                space,
                params={
                    name: [(start, quick_space(name, s)) for start, s in steps]
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


def maximizes(objective: str, higher_is_better: bool) -> bool:
    """Whether trial values are maximised: a metric may be, a time to the target never is."""
    return objective != "time_to_target" and higher_is_better


def worst_value(maximize: bool) -> float:
    """The value of a diverged run, and of a run that never reached the target.

    −∞ when maximising, +∞ when minimising: worse than every finite result whatever the metric, so
    an optimizer that diverges loses the comparison at that point (and a random configuration
    diverging on one seed scores the worst mean) instead of the trial disappearing as a failure.
    The trial is still ``COMPLETE``, with ``status = "diverged"`` among its attributes; reports
    leave diverged seeds out of means and count them.
    """
    return -math.inf if maximize else math.inf


def _public_dict(options: TaskOptions) -> dict[str, Any]:
    return {f.name: getattr(options, f.name) for f in fields(options)}
