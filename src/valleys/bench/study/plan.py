"""A study's plan in its storage: each unit's Optuna study and ``WAITING`` trials, and progress.

A point counts as planned while any of its trials is not ``FAILED``; a failed one (an error, or
retries used up) is planned again by the next run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from valleys.bench.study.config import StudyConfig
from valleys.bench.study.errors import StudyError
from valleys.bench.study.points import UnitPlan, param_key
from valleys.bench.study.storage import (
    META_ATTR,
    RUN_KEY_ATTR,
    open_storage,
    quiet_optuna,
    study_id,
)

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage, RDBStorage
    from optuna.trial import FrozenTrial

__all__ = ["StudyProgress", "prepare", "progress", "study_storage", "trial_key"]


def study_storage(config: StudyConfig, url: str) -> RDBStorage:
    """The storage at ``url`` with ``config``'s heartbeat and retry settings, as workers use it
    (wrapped by :func:`~valleys.bench.study.storage.cached`)."""
    return open_storage(
        url,
        heartbeat_interval=config.heartbeat_interval,
        grace_period=config.grace_period,
        max_retry=config.max_retry,
    )


def trial_key(trial: FrozenTrial) -> tuple[tuple[str, float], ...]:
    """The planned point of a trial: its parameters, or the fixed ones if not yet recorded."""
    return param_key(trial.params or trial.system_attrs.get("fixed_params", {}))


def prepare(config: StudyConfig, storage: BaseStorage) -> list[UnitPlan]:
    """Create the units' Optuna studies and add every planned trial that is missing."""
    from optuna.trial import TrialState

    plans = config.plan()
    for plan in plans:
        study = _unit_study(config, plan, storage)
        # Optuna's own skip_if_exists counts failed trials as existing (and matches values only
        # to 1e-5), so it is not used here.
        existing = {
            trial_key(t) for t in study.get_trials(deepcopy=False) if t.state != TrialState.FAIL
        }
        for trial in plan.trials:
            if trial.key not in existing:
                study.enqueue_trial(trial.params, user_attrs={RUN_KEY_ATTR: trial.run_key})
    return plans


def _unit_study(config: StudyConfig, plan: UnitPlan, storage: BaseStorage) -> optuna.Study:
    """The unit's Optuna study, created with its facts, or refused if it holds other settings."""
    import optuna

    meta = config.meta(plan.unit)
    with quiet_optuna():
        study = optuna.create_study(
            storage=storage,
            study_name=plan.unit.study_name,
            direction="maximize" if config.maximize else "minimize",
            load_if_exists=True,
        )
    stored = study.user_attrs.get(META_ATTR)
    if stored is None:
        study.set_user_attr(META_ATTR, meta)
    elif stored.get("fingerprint") != meta["fingerprint"]:
        raise StudyError(
            f"Optuna study {plan.unit.study_name!r} holds results of other settings "
            f"(changed: {', '.join(_changed(stored.get('fingerprint', {}), meta['fingerprint']))}); "
            "give the study another name or use another storage"
        )
    return study


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))


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


def progress(storage: BaseStorage, plans: Sequence[UnitPlan]) -> StudyProgress:
    """Where each planned point stands: complete (and whether diverged), running, waiting, failed."""
    from optuna.trial import TrialState

    counts = dict.fromkeys(("total", "done", "running", "waiting", "failed", "diverged"), 0)
    for plan in plans:
        states: dict[tuple[tuple[str, float], ...], set[TrialState]] = {}
        diverged = set()
        for trial in storage.get_all_trials(
            study_id(storage, plan.unit.study_name), deepcopy=False
        ):
            key = trial_key(trial)
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
