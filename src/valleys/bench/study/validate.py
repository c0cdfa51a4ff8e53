"""Checks of raw settings read from a study file, each failing with the key it was given under."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from valleys.bench.study.errors import StudyConfigError

__all__ = ["check_keys", "integer", "integer_list", "number", "table"]


def check_keys(table: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    """Refuse a key of ``table`` not in ``valid``, listing the valid ones."""
    for key in table:
        if key not in valid:
            raise StudyConfigError(
                f"unknown key {key!r} {where}; valid keys: {', '.join(sorted(valid))}"
            )


def table(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` if it is a table of settings."""
    if not isinstance(value, Mapping):
        raise StudyConfigError(f"[{where}] must be a table of settings, got {value!r}")
    return value


def number(value: Any, where: str) -> float:
    """``value`` as a float if it is a finite number (not a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StudyConfigError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def integer(value: Any, where: str, *, minimum: int) -> int:
    """``value`` if it is an integer (not a boolean) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StudyConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def integer_list(value: Any, where: str, *, minimum: int) -> list[int]:
    """``value`` if it is a non-empty list of distinct integers of at least ``minimum``."""
    if not isinstance(value, list) or not value:
        raise StudyConfigError(f"{where} must be a non-empty list of integers, got {value!r}")
    items = [integer(v, where, minimum=minimum) for v in value]
    if len(set(items)) != len(items):
        raise StudyConfigError(f"{where} must not repeat values, got {items}")
    return items
