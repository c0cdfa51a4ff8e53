"""Metrics as JSON lines, mirrored to TensorBoard on request.

One JSON object per line, each with a ``"kind"``: ``"step"`` (per optimizer step: loss, lr, E's
``e_perturbation`` and ``e_cosine`` when the optimizer has E) or ``"epoch"`` (per epoch: train loss,
test metrics, times). Lines are flushed as they are written, so a killed run keeps every record up
to the kill; a resumed run rewrites the file from its checkpoint, so records past the checkpoint
(from the interrupted epoch) do not appear twice.

With a TensorBoard folder, every number of a record becomes the scalar ``<kind>/<key>`` at the
record's ``step`` (``step/loss``, ``step/e_cosine``, ``epoch/test_accuracy``, ...). The folder is
rewritten the same way as the file: its event files are replaced by the records a resumed run starts
with, so TensorBoard shows exactly what ``metrics.jsonl`` holds.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from valleys.bench.run.checkpoint import RunFileWarning, atomic_write_bytes, parse_json

__all__ = ["MetricsLog", "read_metrics", "require_tensorboard"]

_AXES = ("kind", "step", "epoch")
"""Record keys that place a record (its tag group and x axis) rather than measure something."""


def _line(record: Mapping[str, Any]) -> str:
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }
    return json.dumps(clean, allow_nan=False) + "\n"


class MetricsLog:
    """Append-only JSON-lines log of a run, plus TensorBoard scalars when asked for.

    Args:
        path: the ``.jsonl`` file.
        history: records that must open the file (a resumed run's records up to its checkpoint);
            the file is rewritten atomically to hold exactly these before appending.
        tensorboard_dir: where to write TensorBoard events (its old event files are replaced by
            ``history``), or ``None`` for no TensorBoard.

    Raises:
        ValueError: ``tensorboard_dir`` is given and TensorBoard is not installed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        history: Iterable[Mapping[str, Any]] = (),
        tensorboard_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        history = list(history)
        atomic_write_bytes(self.path, "".join(_line(r) for r in history).encode())
        self._tensorboard = _open_tensorboard(Path(tensorboard_dir)) if tensorboard_dir else None
        for record in history:
            self._mirror(record)
        self._handle = self.path.open("a", encoding="utf-8")

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
        self._mirror(record)

    def _mirror(self, record: Mapping[str, Any]) -> None:
        """Write the numbers of ``record`` as TensorBoard scalars, if this log has a writer."""
        if self._tensorboard is None:
            return
        kind = record.get("kind", "metrics")
        step = int(record.get("step", 0))
        for key, value in record.items():
            # bool is an int, but no record's flag is a curve worth plotting.
            if key not in _AXES and isinstance(value, int | float) and not isinstance(value, bool):
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


def require_tensorboard() -> None:
    """Raise ``ValueError`` saying how to install TensorBoard when it is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "TensorBoard output needs the tensorboard package: pip install 'valleys[integrations]'"
        )


def _open_tensorboard(directory: Path) -> Any:
    """A writer into ``directory``, after removing the event files of an earlier attempt (their
    records past the checkpoint must not show, and those before it are written again)."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    for old in directory.glob("events.out.tfevents.*"):
        old.unlink()
    # Flushed every few seconds, so that a running TensorBoard follows the run.
    return SummaryWriter(log_dir=str(directory), flush_secs=5)


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
