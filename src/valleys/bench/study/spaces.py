"""Search spaces: what a study may vary per optimizer, and how a study file states it.

A parameter's space is a list of grid values, one fixed number, or a :class:`Range` a random study
samples from; any space may depend on the batch size (``by_batch_size``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from valleys.bench.study.errors import StudyConfigError
from valleys.bench.study.validate import check_keys, number, table

if TYPE_CHECKING:
    from valleys.optim.registry import OptimizerInfo

__all__ = [
    "PARAMETERS",
    "SETTINGS",
    "OptimizerSpace",
    "Range",
    "Space",
    "parse_optimizers",
    "quick_space",
    "space_to_data",
]

PARAMETERS = (
    "lr",
    "weight_decay",
    "alpha",
    "beta1",
    "momentum",
    "warmup_epochs",
    "target_perturbation",
)
"""Parameters a search space may cover. ``beta1`` is E's β1 (``betas[0]`` or ``beta``);
``target_perturbation`` is auto-E's ρ (α then adapts, starting from ``alpha``)."""

SETTINGS = ("optimizer", "e_schedule")
"""Fixed keys an ``[optimizers.<label>]`` table may hold besides its parameters: the registered
optimizer when the label is another name (several variants of one optimizer in a study), and how
E's α follows each run (:data:`valleys.bench.run.schedules.E_SCHEDULES`)."""

_RANGE_KEYS = ("low", "high", "log")
_BY_BATCH = "by_batch_size"


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
        label: the table's name, when it is not ``optimizer`` (a variant of it).
        e_schedule: how E's α follows each run.
    """

    optimizer: str
    params: dict[str, list[tuple[int, Space]]]
    label: str | None = None
    e_schedule: str = "constant"

    @property
    def name(self) -> str:
        """What the study calls this optimizer: its label, else its registered name."""
        return self.label or self.optimizer

    def at(self, batch_size: int) -> dict[str, Space]:
        """The space of every parameter at ``batch_size``."""
        return {
            name: [space for start, space in steps if start <= batch_size][-1]
            for name, steps in self.params.items()
        }


def quick_space(name: str, space: Space) -> Space:
    """``space`` cut for a smoke test: two grid values, warmup at most one epoch."""
    if isinstance(space, Range):
        if name != "warmup_epochs":
            return space
        low, high = min(space.low, 1.0), min(space.high, 1.0)
        return Range(low, high, space.log) if low < high else (low,)
    values = space[:2]
    if name == "warmup_epochs":
        values = tuple(dict.fromkeys(min(v, 1.0) for v in values))
    return values


def space_to_data(space: Space) -> Any:
    """``space`` as JSON data."""
    if isinstance(space, Range):
        return {"low": space.low, "high": space.high, "log": space.log}
    return list(space)


# Domain of each parameter: (check, description) — ranges must lie inside it too.
_DOMAINS: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "> 0"),
    "target_perturbation": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "alpha": (lambda v: True, "a finite number"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
}


def parse_optimizers(
    value: Any, kind: str, epochs: int, smallest_batch: int
) -> list[OptimizerSpace]:
    """The ``[optimizers]`` table: one search space per table, ``lr`` required.

    A table is named by a registered optimizer, or by a label of its own with the registered
    name under ``optimizer`` (so that one optimizer can appear as several variants).
    """
    optimizers = table(value, "optimizers")
    if not optimizers:
        raise StudyConfigError("[optimizers] must name at least one optimizer")
    spaces = []
    for name, params in optimizers.items():
        params = table(params, f"optimizers.{name}")
        info = _registered(name, params.get("optimizer", name))
        valid = _valid_parameters(info)
        check_keys(params, valid, f"in [optimizers.{name}] (what {info.name} takes)")
        if "lr" not in params:
            raise StudyConfigError(f"missing key 'lr' in [optimizers.{name}]")
        parsed = {
            param: _parse_param(params[param], param, kind, epochs, smallest_batch, name)
            for param in PARAMETERS
            if param in params
        }
        label = name if name != info.name else None
        e_schedule = _parse_e_schedule(params, name)
        if e_schedule != "constant" and "target_perturbation" in parsed:
            raise StudyConfigError(
                f"[optimizers.{name}]: e_schedule and target_perturbation both set E's alpha; "
                "give one of them"
            )
        spaces.append(OptimizerSpace(info.name, parsed, label, e_schedule))
    return spaces


def _registered(name: str, optimizer: Any) -> OptimizerInfo:
    from valleys.optim import optimizer_info

    if not isinstance(optimizer, str):
        raise StudyConfigError(
            f"optimizers.{name}.optimizer must be a registered optimizer name, got {optimizer!r}"
        )
    try:
        info = optimizer_info(optimizer)
    except ValueError as exc:
        raise StudyConfigError(f"[optimizers.{name}]: {exc}") from None
    if info.name != optimizer:
        raise StudyConfigError(
            f"[optimizers.{name}]: write optimizer {optimizer!r} as {info.name!r}"
        )
    return info


def _parse_e_schedule(params: Mapping[str, Any], name: str) -> str:
    from valleys.bench.run.schedules import E_SCHEDULES

    e_schedule = params.get("e_schedule", "constant")
    if e_schedule not in E_SCHEDULES:
        raise StudyConfigError(
            f"optimizers.{name}.e_schedule must be one of {', '.join(E_SCHEDULES)}, "
            f"got {e_schedule!r}"
        )
    return str(e_schedule)


def _valid_parameters(info: OptimizerInfo) -> list[str]:
    """The keys a study may set for this optimizer: the parameters its constructor takes, and
    :data:`SETTINGS` (``e_schedule`` only where it applies E)."""
    optional = ("weight_decay", "momentum", "alpha", "beta1", "target_perturbation")
    settings = [key for key in SETTINGS if key != "e_schedule" or info.explores]
    return [
        "lr",
        "warmup_epochs",
        *(name for name in optional if info.accepts(name)),
        *settings,
    ]


def _parse_param(
    value: Any, name: str, kind: str, epochs: int, smallest_batch: int, optimizer: str
) -> list[tuple[int, Space]]:
    where = f"optimizers.{optimizer}.{name}"
    if isinstance(value, Mapping) and _BY_BATCH in value:
        check_keys(value, (_BY_BATCH,), f"in {where}")
        steps_table = table(value[_BY_BATCH], f"{where}.{_BY_BATCH}")
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
        checked = number(v, label)
        if not check(checked):
            raise StudyConfigError(f"{label} must be {expected}, got {v!r}")
        return checked

    if isinstance(value, Mapping):
        if kind == "grid":
            raise StudyConfigError(
                f"{where}: a grid study takes a list of values or one number, not a range "
                f"(ranges {{low, high, log}} are for random studies)"
            )
        check_keys(value, _RANGE_KEYS, f"in {where}")
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
