"""The optimizers under DDP and FSDP2 (2 gloo processes) equal one process on the full batch.

The test model's output dimensions (7, 3, 1) split unevenly over 2 ranks, and the last layer's
shards are empty on rank 1. Each case runs 5 steps with global-norm clipping active and compares
the parameters *and* every optimizer state tensor (gathered with ``DTensor.full_tensor()``) with
a single-process run on the whole batch, in float64.

Why this catches a wrong sharded LAMB: the trust ratio multiplies each tensor's update by
``phi(||theta||) / (||r|| + eps2 * phi(||theta||))``. Computed from a shard's norms instead of the
full tensor's, each rank scales its piece of the same tensor by a different factor, and the clip
factor changes too. :func:`test_per_shard_norms_would_fail` runs exactly that implementation (the
collective replaced by the identity) and checks that it misses the single-process run by orders
of magnitude more than the tolerance used here.

Workers are this file run as a script (``python test_distributed.py OUT``) in two subprocesses:
one process group serves every case, and each worker ends with ``os._exit(0)`` after
``destroy_process_group()``, because FSDP2 processes on gloo can abort at interpreter exit.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch
from optim_cases import CASES
from torch import Tensor, nn

from valleys.optim import ALTO, Explore, param_groups

WORLD = 2
STEPS = 5
BATCH = 8
RTOL, ATOL = 1e-10, 1e-12

RUNS = {variant.id: (case, variant) for case in CASES for variant in case.distributed}
"""Every distributed configuration of the case table, by its id."""


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    case, variant = RUNS[name]
    params: Any = model.parameters()
    if variant.grouped_decay is not None:
        params = param_groups(model, variant.grouped_decay)
    return case.make_default(params, **variant.overrides)


def make_model(hidden_layers: int = 0) -> nn.Module:
    """Float64 MLP 5 → 7 → (7 →)* 3 → 1: every output dimension is uneven over 2 ranks."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(5, 7), nn.Tanh()]
    for _ in range(hidden_layers):
        layers += [nn.Linear(7, 7), nn.Tanh()]
    layers += [nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 1)]
    return nn.Sequential(*layers).double()


def batches() -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(BATCH, 5, generator=gen, dtype=torch.float64),
            torch.randn(BATCH, 1, generator=gen, dtype=torch.float64),
        )
        for _ in range(STEPS)
    ]


def full(t: Any) -> Any:
    """A DTensor gathered to the whole tensor; anything else as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Parameters and all optimizer state, as whole plain tensors, in parameter order."""
    states = [opt.state, opt.optimizer.state] if isinstance(opt, Explore) else [opt.state]
    params = [full(p.detach()) for p in model.parameters()]
    state = [
        {k: full(v) for s in states for k, v in s[p].items() if torch.is_tensor(v)}
        for p in model.parameters()
    ]
    return {"params": params, "state": state}


def train(name: str, wrap: Callable[[nn.Module], nn.Module], rank: int, world: int) -> dict:
    """STEPS steps of ``name`` on this rank's slice of each global batch."""
    model = make_model()
    wrapped = wrap(model)
    opt = make_optimizer(name, wrapped)
    per_rank = BATCH // world
    for x, y in batches():
        xs, ys = (
            x[rank * per_rank : (rank + 1) * per_rank],
            y[rank * per_rank : (rank + 1) * per_rank],
        )
        opt.zero_grad()
        nn.functional.mse_loss(wrapped(xs), ys).backward()
        opt.step()
    return snapshot(wrapped, opt)


# --------------------------------------------------------------------------------- worker (script)


def fsdp(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def ddp(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, gradient_as_bucket_view=True)


def count_all_reduces(hidden_layers: int) -> tuple[int, int]:
    """(all-reduces per ALTO step under FSDP2, number of parameter tensors)."""
    import torch.distributed as dist

    model = fsdp(make_model(hidden_layers))
    opt = ALTO(model.parameters(), lr=1e-2, max_grad_norm=0.05)
    x, y = batches()[0]
    nn.functional.mse_loss(model(x[:4]), y[:4]).backward()
    calls = []
    original = dist.all_reduce

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    dist.all_reduce = counting
    try:
        opt.step()
    finally:
        dist.all_reduce = original
    return len(calls), len(list(model.parameters()))


def placed_steps(placements: list[Any] | None) -> dict[str, Any]:
    """ALTO on bare tensors given the same gradients: plain (None), or as DTensors placed as told
    (Shard(0) and Replicate mixed in one group: a replicated tensor must be counted once)."""
    gen = torch.Generator().manual_seed(2)
    shapes = [(7, 3), (5,), (3, 2), (1,)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(3)]
    if placements is not None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import distribute_tensor

        mesh = init_device_mesh("cpu", (WORLD,))
        place = [[placements[i % len(placements)]] for i in range(len(shapes))]
        params = [distribute_tensor(p, mesh, pl) for p, pl in zip(params, place, strict=True)]
        grads = [
            [distribute_tensor(g, mesh, pl) for g, pl in zip(step, place, strict=True)]
            for step in grads
        ]
    params = [nn.Parameter(p) for p in params]
    opt = ALTO(params, lr=1e-2, max_grad_norm=0.5)
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = g
        opt.step()
    return {
        "params": [full(p.detach()) for p in params],
        "state": [{k: full(v) for k, v in opt.state[p].items()} for p in params],
    }


def collect(rank: int, world: int) -> dict[str, Any]:
    from torch.distributed.tensor import Replicate, Shard

    from valleys.optim._sharding import ShardedNorms

    results: dict[str, Any] = {}
    for name in RUNS:
        results[f"ddp/{name}"] = train(name, ddp, rank, world)
        results[f"fsdp/{name}"] = train(name, fsdp, rank, world)
    results["counts"] = [count_all_reduces(h) for h in (0, 3)]
    results["placed"] = placed_steps([Shard(0), Replicate()])
    # The wrong implementation: each rank takes its shard's norms for the full tensor's.
    reduce = ShardedNorms.reduce
    ShardedNorms.reduce = lambda self, squares, indices: squares  # type: ignore[method-assign]
    results["fsdp/alto_per_shard"] = train("alto", fsdp, rank, world)
    ShardedNorms.reduce = reduce  # type: ignore[method-assign]
    return results


def serve_rank(collect: Callable[[int, int], Any], out: str) -> NoReturn:
    """Be one rank of a gloo job: ``collect(rank, world)`` on every rank, all of them saved to
    ``out`` by rank 0 (a list indexed by rank), then the exit protocol of the module docstring."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, collect(rank, world))
    if rank == 0:
        torch.save(gathered, out)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch_ranks(script: str, out: Path) -> list[Any]:
    """Run ``script OUT`` as :data:`WORLD` gloo ranks on 127.0.0.1; every rank's result."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(WORLD),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(out)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(WORLD)
    ]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return torch.load(out, weights_only=False)


# ------------------------------------------------------------------------------------------ tests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case's result from one 2-process gloo run (rank 0's)."""
    return launch_ranks(__file__, tmp_path_factory.mktemp("dist") / "results.pt")[0]


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    """Every optimizer's result in this process on the full batch."""
    return {name: train(name, lambda m: m, 0, 1) for name in RUNS}


def _flatten(result: dict[str, Any]) -> list[tuple[str, Tensor]]:
    pairs = [(f"param{i}", p) for i, p in enumerate(result["params"])]
    for i, entries in enumerate(result["state"]):
        pairs += [(f"state{i}.{k}", v) for k, v in sorted(entries.items())]
    return pairs


def max_difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    """(max absolute, max relative) difference over all parameters and state tensors."""
    left, right = _flatten(a), _flatten(b)
    assert [k for k, _ in left] == [k for k, _ in right]
    abs_diff = max((x - y).abs().max().item() for (_, x), (_, y) in zip(left, right, strict=True))
    rel_diff = max(
        ((x - y).abs() / y.abs().clamp_min(1e-12)).max().item()
        for (_, x), (_, y) in zip(left, right, strict=True)
    )
    return abs_diff, rel_diff


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("name", list(RUNS))
def test_matches_single_process(
    distributed: dict[str, Any], single: dict[str, Any], mode: str, name: str
) -> None:
    got, want = distributed[f"{mode}/{name}"], single[name]
    for (key, x), (_, y) in zip(_flatten(got), _flatten(want), strict=True):
        torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL, msg=f"{mode}/{name}: {key}")
    assert any(v.numel() > 0 for v in got["state"][0].values())


def test_replicated_and_sharded_tensors_in_one_group(distributed: dict[str, Any]) -> None:
    got, want = distributed["placed"], placed_steps(None)
    for (key, x), (_, y) in zip(_flatten(got), _flatten(want), strict=True):
        torch.testing.assert_close(x, y, rtol=RTOL, atol=ATOL, msg=key)


def test_per_shard_norms_would_fail(distributed: dict[str, Any], single: dict[str, Any]) -> None:
    abs_diff, _ = max_difference(distributed["fsdp/alto_per_shard"], single["alto"])
    assert abs_diff > 1e6 * ATOL


def test_one_collective_per_step_whatever_the_number_of_tensors(
    distributed: dict[str, Any],
) -> None:
    (shallow, n_shallow), (deep, n_deep) = distributed["counts"]
    assert n_deep > n_shallow
    # One for the global clip norm, one for the trust ratios of the group's (device, dtype) bucket.
    assert shallow == deep == 2


# This package's optimizers in their plain configuration; Explore's is in test_explore.py.
@pytest.mark.parametrize("name", [c.distributed[0].id for c in CASES if c.clips and c.distributed])
def test_grad_scaler_skip_leaves_state_untouched(name: str) -> None:
    model = make_model()
    opt = make_optimizer(name, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = batches()[0]
    for poison in (False, True):
        opt.zero_grad()
        scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
        if poison:
            before = (copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict()))
            next(model.parameters()).grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
    state, params = before
    torch.testing.assert_close(opt.state_dict()["state"], state["state"], rtol=0, atol=0)
    torch.testing.assert_close(model.state_dict(), params, rtol=0, atol=0)


if __name__ == "__main__":
    serve_rank(collect, sys.argv[1])
