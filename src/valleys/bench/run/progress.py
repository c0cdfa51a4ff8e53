"""Progress on long work: a tqdm bar on a terminal, plain lines elsewhere.

Shared by a training run (micro-batches) and by compare and study (runs): on a terminal a bar
redraws in place and messages print above it; when stderr is a file or a pipe the bar is off and
every message is one flushed line, so logs stay line-oriented.

Before a long CPU run, :func:`slow_cpu_warning` says when an epoch will take minutes. Its rule was
measured on this project's 2-core CPU (one thread, fp32, micro-batches of 512, Fashion-MNIST):
training (forward and backward) runs at 28-105 GFLOP/s per thread (small CNN 28, ResNet-20 47, the
MLP 105), so an epoch takes about 3 × forward FLOPs per example × examples / (40 GFLOP/s × threads):
ResNet-20 estimated 4.6 min, measured 3.9; the small CNN 38 s, measured 54 s; the MLP 2 s. The
parameter count does not predict it: the MLP and ResNet-20 both have 0.27 M parameters, and
ResNet-20's epoch takes 230× longer (a convolution reuses each weight at every position).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

# Training FLOPs per second on one CPU thread (see the module docstring), and the estimated epoch
# length from which a run on the CPU is announced as slow.
CPU_FLOPS_PER_THREAD = 40e9
SLOW_EPOCH_SECONDS = 60.0


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


def slow_cpu_warning(
    model_name: str, forward_flops: int, examples: int, threads: int
) -> str | None:
    """The line announcing a slow epoch on the CPU, or None when one should take under a minute.

    ``forward_flops``: one example's forward pass; ``examples``: trained per epoch; ``threads``:
    torch's intra-op threads.
    """
    seconds = 3 * forward_flops * examples / (CPU_FLOPS_PER_THREAD * threads)
    if seconds < SLOW_EPOCH_SECONDS:
        return None
    return (
        f"note: {model_name} on the CPU: about {seconds / 60:.0f} min per epoch "
        f"({forward_flops / 1e6:.0f} MFLOP per example × {examples} examples on {threads} "
        f"thread{'s' if threads > 1 else ''}); a GPU (--device cuda) or a smaller model is faster"
    )


def emit(message: str, bar: Any | None, log: Callable[[str], None] | None = None) -> None:
    """Send ``message`` to ``log`` if given, else above ``bar``, else as a line on stderr."""
    if log is not None:
        log(message)
    elif bar is not None and not bar.disable:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)
