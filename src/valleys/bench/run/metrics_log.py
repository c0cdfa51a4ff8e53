"""Metrics as JSON lines, mirrored to TensorBoard when it is installed.

One JSON object per line, each with a ``"kind"``: ``"step"`` (per optimizer step: loss, lr) or
``"epoch"`` (per epoch: train loss, test metrics, times). Lines are flushed as they are written, so
a killed run keeps every record up to the kill; a resumed run rewrites the file from its checkpoint,
so records past the checkpoint (from the interrupted epoch) do not appear twice.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from valleys.bench.run.checkpoint import RunFileWarning, atomic_write_bytes, parse_json

__all__ = ["MetricsLog", "read_metrics"]


def _line(record: Mapping[str, Any]) -> str:
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }
    return json.dumps(clean, allow_nan=False) + "\n"


class MetricsLog:
    """Append-only JSON-lines log of a run, plus TensorBoard scalars when importable.

    Args:
        path: the ``.jsonl`` file.
        history: records that must open the file (a resumed run's records up to its checkpoint);
            the file is rewritten atomically to hold exactly these before appending.
        tensorboard_dir: where to write TensorBoard events, or ``None`` for no TensorBoard.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        history: Iterable[Mapping[str, Any]] = (),
        tensorboard_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        atomic_write_bytes(self.path, "".join(_line(r) for r in history).encode())
        self._handle = self.path.open("a", encoding="utf-8")
        self._tensorboard = _open_tensorboard(tensorboard_dir) if tensorboard_dir else None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` (non-finite floats become ``null``) and mirror its numbers.

        Raises:
            OSError: the line cannot be written (a full disk); the message names the file.
        """
        try:
            self._handle.write(_line(record))
            self._handle.flush()
        except OSError as exc:
            raise self._append_error(exc) from exc
        if self._tensorboard is not None:
            kind = record.get("kind", "metrics")
            step = int(record.get("step", 0))
            for key, value in record.items():
                if key not in ("kind", "step") and isinstance(value, int | float):
                    self._tensorboard.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        """Close the file and the TensorBoard writer."""
        try:
            # Closing flushes what a failed write left buffered, which fails the same way.
            self._handle.close()
        except OSError as exc:
            raise self._append_error(exc) from exc
        if self._tensorboard is not None:
            self._tensorboard.close()

    def _append_error(self, exc: OSError) -> OSError:
        return OSError(exc.errno, f"cannot append to {self.path}: {exc.strerror or exc}")

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _open_tensorboard(directory: str | os.PathLike[str]) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional; the JSON lines hold everything it would.
        return None
    return SummaryWriter(log_dir=str(directory))


def read_metrics(path: str | os.PathLike[str], kind: str | None = None) -> list[dict[str, Any]]:
    """Read a metrics log, optionally only records of one ``kind``.

    A last line that is not a record (cut short or garbled by a kill while it was written) is
    dropped with a :class:`~valleys.bench.run.checkpoint.RunFileWarning`: it lies past the last
    checkpoint, whose records a resumed run rewrites. A bad line before the last is a
    ``ValueError`` naming the file and the line, since records a checkpoint covers would be lost.
    """
    records = []
    bad: ValueError | None = None
    # Undecodable bytes become U+FFFD, so a garbled line is reported as bad JSON with its number.
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if bad is not None:
                raise ValueError(f"{bad}; repair or remove that line") from None
            try:
                record = parse_json(line, f"{path} line {number}", dict)
            except ValueError as exc:
                bad = exc
                continue
            if kind is None or record.get("kind") == kind:
                records.append(record)
    if bad is not None:
        warnings.warn(
            f"{bad}; the line is dropped (a write cut short by a kill?)",
            RunFileWarning,
            stacklevel=2,
        )
    return records
