"""What every ``valleys`` command shares: exit statuses, argument types and the error line.

Argument types raise :class:`argparse.ArgumentTypeError`, so a bad value is a usage error that
argparse reports (``--lr: expected a finite number > 0, got nan``) and exits with
:data:`EXIT_USAGE`; errors found later by the library are printed by :func:`fail` as one
``valleys: error: ...`` line and the command exits with :data:`EXIT_ERROR`.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "comma_list",
    "fail",
    "finite_float",
    "float_check",
    "int_at_least",
    "key_value",
    "non_negative_float",
    "non_negative_int",
    "optimizer_list",
    "optimizer_name",
    "positive_float",
    "positive_int",
    "seed_list",
]

EXIT_ERROR = 1
"""A command that could not do its work (bad input found by the library, a run that failed)."""
EXIT_USAGE = 2
"""A command line argparse refused; argparse itself exits with it."""
EXIT_INTERRUPTED = 130
"""Ctrl-C or SIGTERM, as a shell reports a process ended by SIGINT (128 + 2)."""


def fail(error: BaseException | str) -> int:
    """Print ``valleys: error: ...`` on stderr; return :data:`EXIT_ERROR` for the command to exit."""
    print(f"valleys: error: {error}", file=sys.stderr)
    return EXIT_ERROR


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argument type accepting integers ``>= minimum``, with a message naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def float_check(ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argument type accepting finite floats for which ``ok`` holds; ``expected`` says which."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


positive_float = float_check(lambda v: v > 0, "a finite number > 0")
non_negative_float = float_check(lambda v: v >= 0, "a finite number >= 0")
finite_float = float_check(lambda v: True, "a finite number")


def comma_list(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated value (possibly none)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def seed_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers >= 0, at least one."""
    items = comma_list(text)
    if not items:
        raise argparse.ArgumentTypeError("expected comma-separated integers >= 0")
    return tuple(non_negative_int(item) for item in items)


def optimizer_name(text: str) -> str:
    """A registered optimizer name; the error lists the valid ones."""
    from valleys.bench.run.config import check_optimizer_name

    try:
        check_optimizer_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def optimizer_list(text: str) -> tuple[str, ...]:
    """Comma-separated registered optimizer names, at least one."""
    names = tuple(comma_list(text))
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated optimizer names")
    for name in names:
        optimizer_name(name)
    return names


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a Python literal where it is one, else kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value
