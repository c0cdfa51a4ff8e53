"""Optimizer step benchmark: step time, state bytes and peak extra memory, against every peer.

Every variant gets its own copy of the same parameters and a gradient buffer that is refilled from
one shared set of random gradients before each step (outside the timed region), so no variant sees
another's in-place changes (the reference ALTO clips ``p.grad`` in place; the reference E replaces
it). Steps run interleaved, round by round, on one thread pinned to one core; warm-up steps (which
create the state and, for the fused variants, compile) are excluded from the median and reported
separately as ``first_step_s``.

Peak extra memory is the rise of the process's peak resident set size (``VmHWM``) above its
resident size just before a steady-state step: ``malloc_trim(0)`` first returns freed heap pages
to the OS and writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM``, so what the step
allocates shows up as new resident pages (torch has no CPU allocator statistics). Linux only;
elsewhere the field is null.

On CUDA (``--device cuda``) each timed step is bracketed by ``torch.cuda.synchronize()`` and the
peak extra memory comes from the caching allocator's statistics.

**Bandwidth.** Each variant has a traffic model: the bytes per parameter its algorithm must move
at least (in elements of the parameters' dtype: fused AdamW reads p, g, m, v and writes p, m, v = 7;
ALTO adds E's buffer (read and write) and the trust ratio's pass over p and the update = 12, and
the global-norm clip one more read of g = 13). The achieved bandwidth is that traffic over the
median step time, reported as a fraction of the copy bandwidth measured in the same run
(``dst.copy_(src)`` of a 256 MiB buffer, counted as read + write).

    python benchmarks/step.py --layout 25m --repeats 21 --out benchmarks/results/step-25m.json
    python benchmarks/step.py --device cuda --dtype bfloat16 --layout gpt2 --out step-gpt2-bf16.json
    python benchmarks/step.py --quick --out /tmp/step.json
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from valleys.bench.run.checkpoint import write_json_atomic
from valleys.optim import ALTO, ESGD, EAdamW, Explore, Lamb

BASELINE = "torch_adamw_fused"
LR = 1e-3


# ------------------------------------------------------------------------------------------ layouts


def layout_25m(scale: float) -> list[tuple[int, ...]]:
    """100 tensors of 500×500 (25 M parameters); ``scale`` scales the number of tensors."""
    return [(500, 500)] * max(1, round(100 * scale))


def layout_gpt2(scale: float) -> list[tuple[int, ...]]:
    """The parameter shapes of GPT-2 small (124 M, tied output embedding); ``scale`` scales the
    number of transformer blocks (12), the embeddings always stay."""
    d, vocab, context = 768, 50257, 1024
    block = [
        (d,), (d,),  # ln_1
        (d, 3 * d), (3 * d,),  # attn.c_attn
        (d, d), (d,),  # attn.c_proj
        (d,), (d,),  # ln_2
        (d, 4 * d), (4 * d,),  # mlp.c_fc
        (4 * d, d), (d,),  # mlp.c_proj
    ]  # fmt: skip
    blocks = max(1, round(12 * scale))
    return [(vocab, d), (context, d), *block * blocks, (d,), (d,)]


LAYOUTS: dict[str, Callable[[float], list[tuple[int, ...]]]] = {
    "25m": layout_25m,
    "gpt2": layout_gpt2,
}


# ----------------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    name: str
    source: str
    """``torch``, ``peer`` (another package) or ``ours``."""
    make: Callable[[list[Tensor]], Optimizer]
    elements_moved: int
    """The traffic model: parameter-sized tensors the algorithm reads or writes at least once per
    step (see the module docstring)."""


def _pytorch_optimizer_lamb(params: list[Tensor]) -> Optimizer:
    from pytorch_optimizer import Lamb as PeerLamb

    return PeerLamb(params, lr=LR)


def _alto_fused_telemetry(params: list[Tensor]) -> Optimizer:
    """ALTO's fused step with E's telemetry on (its sums computed in the compiled kernel)."""
    opt = ALTO(params, lr=LR, fused=True)
    opt.enable_telemetry()
    return opt


def _reference_alto(params: list[Tensor]) -> Optimizer:
    import ALTO as reference  # e-optimizer-adaptor

    return reference.ALTO(params, lr=LR)


def _reference_e_adamw(params: list[Tensor]) -> Optimizer:
    import E as reference  # e-optimizer-adaptor

    return reference.E(torch.optim.AdamW(params, lr=LR))


# Elements moved per parameter: AdamW 7 (read p g m v, write p m v); Lamb 10 (+ write and read back
# the update, read p for its norm); ALTO 12 (Lamb + read and write E's buffer); EAdamW 9; ESGD with
# momentum 7 (read p g buf e, write p buf e); Explore around AdamW 13 (AdamW on ĝ, plus read g e,
# write ĝ, read g e, write e); the global-norm clip adds a read of g (+1).
_TRAFFIC = {
    "adamw": 7,
    "lamb": 11,
    "alto": 13,
    "alto_no_clip": 12,
    "eadamw": 9,
    "esgd": 7,
    "explore_adamw": 13,
}

VARIANTS: list[Variant] = [
    Variant(
        "torch_adamw_loop",
        "torch",
        lambda ps: torch.optim.AdamW(ps, lr=LR, foreach=False),
        _TRAFFIC["adamw"],
    ),
    Variant(
        "torch_adamw_foreach",
        "torch",
        lambda ps: torch.optim.AdamW(ps, lr=LR, foreach=True),
        _TRAFFIC["adamw"],
    ),
    Variant(
        BASELINE, "torch", lambda ps: torch.optim.AdamW(ps, lr=LR, fused=True), _TRAFFIC["adamw"]
    ),
    Variant("pytorch_optimizer_lamb", "peer", _pytorch_optimizer_lamb, _TRAFFIC["lamb"]),
    Variant("reference_alto", "peer", _reference_alto, _TRAFFIC["alto"]),
    Variant("reference_e_adamw", "peer", _reference_e_adamw, _TRAFFIC["explore_adamw"]),
    Variant("alto_loop", "ours", lambda ps: ALTO(ps, lr=LR, foreach=False), _TRAFFIC["alto"]),
    Variant("alto_foreach", "ours", lambda ps: ALTO(ps, lr=LR, foreach=True), _TRAFFIC["alto"]),
    Variant("alto_fused", "ours", lambda ps: ALTO(ps, lr=LR, fused=True), _TRAFFIC["alto"]),
    Variant(
        # ALTO clips the global gradient norm by default (as the reference does); AdamW does not.
        "alto_fused_no_clip",
        "ours",
        lambda ps: ALTO(ps, lr=LR, fused=True, max_grad_norm=None),
        _TRAFFIC["alto_no_clip"],
    ),
    Variant("alto_fused_telemetry", "ours", _alto_fused_telemetry, _TRAFFIC["alto"]),
    Variant("lamb_loop", "ours", lambda ps: Lamb(ps, lr=LR, foreach=False), _TRAFFIC["lamb"]),
    Variant("lamb_foreach", "ours", lambda ps: Lamb(ps, lr=LR, foreach=True), _TRAFFIC["lamb"]),
    Variant("lamb_fused", "ours", lambda ps: Lamb(ps, lr=LR, fused=True), _TRAFFIC["lamb"]),
    Variant("eadamw_loop", "ours", lambda ps: EAdamW(ps, lr=LR, foreach=False), _TRAFFIC["eadamw"]),
    Variant(
        "eadamw_foreach", "ours", lambda ps: EAdamW(ps, lr=LR, foreach=True), _TRAFFIC["eadamw"]
    ),
    Variant("eadamw_fused", "ours", lambda ps: EAdamW(ps, lr=LR, fused=True), _TRAFFIC["eadamw"]),
    Variant(
        "esgd_loop",
        "ours",
        lambda ps: ESGD(ps, lr=LR, momentum=0.9, foreach=False),
        _TRAFFIC["esgd"],
    ),
    Variant(
        "esgd_foreach",
        "ours",
        lambda ps: ESGD(ps, lr=LR, momentum=0.9, foreach=True),
        _TRAFFIC["esgd"],
    ),
    Variant(
        "esgd_fused",
        "ours",
        lambda ps: ESGD(ps, lr=LR, momentum=0.9, fused=True),
        _TRAFFIC["esgd"],
    ),
    Variant(
        "explore_adamw_fused",
        "ours",
        lambda ps: Explore(torch.optim.AdamW(ps, lr=LR, fused=True)),
        _TRAFFIC["explore_adamw"],
    ),
    Variant(
        # E's own transform compiled too: one pass per tensor before the fused base step.
        "explore_fused_adamw_fused",
        "ours",
        lambda ps: Explore(torch.optim.AdamW(ps, lr=LR, fused=True), fused=True),
        _TRAFFIC["explore_adamw"],
    ),
]


# ------------------------------------------------------------------------------------ measurements


def _optimizers(opt: Optimizer) -> Iterator[Optimizer]:
    """``opt`` and the optimizers it wraps (Explore's ``optimizer``, the reference E's ``opt``)."""
    yield opt
    for attr in ("optimizer", "opt"):
        inner = getattr(opt, attr, None)
        if isinstance(inner, Optimizer) and inner is not opt:
            yield from _optimizers(inner)


def state_bytes(opt: Optimizer) -> int:
    """Bytes of all tensors in the state of ``opt`` and of the optimizers it wraps, each once."""
    seen: set[int] = set()
    total = 0
    for o in _optimizers(opt):
        for entries in o.state.values():
            for value in entries.values():
                if torch.is_tensor(value) and value.data_ptr() not in seen:
                    seen.add(value.data_ptr())
                    total += value.numel() * value.element_size()
    return total


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_extra_bytes(step: Callable[[], Any], device: torch.device) -> int | None:
    """Peak memory during ``step()`` above the memory in use before it: the caching allocator's
    statistics on CUDA, the resident set on the CPU (see above)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_bytes("VmRSS:")
    except OSError:
        return None
    step()
    return max(0, _status_bytes("VmHWM:") - before)


class Runner:
    """One variant's optimizer, parameters and gradient buffers."""

    def __init__(self, variant: Variant, init: list[Tensor], grads: list[Tensor]) -> None:
        self.variant = variant
        self.source_grads = grads
        self.params = [p.clone().requires_grad_() for p in init]
        self.grad_buffers = [torch.empty_like(g) for g in grads]
        self.opt = variant.make(self.params)
        self.device = init[0].device

    def refill_grads(self) -> None:
        for p, buf, g in zip(self.params, self.grad_buffers, self.source_grads, strict=True):
            buf.copy_(g)
            p.grad = buf

    def timed_step(self) -> float:
        self.refill_grads()
        synchronize(self.device)
        start = time.perf_counter()
        self.opt.step()
        synchronize(self.device)
        return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, dtype: torch.dtype, nbytes: int = 256 << 20) -> float:
    """Bytes per second of ``dst.copy_(src)`` over ``nbytes`` (read + write), the median of 11."""
    count = nbytes // torch.empty((), dtype=dtype).element_size()
    src = torch.ones(count, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(11):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def pin_one_core() -> int | None:
    """Run on one thread on one core (the last allowed one); return the core, if pinning works."""
    torch.set_num_threads(1)
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def _start(
    variants: list[Variant], init: list[Tensor], grads: list[Tensor], warmup: int
) -> tuple[list[Runner], dict[str, float], dict[str, str]]:
    """A runner per variant, warmed up: the runners, each one's first step time, and the first
    line of the error of each variant that cannot run here."""
    errors: dict[str, str] = {}
    runners: list[Runner] = []
    first: dict[str, float] = {}
    for variant in variants:
        try:
            runner = Runner(variant, init, grads)
            first[variant.name] = runner.timed_step()
            for _ in range(warmup - 1):
                runner.timed_step()
        except (RuntimeError, NotImplementedError, ValueError, TypeError) as error:
            errors[variant.name] = f"{type(error).__name__}: {error}".splitlines()[0]
            continue
        runners.append(runner)
    return runners, first, errors


def _timed_rounds(runners: list[Runner], repeats: int) -> dict[str, list[float]]:
    """``repeats`` timed steps of every runner, interleaved round by round."""
    times: dict[str, list[float]] = {r.variant.name: [] for r in runners}
    for round_ in range(repeats):
        # Rotate the order each round so that no variant always follows the same neighbour.
        shift = round_ % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            times[runner.variant.name].append(runner.timed_step())
    return times


def _measure(runner: Runner, times: list[float], first: float, bandwidth: float) -> dict[str, Any]:
    """One variant's entry of the report, from its step times and one more, measured, step."""
    n_params = sum(p.numel() for p in runner.params)
    param_bytes = sum(p.numel() * p.element_size() for p in runner.params)
    runner.refill_grads()
    peak = peak_extra_bytes(runner.opt.step, runner.device)
    state = state_bytes(runner.opt)
    median = statistics.median(times)
    moved = runner.variant.elements_moved * param_bytes
    return {
        "source": runner.variant.source,
        "median_s": median,
        "model_bytes_per_param": runner.variant.elements_moved * param_bytes / n_params,
        "achieved_bytes_per_s": moved / median,
        "fraction_of_copy_bandwidth": moved / median / bandwidth,
        "min_s": min(times),
        "times_s": times,
        "first_step_s": first,
        "state_bytes": state,
        "state_bytes_per_param": state / n_params,
        "state_to_param_bytes": state / param_bytes,
        "peak_extra_bytes": peak,
        "peak_extra_to_param_bytes": None if peak is None else peak / param_bytes,
    }


def run(
    layout: str,
    scale: float,
    repeats: int,
    warmup: int,
    names: list[str] | None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Benchmark the chosen variants; a variant that cannot run here (e.g. a fused kernel missing
    for this device and dtype) is reported with its error instead of stopping the others."""
    where = torch.device(device)
    core = pin_one_core() if where.type == "cpu" else None
    shapes = LAYOUTS[layout](scale)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen).to(where, dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen).to(where, dtype) for s in shapes]
    n_params = sum(p.numel() for p in init)
    param_bytes = sum(p.numel() * p.element_size() for p in init)
    bandwidth = copy_bandwidth(where, dtype)
    chosen = [v for v in VARIANTS if names is None or v.name in names]

    runners, first, errors = _start(chosen, init, grads, warmup)
    times = _timed_rounds(runners, repeats)
    results = {
        r.variant.name: _measure(r, times[r.variant.name], first[r.variant.name], bandwidth)
        for r in runners
    }
    if BASELINE in results:
        base = results[BASELINE]["median_s"]
        for entry in results.values():
            entry["time_to_" + BASELINE] = entry["median_s"] / base
    return {
        "layout": layout,
        "scale": scale,
        "tensors": len(shapes),
        "params": n_params,
        "param_bytes": param_bytes,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(where),
        "device_name": torch.cuda.get_device_name(where) if where.type == "cuda" else None,
        "copy_bytes_per_s": bandwidth,
        "errors": errors,
        "threads": torch.get_num_threads(),
        "pinned_core": core,
        "repeats": repeats,
        "warmup": warmup,
        "lr": LR,
        "machine": machine(),
        "variants": results,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The results as a Markdown table, ratios to torch's fused AdamW of the same run."""
    ratio_key = "time_to_" + BASELINE
    lines = [
        f"| variant | source | median step (ms) | × {BASELINE} | fastest step (ms) "
        "| state bytes / param | peak extra / param bytes | first step (s) | % of copy bandwidth |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["variants"].items():
        ratio = f"{r[ratio_key]:.2f}" if ratio_key in r else "–"
        peak = (
            "–"
            if r["peak_extra_to_param_bytes"] is None
            else f"{r['peak_extra_to_param_bytes']:.2f}"
        )
        lines.append(
            f"| {name} | {r['source']} | {r['median_s'] * 1e3:.1f} | {ratio} "
            f"| {r['min_s'] * 1e3:.1f} | {r['state_bytes_per_param']:.2f} | {peak} "
            f"| {r['first_step_s']:.2f} | {100 * r['fraction_of_copy_bandwidth']:.0f} |"
        )
    lines.append("")
    lines.append(
        f"Copy bandwidth ({report['device']}, {report['dtype']}): "
        f"{report['copy_bytes_per_s'] / 1e9:.1f} GB/s."
    )
    lines += [f"Not run: {name}: {error}" for name, error in report["errors"].items()]
    return "\n".join(lines)


def write_report(report: dict[str, Any], path: Path) -> Path:
    """Write ``report`` as indented JSON to ``path`` (its folder created, atomically); return
    ``path``."""
    write_json_atomic(path, report)
    return path
