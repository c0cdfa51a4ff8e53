"""How flat is the minimum a training run ended in? (what ``valleys flatness RUN`` measures)

For a finished run directory (``config.json`` + ``checkpoint.pt`` from :func:`valleys.bench.run.train.train`)
this measures, on a fixed subset of the *training* data with the model in eval mode (for an
optimizer with train/eval modes, Schedule-Free, the checkpoint holds the eval-mode weights: the
training loop saves it in eval mode, so nothing is to be switched here):

- the Hessian's dominant eigenvalue by power iteration on Hessian-vector products, with a flag
  saying whether it converged (a non-converged estimate is reported as such, not as a number);
- the smallest and largest Hessian eigenvalues by Lanczos (negative curvature shows in the smallest),
  each reported only if it converged;
- the Hessian trace by Hutchinson's estimator (mean ± standard error);
- the training loss along a random filter-normalised direction (Li et al., 2018), α ∈ [−1, 1];
- the distance travelled ‖θ_T − θ_0‖, with θ_0 rebuilt from the run's seed exactly as training
  initialised it.

This answers the paper's reviewers' question ("does E find flatter minima?") with numbers for any
run, so that ALTO's and Lamb's end points can be compared seed by seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from valleys.bench.analysis.flatness import (
    distance_travelled,
    filter_normalized_direction,
    hutchinson_trace,
    lanczos_extreme_eigenvalues,
    loss_profile_1d,
    top_hessian_eigenvalue,
)
from valleys.bench.run.checkpoint import (
    CheckpointError,
    load_checkpoint,
    writable_dir,
    write_json_atomic,
)
from valleys.bench.run.config import CHECKPOINT_FILE, CONFIG_FILE, TrainConfig, load_config
from valleys.bench.tasks import Task, build_task

__all__ = [
    "FLATNESS_FILE",
    "FlatnessSettings",
    "check_run",
    "measure_run",
    "plot_profiles",
]

FLATNESS_FILE = "flatness.json"


@dataclass(frozen=True)
class FlatnessSettings:
    """What a measurement uses; stored beside its numbers."""

    examples: int = 2048
    batch_size: int = 1024
    power_iters: int = 100
    tol: float = 1e-3
    trace_samples: int = 30
    profile_points: int = 21
    lanczos_steps: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("examples", "batch_size", "power_iters", "lanczos_steps", "profile_points"):
            _require_count(name, getattr(self, name), minimum=1)
        _require_count("trace_samples", self.trace_samples, minimum=2)
        if not (math.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"Invalid tol: {self.tol!r}; expected a number > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require_count(name: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r}; expected an integer >= {minimum}")


def check_run(run_dir: str | Path) -> Path:
    """``run_dir`` once it holds a run with a checkpoint and ``flatness.json`` can be written in it:
    checked before measuring, which takes much longer than writing.

    Raises:
        FileNotFoundError: no ``config.json`` or no ``checkpoint.pt`` in ``run_dir``.
        OSError: ``run_dir`` cannot be written.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} holds no run ({CONFIG_FILE} missing)")
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint ({CHECKPOINT_FILE} missing)")
    return writable_dir(run_dir)


def _load_run(run_dir: Path) -> tuple[TrainConfig, Task, nn.Module, nn.Module]:
    """The run's config, task, trained model and the model as training initialised it."""
    checkpoint_path = check_run(run_dir) / CHECKPOINT_FILE
    config = load_config(run_dir / CONFIG_FILE)
    task = build_task(config.task, config.task_options)
    payload = load_checkpoint(checkpoint_path, fingerprint=config.fingerprint())

    # Training seeds torch and random this way right before building the model (train.train).
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    initial = task.build_model()
    model = task.build_model()
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {checkpoint_path} does not match the {task.model_name} model of task "
            f"{config.task!r}: {exc}"
        ) from exc
    return config, task, model, initial


def _loss_fn(task: Task, model: nn.Module, batches: Sequence[tuple[tuple[Tensor, ...], Tensor]]):  # type: ignore[no-untyped-def]
    units = sum(len(targets) for _, targets in batches)

    def loss() -> Tensor:
        total = sum(
            task.loss(task.forward(model, inputs), targets, reduction="sum")
            for inputs, targets in batches
        )
        return total / units  # type: ignore[operator]

    return loss


def measure_run(run_dir: str | Path, settings: FlatnessSettings | None = None) -> dict[str, Any]:
    """Measure the flatness of ``run_dir``'s final model; also write it to ``flatness.json``."""
    settings = settings or FlatnessSettings()
    run_dir = Path(run_dir)
    config, task, model, initial = _load_run(run_dir)
    model.eval()
    generator = torch.Generator().manual_seed(settings.seed)
    count = min(settings.examples, len(task.train))
    index = torch.randperm(len(task.train), generator=generator)[:count]
    batches = [
        task.train.select(index[start : start + settings.batch_size])
        for start in range(0, count, settings.batch_size)
    ]
    loss_fn = _loss_fn(task, model, batches)
    params = [p for p in model.parameters() if p.requires_grad]

    with torch.no_grad():
        loss_at_minimum = loss_fn().item()
    eigen = top_hessian_eigenvalue(
        loss_fn, params, iters=settings.power_iters, tol=settings.tol, seed=settings.seed
    )
    # Lanczos gives both ends of the spectrum; where power iteration stalls between dominant
    # eigenvalues of both signs it often still converges.
    extremes = lanczos_extreme_eigenvalues(
        loss_fn, params, k=settings.lanczos_steps, tol=settings.tol, seed=settings.seed
    )
    trace = hutchinson_trace(loss_fn, params, samples=settings.trace_samples, seed=settings.seed)
    direction = filter_normalized_direction(model, seed=settings.seed)
    alphas = torch.linspace(-1.0, 1.0, settings.profile_points, dtype=torch.float64)
    profile = loss_profile_1d(model, loss_fn, direction, alphas)

    result = {
        "run": str(run_dir),
        "task": config.task,
        "optimizer": config.optimizer,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "train_loss_on_subset": loss_at_minimum,
        "top_eigenvalue": eigen.value if eigen.converged else None,
        "top_eigenvalue_estimate": eigen.value,
        "top_eigenvalue_converged": eigen.converged,
        "top_eigenvalue_residual": eigen.residual,
        "power_iterations": eigen.iterations,
        "lanczos_max_eigenvalue": extremes.max.value if extremes.max.converged else None,
        "lanczos_min_eigenvalue": extremes.min.value if extremes.min.converged else None,
        "hessian_trace": trace.mean,
        "hessian_trace_stderr": trace.stderr,
        "distance_travelled": distance_travelled(initial.parameters(), model.parameters()),
        "profile_alphas": alphas.tolist(),
        "profile_losses": profile.tolist(),
        "settings": settings.to_dict(),
    }
    write_json_atomic(run_dir / FLATNESS_FILE, result)
    return result


def plot_profiles(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """One curve per run: training loss along its filter-normalised direction (Li et al., 2018)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for result in results:
        label = f"{result['optimizer']} seed {result['seed']}"
        axes.plot(result["profile_alphas"], result["profile_losses"], marker=".", label=label)
    axes.set_xlabel("α (step along a filter-normalised random direction)")
    axes.set_ylabel("training loss (subset)")
    axes.set_yscale("log")
    axes.set_title("Loss around the end point of each run")
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
