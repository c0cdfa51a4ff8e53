"""Step plumbing shared by every valleys optimizer: the closure, and the step of a wrapped one.

torch's contract for ``step(closure)``: the closure is called once, with grad enabled, before any
gradient is read. An optimizer that steps others inside its own step (``Explore`` around its base,
``MuonAdamW`` around Muon and AdamW) takes one step, so torch's global step hooks must see it once.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.optim import optimizer as optimizer_module


def evaluate_closure(closure: Callable[[], float] | None) -> float | None:
    """The loss of ``closure`` evaluated once with grad enabled (``step`` runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


@contextlib.contextmanager
def without_global_step_hooks() -> Iterator[None]:
    """A context in which torch's global optimizer step hooks do not run.

    They ran for the Explore step around the base optimizer's, which is part of that one step:
    a hook counting steps or timing them must see it once. The base optimizer's own step hooks
    still run. torch looks the global hook tables up by name on every step, so empty ones are put
    in their place; a hook registered meanwhile is kept, and removing one meanwhile still works
    (its handle refers to the real table). Another thread stepping an optimizer at the same time
    would miss the global hooks too.
    """
    names = ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")
    tables: list[OrderedDict[int, Any] | None] = [
        getattr(optimizer_module, name, None) for name in names
    ]
    if not any(tables) or None in tables:  # no global hooks (the usual case); an unknown torch
        yield
        return
    stand_ins: list[OrderedDict[int, Any]] = [OrderedDict() for _ in names]
    for name, stand_in in zip(names, stand_ins, strict=True):
        setattr(optimizer_module, name, stand_in)
    try:
        yield
    finally:
        for name, table, stand_in in zip(names, tables, stand_ins, strict=True):
            assert table is not None
            setattr(optimizer_module, name, table)
            table.update(stand_in)
