"""A study's results as stored in its Optuna storage: units, their configurations and seeds.

Everything is read from the storage (each trial's user attributes), so a study run on many machines
reports from any of them. A configuration's seeds are averaged after leaving diverged seeds out
(they are counted instead); the best configuration is chosen by the study's objective, in which a
diverged seed scores the worst possible value.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from valleys.bench.run.checkpoint import read_json
from valleys.bench.study.config import DB_FILE, STUDY_FILE, maximizes, worst_value
from valleys.bench.study.errors import StudyError
from valleys.bench.study.points import param_key
from valleys.bench.study.storage import META_ATTR, open_storage, sqlite_url, study_id

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

__all__ = [
    "ConfigResult",
    "SeedResult",
    "UnitResult",
    "find_unit",
    "load_results",
    "mean_std",
    "study_location",
]


def mean_std(values: Sequence[float]) -> tuple[float, float, int] | None:
    """(mean, std, n) of ``values`` (std 0 for one value); None for none."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


@dataclass
class SeedResult:
    """One training run of a configuration (see the trial attributes written by the study)."""

    seed: int
    status: str
    value: float
    best_metric: float | None
    final_metric: float | None
    final_train_loss: float | None
    time_to_target: float | None
    epochs_to_target: int | None
    top_eigenvalue: float | None = None
    hessian_trace: float | None = None
    distance_travelled: float | None = None
    run_dir: str | None = None
    """The run's folder (its ``metrics.jsonl``), as the worker that ran it recorded it."""


@dataclass
class ConfigResult:
    """A configuration (parameters without the seed) and its runs."""

    params: dict[str, float]
    seeds: list[SeedResult] = field(default_factory=list)

    def value(self, maximize: bool) -> float:
        """Mean objective over the seeds (a diverged seed counts as the worst value)."""
        values = [s.value for s in self.seeds]
        return statistics.fmean(values) if values else worst_value(maximize)

    def stat(self, name: str) -> tuple[float, float, int] | None:
        """(mean, std, n) of a per-seed quantity over the seeds that did not diverge and have it."""
        return mean_std(
            [
                float(getattr(s, name))
                for s in self.seeds
                if s.status != "diverged" and getattr(s, name) is not None
            ]
        )

    @property
    def diverged(self) -> int:
        """Seeds that diverged."""
        return sum(s.status == "diverged" for s in self.seeds)


@dataclass
class UnitResult:
    """The results of one Optuna study: one optimizer at one batch size."""

    optimizer: str
    batch_size: int
    meta: dict[str, Any]
    configs: list[ConfigResult]
    states: dict[str, int]

    @property
    def maximize(self) -> bool:
        """Direction of the objective."""
        return maximizes(self.meta["objective"], bool(self.meta["higher_is_better"]))

    def best(self) -> ConfigResult | None:
        """The configuration with the best mean objective."""
        if not self.configs:
            return None
        pick = max if self.maximize else min
        return pick(self.configs, key=lambda c: c.value(self.maximize))

    def best_stat(self, name: str) -> tuple[float, float, int] | None:
        """:meth:`ConfigResult.stat` of the best configuration, if there is one."""
        best = self.best()
        return best.stat(name) if best else None


def find_unit(units: Sequence[UnitResult], optimizer: str, batch_size: int) -> UnitResult | None:
    """The unit of ``optimizer`` at ``batch_size``, if the study has it."""
    return next((u for u in units if u.optimizer == optimizer and u.batch_size == batch_size), None)


def load_results(url: str, name: str) -> list[UnitResult]:
    """The results of study ``name`` in the storage at ``url``, ordered by optimizer and batch.

    Raises:
        StudyError: the storage cannot be opened or holds no study of that name.
    """
    storage = open_storage(url, create=False)
    units = []
    for summary in storage.get_all_studies():
        meta = summary.user_attrs.get(META_ATTR)
        if not summary.study_name.startswith(f"{name}/") or not meta or meta["config"] != name:
            continue
        units.append(_unit_result(storage, summary.study_name, meta))
    if not units:
        raise StudyError(f"no study named {name!r} in the storage")
    order = {opt: i for i, opt in enumerate(dict.fromkeys(u.optimizer for u in units))}
    return sorted(units, key=lambda u: (order[u.optimizer], u.batch_size))


def _unit_result(storage: BaseStorage, study_name: str, meta: dict[str, Any]) -> UnitResult:
    """One Optuna study's trials counted by state, its complete ones grouped by configuration."""
    from optuna.trial import TrialState

    unit = UnitResult(meta["optimizer"], int(meta["batch_size"]), meta, [], {})
    configs: dict[tuple[tuple[str, float], ...], ConfigResult] = {}
    for trial in storage.get_all_trials(study_id(storage, study_name), deepcopy=False):
        unit.states[trial.state.name] = unit.states.get(trial.state.name, 0) + 1
        if trial.state != TrialState.COMPLETE:
            continue
        params = {k: float(v) for k, v in trial.params.items() if k != "seed"}
        config = configs.setdefault(param_key(params), ConfigResult(params))
        for record in trial.user_attrs.get("per_seed", []):
            config.seeds.append(_seed_result(record, unit.maximize))
    unit.configs = list(configs.values())
    return unit


def _seed_result(record: Mapping[str, Any], maximize: bool) -> SeedResult:
    value = record.get("value")
    return SeedResult(
        seed=int(record["seed"]),
        status=record["status"],
        value=float(value) if value is not None else worst_value(maximize),
        best_metric=record.get("best_metric"),
        final_metric=record.get("final_metric"),
        final_train_loss=record.get("final_train_loss"),
        time_to_target=record.get("time_to_target"),
        epochs_to_target=record.get("epochs_to_target"),
        top_eigenvalue=record.get("top_eigenvalue"),
        hessian_trace=record.get("hessian_trace"),
        distance_travelled=record.get("distance_travelled"),
        run_dir=record.get("run_dir"),
    )


def study_location(folder: str | os.PathLike[str], storage: str | None = None) -> tuple[str, str]:
    """(storage URL, study name) of the study in ``folder`` (its ``study.json``).

    The storage is ``storage`` if given; else, for a study stored in SQLite, the folder's own
    ``study.db`` when it has one: a copied or moved folder keeps its database but not the absolute
    path recorded in ``study.json``, which would read the original's (or no) data. Otherwise the
    recorded URL.

    Raises:
        StudyError: the folder holds no study, or its recorded URL hides a password and no
            ``storage`` is given.
    """
    path = Path(folder) / STUDY_FILE
    if not path.is_file():
        raise StudyError(f"{folder} holds no study ({STUDY_FILE} missing)")
    data = read_json(path)
    if not isinstance(data.get("name"), str) or not isinstance(data.get("storage"), str):
        raise StudyError(f"{path} does not describe a study (its 'name' or 'storage' is missing)")
    url = storage or data["storage"]
    own = Path(folder) / DB_FILE
    if storage is None and own.is_file() and url.startswith("sqlite"):
        url = sqlite_url(own)
    if "***" in url:
        raise StudyError(
            f"the storage URL in {path} hides its password ({url}); pass it with --storage"
        )
    return url, data["name"]
