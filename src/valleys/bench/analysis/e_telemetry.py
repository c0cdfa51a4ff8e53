r"""E's telemetry of finished runs: its perturbation and cosine over the steps, as a figure.

Runs of optimizers with E log, per step, ``e_perturbation`` :math:`\lVert\hat g - g\rVert /
\lVert g\rVert` and ``e_cosine`` :math:`\cos(\hat g, g)` in their ``metrics.jsonl`` (see
``valleys.optim._telemetry``); runs without E log neither and are left out.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from valleys.bench.run.config import METRICS_FILE
from valleys.bench.run.metrics_log import read_metrics

__all__ = ["E_FIELDS", "Series", "e_series", "plot_e_telemetry"]

E_FIELDS = ("e_perturbation", "e_cosine")

Series = tuple[list[int], list[float], list[float]]
"""Steps, perturbations and cosines of one run."""


def e_series(run_dir: str | os.PathLike[str] | None) -> Series | None:
    """The run's E telemetry per step; None when it logged none (no E, an older run, no folder)."""
    if run_dir is None or not (Path(run_dir) / METRICS_FILE).exists():
        return None
    records = [
        r
        for r in read_metrics(Path(run_dir) / METRICS_FILE, kind="step")
        if all(isinstance(r.get(k), float) and math.isfinite(r[k]) for k in E_FIELDS)
    ]
    if not records:
        return None
    return (
        [r["step"] for r in records],
        [r["e_perturbation"] for r in records],
        [r["e_cosine"] for r in records],
    )


def plot_e_telemetry(
    series: Mapping[str, Iterable[Series]], path: str | os.PathLike[str], title: str
) -> Path | None:
    """Draw E's perturbation and cosine against the step, one colour per label (each of its runs
    one line); None, and no file, when no label has any."""
    from matplotlib.figure import Figure

    drawn = {label: list(runs) for label, runs in series.items()}
    drawn = {label: runs for label, runs in drawn.items() if runs}
    if not drawn:
        return None
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    perturbation, cosine = figure.subplots(1, 2)
    for colour, (label, runs) in enumerate(drawn.items()):
        for i, (steps, values, cosines) in enumerate(runs):
            name = label if i == 0 else None
            perturbation.plot(steps, values, color=f"C{colour}", linewidth=0.8, label=name)
            cosine.plot(steps, cosines, color=f"C{colour}", linewidth=0.8, label=name)
    perturbation.set_ylabel(r"$\|\hat g - g\| / \|g\|$")
    perturbation.set_yscale("log")
    cosine.set_ylabel(r"$\cos(\hat g, g)$")
    for axis in (perturbation, cosine):
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    perturbation.legend()
    figure.suptitle(title)
    out = Path(path)
    figure.savefig(out, dpi=110)
    return out
