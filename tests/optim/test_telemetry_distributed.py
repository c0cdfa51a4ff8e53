"""E's telemetry under FSDP2 and DDP (2 gloo processes) equals one process on the full batch.

Under FSDP2 each rank's kernels see its shards only; ``e_telemetry()`` all-reduces the step's sums
so that every rank reads the whole model's ``e_perturbation`` and ``e_cosine``. The check that the
test can fail: with the all-reduce replaced by the identity (each rank's shards taken for the
whole model), the values miss the single-process ones by far more than the tolerance.

Workers are this file run as a script (``python test_telemetry_distributed.py OUT``), with the
model, batches and wrappers of ``test_distributed.py`` and its exit protocol (``os._exit(0)`` after
``destroy_process_group()``: FSDP2 processes on gloo can abort at interpreter exit).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from test_distributed import (
    RUNS,
    batches,
    ddp,
    fsdp,
    launch_ranks,
    make_model,
    make_optimizer,
    serve_rank,
)
from torch import Tensor, nn

E_RUNS = [name for name, (case, _) in RUNS.items() if case.explores]
"""The distributed configurations of the optimizers that apply E."""

RTOL = 1e-9
"""Float64 throughout: the sums differ from one process's only by the order of additions."""


def telemetry(name: str, wrap: Callable[[nn.Module], nn.Module], rank: int, world: int) -> Tensor:
    """``(e_perturbation, e_cosine)`` after each of the steps of ``name`` on this rank's slice of
    each global batch, shape (steps, 2)."""
    model = wrap(make_model())
    opt: Any = make_optimizer(name, model)
    opt.enable_telemetry()
    per_rank = len(batches()[0][0]) // world
    values = []
    for x, y in batches():
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[rows]), y[rows]).backward()
        opt.step()
        read = opt.e_telemetry()
        values.append(torch.stack([read["e_perturbation"], read["e_cosine"]]))
    return torch.stack(values)


def collect(rank: int, world: int) -> dict[str, Tensor]:
    from valleys.optim._sharding import ShardedNorms

    results: dict[str, Tensor] = {}
    for name in E_RUNS:
        results[f"ddp/{name}"] = telemetry(name, ddp, rank, world)
        results[f"fsdp/{name}"] = telemetry(name, fsdp, rank, world)
    # The wrong implementation: each rank's shards taken for the whole model.
    reduce_total = ShardedNorms.reduce_total
    ShardedNorms.reduce_total = lambda self, sums: sums  # type: ignore[method-assign]
    results["fsdp/local"] = telemetry(E_RUNS[0], fsdp, rank, world)
    ShardedNorms.reduce_total = reduce_total  # type: ignore[method-assign]
    return results


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Tensor]]:
    """Every rank's telemetry from one 2-process gloo run."""
    return launch_ranks(__file__, tmp_path_factory.mktemp("dist") / "telemetry.pt")


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("name", E_RUNS)
def test_telemetry_matches_single_process(
    distributed: list[dict[str, Tensor]], mode: str, name: str
) -> None:
    want = telemetry(name, lambda m: m, 0, 1)
    for rank, results in enumerate(distributed):
        torch.testing.assert_close(
            results[f"{mode}/{name}"], want, rtol=RTOL, atol=0, msg=f"{mode}/{name} rank {rank}"
        )


def test_local_shards_alone_would_fail(distributed: list[dict[str, Tensor]]) -> None:
    want = telemetry(E_RUNS[0], lambda m: m, 0, 1)
    for results in distributed:
        assert ((results["fsdp/local"] - want).abs() / want.abs()).max() > 1e3 * RTOL


if __name__ == "__main__":
    serve_rank(collect, sys.argv[1])
