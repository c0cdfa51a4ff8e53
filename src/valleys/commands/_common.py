"""What every ``valleys`` command shares: exit statuses, argument types and the error line.

Argument types raise :class:`argparse.ArgumentTypeError`, so a bad value is a usage error that
argparse reports (``--lr: expected a finite number > 0, got nan``) and exits with
:data:`EXIT_USAGE`; errors found later by the library, and errors of the environment (a folder
that cannot be written, a full disk), are printed by :func:`fail` as one ``valleys: error: ...``
line and the command exits with :data:`EXIT_ERROR`. :func:`warn` prints the library's warnings
about damaged run files the same way, as one ``valleys: warning: ...`` line.
"""

from __future__ import annotations

import argparse
import ast
import math
import signal
import sys
import warnings
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
    "name_list",
    "non_negative_float",
    "non_negative_int",
    "optimizer_list",
    "optimizer_name",
    "positive_float",
    "positive_int",
    "run_command",
    "seed_list",
    "warn",
]

EXIT_ERROR = 1
"""A command that could not do its work (bad input found by the library, a run that failed)."""
EXIT_USAGE = 2
"""A command line argparse refused; argparse itself exits with it."""
EXIT_INTERRUPTED = 130
"""Ctrl-C or SIGTERM, as a shell reports a process ended by SIGINT (128 + 2)."""


def fail(error: BaseException | str) -> int:
    """Print ``valleys: error: ...`` on stderr; return :data:`EXIT_ERROR` for the command to exit.

    An :class:`OSError` is shown as its reason and file, without the ``[Errno N]`` prefix.
    """
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename is not None else ""
        error = where + error.strerror
    print(f"valleys: error: {error}", file=sys.stderr)
    return EXIT_ERROR


def warn(message: Warning | str) -> None:
    """Print ``valleys: warning: ...`` on stderr."""
    print(f"valleys: warning: {message}", file=sys.stderr)


def run_command(command: Callable[[], int]) -> int:
    """Run a command's ``command`` and return its exit status, with the errors a user can act on
    (bad input, a folder that cannot be written, a damaged file) ended as one ``valleys: error``
    line, warnings about damaged run files as ``valleys: warning`` lines, and SIGTERM treated as
    Ctrl-C."""
    from valleys.bench.data import DatasetMissing
    from valleys.bench.run.checkpoint import CheckpointError, RunFileWarning

    default = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
        if issubclass(category, RunFileWarning):
            warn(message)
        else:
            default(message, category, *rest, **kw)

    # A kill (SIGTERM) stops a run the way Ctrl-C does: results and checkpoints are recorded and
    # worker processes are stopped instead of being left behind.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            warnings.simplefilter("always", RunFileWarning)
            return command()
    except KeyboardInterrupt:
        print(
            "valleys: interrupted; finished results and the last checkpoint are kept",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    # OSError: the environment (a folder that cannot be written, a full disk), named by its file.
    except (ValueError, OSError, CheckpointError, DatasetMissing) as exc:
        return fail(exc)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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


def name_list(text: str) -> list[str]:
    """Comma-separated names, at least one."""
    items = comma_list(text)
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return items


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
