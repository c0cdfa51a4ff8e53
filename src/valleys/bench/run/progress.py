"""Progress on long work: a tqdm bar on a terminal, plain lines elsewhere.

Shared by a training run (steps) and by compare and study (runs): on a terminal a bar redraws in
place and messages print above it; when stderr is a file or a pipe the bar is off and every
message is one flushed line, so logs stay line-oriented.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def progress_bar(
    total: int,
    *,
    unit: str,
    quiet: bool,
    description: str | None = None,
    initial: int = 0,
    leave: bool = True,
) -> Any:
    """A tqdm bar on stderr, disabled when ``quiet`` or when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit=unit,
        leave=leave,
        dynamic_ncols=True,
        disable=quiet or not sys.stderr.isatty(),
    )


def emit(message: str, bar: Any, log: Callable[[str], None] | None = None) -> None:
    """Send ``message`` to ``log`` if given, else above ``bar``, else as a line on stderr."""
    if log is not None:
        log(message)
    elif not bar.disable:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)
