"""Starting a training run: its configuration and folder, and the process group of a torchrun job.

A run is started from the options a user gave (TrainConfig and TaskOptions field names, see
:data:`OPTION_NAMES`): a new run applies them to the defaults; a resumed run applies them to the
configuration stored in its folder, so only what is given changes. Only a folder with a checkpoint
can be resumed: resuming one without would start a new run over the old one's files.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from valleys.bench.run.config import CHECKPOINT_FILE, CONFIG_FILE, TrainConfig, load_config
from valleys.bench.run.distributed import init_distributed
from valleys.bench.tasks import TaskOptions

__all__ = [
    "OPTION_NAMES",
    "TASK_OPTION_NAMES",
    "apply_options",
    "is_lead",
    "prepare_run",
    "run_distributed",
    "shared",
]

TASK_OPTION_NAMES = tuple(f.name for f in fields(TaskOptions))
"""Options that go into :attr:`TrainConfig.task_options` rather than the config itself."""
OPTION_NAMES = frozenset(f.name for f in fields(TrainConfig)) | frozenset(TASK_OPTION_NAMES)
"""Every option a run can be given, TrainConfig and TaskOptions fields in one namespace."""


def apply_options(config: TrainConfig, given: Mapping[str, Any]) -> TrainConfig:
    """``config`` with the ``given`` options (names of :data:`OPTION_NAMES`) replaced."""
    options = {k: given[k] for k in TASK_OPTION_NAMES if k in given}
    changes = {k: v for k, v in given.items() if k not in TASK_OPTION_NAMES}
    if options:
        changes["task_options"] = replace(config.task_options, **options)
    return replace(config, **changes)


def prepare_run(
    given: Mapping[str, Any], *, resume: Path | None = None, out: Path | None = None
) -> tuple[TrainConfig, Path]:
    """The configuration and folder of a run: ``resume``'s stored one with ``given`` applied, or a
    new, validated one in ``out`` (default ``runs/train-<task>-<optimizer>-<time>``, the time
    rank 0's in a distributed run, so that every rank writes to the same folder).

    Raises:
        FileNotFoundError: ``resume`` holds no configuration or no checkpoint to resume from.
        ValueError: the stored configuration is unreadable, or the new one invalid.
    """
    if resume is not None:
        stored = resume / CONFIG_FILE
        if not stored.is_file():
            raise FileNotFoundError(f"no run to resume in {resume} ({CONFIG_FILE} missing)")
        if not (resume / CHECKPOINT_FILE).is_file():
            raise FileNotFoundError(
                f"cannot resume {resume}: {resume / CHECKPOINT_FILE} is missing, so no epoch of "
                f"it can be continued; to start afresh, train with --out into a new folder (or "
                f"delete {resume} first)"
            )
        return apply_options(load_config(stored), given), resume
    config = apply_options(TrainConfig(), given)
    config.validate()
    # Every rank takes part in the broadcast, whether or not the folder was given.
    stamp = shared(datetime.now().strftime("%Y%m%d-%H%M%S"))
    return config, out or Path(f"runs/train-{config.task}-{config.optimizer}-{stamp}")


def run_distributed(device: str, run: Callable[[], int]) -> NoReturn:
    """Run ``run`` as one rank of a torchrun job and end the process with its status.

    Joins the process group before anything else, so that every rank agrees on the run folder,
    and leaves it at the end; a finished run then ends its process at once, because FSDP
    processes on gloo can abort at interpreter exit after a successful run.
    """
    import torch.distributed as dist

    init_distributed(device)
    try:
        status = run()
    except BaseException:
        # The error is reported as for any run; a rare abort at exit cannot hide it.
        dist.destroy_process_group()
        raise
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def is_lead() -> bool:
    """Rank 0 of a distributed run, or the only process."""
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def shared(value: str) -> str:
    """Rank 0's ``value`` on every rank of a distributed run."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return str(box[0])
