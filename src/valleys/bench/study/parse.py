"""Study files (TOML or YAML) read and validated into a :class:`~valleys.bench.study.config.StudyConfig`.

Everything that could stop a study later is refused here, with the key and the valid choices: the
configuration is planned (every point's optimizer built) before it is returned.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from valleys.bench.study.config import KINDS, OBJECTIVES, TRAINING_KEYS, StudyConfig
from valleys.bench.study.errors import StudyConfigError
from valleys.bench.study.spaces import parse_optimizers
from valleys.bench.study.validate import check_keys, integer, integer_list, number, table
from valleys.bench.tasks import TaskOptions, check_task_options, get_task_spec

__all__ = ["load_study_config", "parse_study_config", "read_study_file"]

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
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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

        [optimizers.alto_auto]          # a label: another variant of a registered optimizer
        optimizer = "alto"
        lr = 0.01
        target_perturbation = [0.02, 0.1]  # auto-E's rho (alpha then adapts from its start)

        [optimizers.alto_decay]
        optimizer = "alto"
        lr = 0.01
        e_schedule = "cosine"           # E's alpha decayed to 0 over each run (or "linear")

    Raises:
        StudyConfigError: the first problem, naming the key and the valid choices.
    """
    check_keys(data, _TOP_KEYS, "at the top level")
    for key in ("name", "task", "kind", "batch_sizes", "budget", "optimizers"):
        if key not in data:
            raise StudyConfigError(f"missing key {key!r} at the top level")
    name, task, kind = _parse_identity(data)
    task_options = _parse_task_options(task, data.get("task_options", {}))
    epochs, target, objective = _parse_budget(data["budget"])
    trials, sampler_seed = _parse_sampling(data, kind)
    batch_sizes = integer_list(data["batch_sizes"], "batch_sizes", minimum=1)
    seeds = integer_list(data.get("seeds", [0]), "seeds", minimum=0)
    storage = data.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage.strip()):
        raise StudyConfigError(f"storage must be a database URL, got {storage!r}")
    training = table(data.get("training", {}), "training")
    check_keys(training, TRAINING_KEYS, "in [training]")
    heartbeat, grace, max_retry = _parse_workers(data.get("workers", {}))
    flatness = data.get("flatness", False)
    if not isinstance(flatness, bool):
        raise StudyConfigError(f"flatness must be true or false, got {flatness!r}")
    config = StudyConfig(
        name=name,
        task=task,
        kind=kind,
        optimizers=parse_optimizers(data["optimizers"], kind, epochs, min(batch_sizes)),
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


def _parse_identity(data: Mapping[str, Any]) -> tuple[str, str, str]:
    """The study's name, task and kind."""
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
    return name, task, kind


def _parse_budget(value: Any) -> tuple[int, float | None, str]:
    """``[budget]``: epochs, target and objective."""
    budget = table(value, "budget")
    check_keys(budget, _BUDGET_KEYS, "in [budget]")
    if "epochs" not in budget:
        raise StudyConfigError("missing key 'epochs' in [budget]")
    epochs = integer(budget["epochs"], "budget.epochs", minimum=1)
    target = budget.get("target")
    if target is not None:
        target = number(target, "budget.target")
    objective = budget.get("objective", "best_metric")
    if objective not in OBJECTIVES:
        raise StudyConfigError(
            f"budget.objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}"
        )
    if objective == "time_to_target" and target is None:
        raise StudyConfigError("budget.objective 'time_to_target' needs budget.target")
    return epochs, target, objective


def _parse_sampling(data: Mapping[str, Any], kind: str) -> tuple[int | None, int]:
    """``trials`` and ``sampler_seed``: a random study's budget and seed, refused for a grid."""
    trials = data.get("trials")
    if kind == "random":
        if trials is None:
            raise StudyConfigError(
                "a random study needs 'trials': the number of configurations sampled per "
                "optimizer and batch size (the equal budget)"
            )
        trials = integer(trials, "trials", minimum=1)
    elif trials is not None:
        raise StudyConfigError("'trials' applies to random studies only; a grid runs every point")
    sampler_seed = integer(data.get("sampler_seed", 0), "sampler_seed", minimum=0)
    if kind == "grid" and "sampler_seed" in data:
        raise StudyConfigError("'sampler_seed' applies to random studies only")
    return trials, sampler_seed


def _parse_workers(value: Any) -> tuple[int, int, int]:
    """``[workers]``: heartbeat interval, grace period and retries of failed trials."""
    workers = table(value, "workers")
    check_keys(workers, _WORKER_KEYS, "in [workers]")
    heartbeat = integer(
        workers.get("heartbeat_interval", 10), "workers.heartbeat_interval", minimum=1
    )
    grace = integer(workers.get("grace_period", 6 * heartbeat), "workers.grace_period", minimum=1)
    if grace <= heartbeat:
        raise StudyConfigError(
            f"workers.grace_period ({grace} s) must exceed workers.heartbeat_interval "
            f"({heartbeat} s), or live trials would be failed"
        )
    max_retry = integer(workers.get("max_retry", 2), "workers.max_retry", minimum=0)
    return heartbeat, grace, max_retry


def _parse_task_options(task: str, value: Any) -> TaskOptions:
    """``[task_options]``: fields of :class:`~valleys.bench.tasks.TaskOptions` the task accepts."""
    settings = table(value, "task_options")
    check_keys(settings, [f.name for f in fields(TaskOptions)], "in [task_options]")
    try:
        options = TaskOptions(**settings)
        check_task_options(task, options)
    except (TypeError, ValueError) as exc:
        raise StudyConfigError(f"task_options: {exc}") from None
    return options
