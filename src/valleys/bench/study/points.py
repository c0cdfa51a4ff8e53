"""The points a study plans: its units (one optimizer at one batch size) and their trials.

A grid's points are its whole product, less those outside E's stable region; a random study's are
the first points of Optuna's scrambled-Halton QMC sampler in the optimizer's box (see
:mod:`valleys.bench.study.runner` for why the planner draws them rather than a sampler at trial
time), and a box reaching outside the stable region is refused instead, to keep budgets equal.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from valleys.bench.study.errors import StudyConfigError
from valleys.bench.study.spaces import PARAMETERS, Range, Space
from valleys.bench.study.storage import quiet_optuna

__all__ = [
    "PlannedTrial",
    "StudyUnit",
    "UnitPlan",
    "grid_points",
    "param_key",
    "random_points",
]

Point = tuple[dict[str, float], str]
"""A point's parameters and the folder of its runs (see :attr:`PlannedTrial.run_key`)."""


@dataclass(frozen=True)
class StudyUnit:
    """One Optuna study of a configuration: one optimizer at one batch size.

    Attributes:
        optimizer: the registered optimizer.
        batch_size: the global batch.
        study_name: the Optuna study's name.
        label: the study's name for a variant of ``optimizer`` (None: ``optimizer`` itself).
    """

    optimizer: str
    batch_size: int
    study_name: str
    label: str | None = None

    @property
    def name(self) -> str:
        """What reports and progress lines call this optimizer: its label, else its name."""
        return self.label or self.optimizer

    @property
    def dirname(self) -> str:
        """Folder of this unit's runs under ``<out>/runs/``."""
        return f"{self.name}-bs{self.batch_size}"


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


def grid_points(unit: StudyUnit, space: Mapping[str, Space]) -> tuple[list[Point], int]:
    """Every grid point of ``space`` inside E's stable region, and how many were left out."""
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


def random_points(
    unit: StudyUnit, space: Mapping[str, Space], trials: int, sampler_seed: int
) -> list[Point]:
    """The first ``trials`` QMC points of the box ``space``, refused if it leaves E's stable region."""
    ranges = {name: s for name, s in space.items() if isinstance(s, Range)}
    if not ranges:
        raise StudyConfigError(
            f"[optimizers.{unit.name}]: a random study needs at least one parameter "
            "given as a range {low, high, log}; every one is fixed"
        )
    _check_stable_box(unit, space)
    fixed = {name: s[0] for name, s in space.items() if not isinstance(s, Range)}
    points = []
    for index, sampled in enumerate(_qmc_points(ranges, trials, sampler_seed)):
        values = {**fixed, **sampled}
        params = {name: values[name] for name in PARAMETERS if name in values}
        points.append((params, f"point-{index:04d}"))
    return points


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
                f"[optimizers.{unit.name}] at batch size {unit.batch_size}: the box reaches "
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
    with quiet_optuna():
        scratch = optuna.create_study(sampler=sampler)
        scratch.ask()
        trial = scratch.trials[0]
        points = [sampler.sample_relative(scratch, trial, space) for _ in range(count)]
    return [{name: float(value) for name, value in point.items()} for point in points]
