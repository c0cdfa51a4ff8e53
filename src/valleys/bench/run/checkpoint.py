"""Crash-safe files: atomic writes, checkpoints that refuse to load into the wrong run, RNG state.

A file is written next to its destination under a temporary name, flushed to disk and moved into
place with :func:`os.replace`, so a kill at any moment leaves either the old file or the new one,
never a torn one (a kill can leave the temporary file, which :func:`remove_stale_temporaries`
deletes when the run starts again). A write that fails (a full disk) raises an :class:`OSError`
naming the file, and the old file stays. JSON is read by :func:`read_json` alone, whose errors name
the file, and output folders are checked with :func:`writable_dir` before work whose results go
there. Checkpoints carry a *fingerprint* of everything that shapes the trajectory (task,
model, optimizer, batch, schedule, seed, ...); loading one into a run with a different fingerprint
is refused, because silently continuing a different experiment would corrupt its results.

FSDP runs keep model and optimizer out of the checkpoint file: every rank writes its shards with
``torch.distributed.checkpoint`` to a folder named in the file (one folder per epoch, the older
ones deleted only once the file naming the new one is in place), and any world size, one process
included, can load them (:func:`load_model_and_optimizer`).
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "RunFileWarning",
    "atomic_write_bytes",
    "get_rng_state",
    "load_checkpoint",
    "load_model_and_optimizer",
    "parse_json",
    "read_json",
    "remove_stale_shards",
    "remove_stale_temporaries",
    "save_checkpoint",
    "save_sharded",
    "set_rng_state",
    "writable_dir",
    "writable_file",
    "write_json_atomic",
]

CHECKPOINT_VERSION = 1
SHARDED_PREFIX = "checkpoint-shards-"
"""Name prefix of the folders of an FSDP run's model and optimizer shards."""
_REQUIRED_KEYS = ("version", "fingerprint", "epoch", "model", "optimizer", "scheduler", "rng")
_TEMPORARY = ".*.tmp"
"""Names of the temporary files :func:`atomic_write_bytes` writes (``.<name>.<random>.tmp``)."""
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, incomplete, or written by a different run."""


class RunFileWarning(UserWarning):
    """A run's file was damaged (a line cut by a kill, records missing) and the run goes on."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers only ever see the old or the complete new file.

    Raises:
        OSError: the file cannot be written (full disk, read-only folder, ...); its message names
            ``path`` and says that the old file, if any, is unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = _create_temporary(path)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        # Also on KeyboardInterrupt: never leave a stray temporary file behind.
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new file beside ``path`` matching :data:`_TEMPORARY`, opened for writing.

    Not ``tempfile.mkstemp``: it creates files with mode 0600, while a run's results are meant to
    be readable as a plain ``open()`` leaves them (0666 less the umask).
    """
    while True:
        name = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:
            continue


def _write_error(path: Path, exc: OSError) -> OSError:
    reason = exc.strerror or str(exc)
    return OSError(
        exc.errno, f"cannot write {path} ({reason}); the previous {path.name}, if any, is unchanged"
    )


def writable_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` once files can be written in it, or in the folder it would be created in: called
    before work whose results go there, so that a read-only or misspelt folder fails at once and
    not at the end. Nothing is created (a probe file is written and deleted).

    Raises:
        OSError: the folder cannot be written or created; the message names it and why.
    """
    path = Path(path)
    _probe(path, f"write to {path}")
    return path


def writable_file(path: str | os.PathLike[str]) -> Path:
    """``path`` once it could be written as :func:`writable_dir` checks a folder, and is no folder."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"cannot write {path}: it is a folder")
    _probe(path.parent, f"write {path}")
    return path


def _probe(folder: Path, action: str) -> None:
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"cannot {action}: {existing} is a file, not a folder"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot {action}: {exc.strerror or exc}") from exc


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> None:
    """Delete the temporary files that writes killed before their rename left in ``folder``."""
    for path in Path(folder).glob(_TEMPORARY):
        path.unlink(missing_ok=True)


def parse_json(text: str, source: str, expected: type | None = None) -> Any:
    """The JSON value in ``text``, read from ``source`` (a file, or a file and line).

    Raises:
        ValueError: ``text`` is not JSON, or not of the ``expected`` type; the message names
            ``source``, and the line and column of a syntax error.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # One line of a JSON-lines file is named by ``source``; only its column is news.
        one_line = "\n" not in text.rstrip("\n")
        where = f"column {exc.colno}" if one_line else f"line {exc.lineno} column {exc.colno}"
        raise ValueError(f"{source} is not valid JSON ({exc.msg} at {where})") from None
    if expected is not None and not isinstance(value, expected):
        raise ValueError(
            f"{source} should hold a JSON {_JSON_TYPES.get(expected, expected.__name__)}, "
            f"found {_JSON_TYPES.get(type(value), 'number')}"
        )
    return value


def read_json(path: str | os.PathLike[str], expected: type | None = dict) -> Any:
    """The JSON value in the file ``path`` (by default it must be an object); every JSON file the
    harness reads is read here, so that every error names its file.

    Raises:
        ValueError: not UTF-8 text, not JSON, or not of the ``expected`` type.
        OSError: the file cannot be read (missing, a folder, no permission).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a JSON file (not UTF-8 text)") from None
    return parse_json(text, str(path), expected)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Atomically write ``obj`` as JSON, indented by ``indent`` (None: compact); NaN and inf are
    written as JSON ``null``."""
    text = json.dumps(_json_safe(obj), indent=indent, sort_keys=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats by ``None``: strict JSON has no NaN, and a diverged run has some."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def get_rng_state() -> dict[str, Any]:
    """Every RNG a training step can draw from: torch CPU, each CUDA device, Python's ``random``."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore RNG states captured by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` needs tuples; serialisation may hand back lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Atomically save a checkpoint ``payload`` (see :func:`load_checkpoint` for its keys)."""
    missing = [k for k in _REQUIRED_KEYS if k != "version" and k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {', '.join(missing)}")
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(
    path: str | os.PathLike[str], *, fingerprint: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` and check that it belongs to this run.

    Args:
        path: the checkpoint file.
        fingerprint: the current run's fingerprint; when given, every key must match the stored one.

    Raises:
        CheckpointError: the file is missing, unreadable (truncated, corrupt, not a checkpoint),
            lacks required entries, has another format version, or was written by a run whose
            fingerprint differs; the message says which and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # weights_only: a checkpoint is data, and loading one must not run arbitrary pickled code.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read ({type(exc).__name__}: "
            f"{exc}); delete it to start over, or write the new run to another directory"
        ) from exc
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path} is not a valleys checkpoint (found {type(payload).__name__})"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is not a complete valleys checkpoint: lacks {missing}")
    if payload["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['version']}, this valleys reads "
            f"{CHECKPOINT_VERSION}"
        )
    if fingerprint is not None:
        differences = _fingerprint_differences(payload["fingerprint"], fingerprint)
        if differences:
            raise CheckpointError(
                f"checkpoint {path} was written by a different run and cannot be resumed here "
                f"({'; '.join(differences)}); rerun with the checkpoint's settings, or write the "
                "new run to another directory"
            )
    return payload


def _fingerprint_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    # Compare through JSON so tuples vs lists and int vs float spellings of equal numbers agree.
    stored_n = json.loads(json.dumps(_json_safe(dict(stored)), sort_keys=True))
    current_n = json.loads(json.dumps(_json_safe(dict(current)), sort_keys=True))
    return [
        f"{key}: checkpoint {stored_n.get(key)!r}, now {current_n.get(key)!r}"
        for key in sorted(set(stored_n) | set(current_n))
        if stored_n.get(key) != current_n.get(key)
    ]


def save_sharded(
    folder: str | os.PathLike[str], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Save an FSDP model's and optimizer's shards to ``folder`` (a collective: every rank calls
    it); their names are the parameters' fully qualified names, so any world size can load them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=Path(folder))


def load_model_and_optimizer(
    payload: Mapping[str, Any],
    run_dir: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Load a checkpoint's model and optimizer state, from the file or from an FSDP run's shards.

    The shards are gathered into whole tensors first (into a temporary file), then
    ``set_state_dict`` loads them into ``model``, sharded or not: a fresh optimizer has no state
    yet for ``torch.distributed.checkpoint`` to load into in place. This holds the whole state in
    each process's memory once, acceptable for the models this harness trains.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if payload.get("sharded") is None:
        if not _is_sharded(model):
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            return
        # A whole-tensor checkpoint (one process, or DDP) resumed under FSDP.
        set_state_dict(
            model,
            optimizer,
            model_state_dict=payload["model"],
            optim_state_dict=_by_name(payload["optimizer"], model, optimizer),
            options=StateDictOptions(full_state_dict=True),
        )
        return
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = Path(run_dir) / payload["sharded"]
    if not folder.is_dir():
        raise CheckpointError(f"the checkpoint's shards are missing: no folder {folder}")
    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / "whole.pt"
        dcp_to_torch_save(folder, whole)
        state = torch.load(whole, map_location="cpu", weights_only=True)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(full_state_dict=True),
    )


def _is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _by_name(
    state_dict: Mapping[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter index rewritten with the parameters' names, the
    form ``set_state_dict`` takes (indices count through ``optimizer``'s groups, in order)."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = [
        {**group, "params": [order[i] for i in group["params"]]}
        for group in state_dict["param_groups"]
    ]
    state = {order[int(i)]: entry for i, entry in state_dict["state"].items()}
    return {"state": state, "param_groups": groups}


def remove_stale_shards(run_dir: str | os.PathLike[str], keep: str | None) -> None:
    """Delete the shard folders of earlier epochs once the checkpoint names ``keep`` (or none)."""
    for folder in Path(run_dir).glob(f"{SHARDED_PREFIX}*"):
        if folder.name != keep:
            shutil.rmtree(folder, ignore_errors=True)
