"""Low-dimensional test functions and optimizer trajectories on them (paper Figures 1 and 8).

Every test function maps a tensor of shape ``(..., dim)`` to a tensor of shape ``(...)``, so the
same function serves as an optimisation objective (a single point of shape ``(dim,)``) and is
evaluated on a whole plotting grid at once.

Basins
------
The *first basin* of a function is the basin of attraction, under the gradient flow
``ẋ = −∇f(x)``, of the point the flow reaches from the function's start: the minimum plain gradient
descent with an infinitesimal step would stop in. :func:`gradient_flow_limit` integrates the flow
(see there); :attr:`TestFunction.first_minimum` caches its limit from the start. A trajectory *left
its first basin* when the flow from its end point reaches a limit farther than a tolerance from
the first minimum. For an isolated minimum that is exactly basin membership. Where the minima form
a continuum (the cardioid valley) every valley point is its own limit, and the test reads "moved
along the valley by more than the tolerance from where gradient descent would have stopped".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FUNCTIONS",
    "TestFunction",
    "Trajectory",
    "cardioid",
    "f1",
    "f2",
    "gradient_flow_limit",
    "plot_trajectories",
    "rastrigin",
    "rosenbrock",
    "run_trajectory",
    "summarize",
    "two_wells",
]

MakeOptimizer = Callable[[list[Tensor]], torch.optim.Optimizer]


def f1(p: Tensor) -> Tensor:
    """Paper Figure 8 (left): ``f1(x) = 1 / (0.05·x·sin²(2x) + ln(x + 1))``, defined for x > 0.

    Decreasing overall (no global minimum) with ripples whose local minima lie near 4.08, 5.59,
    7.13, 8.68, ...; from the paper's start 2.3 gradient descent stops at the first one.
    """
    x = p[..., 0]
    return 1.0 / (0.05 * x * torch.sin(2.0 * x) ** 2 + torch.log(x + 1.0))


def f2(p: Tensor) -> Tensor:
    """Paper Figure 8 (right): ``1 − e^{−900(x−0.6)²} − e^{−900(x+0.6)²} − e^{−25x²}``.

    Two sharp wells at ±0.6 (curvature 1800) and a wide one at 0 (curvature 50), all of depth
    about 0; from the start 0.95 the sharp well at 0.6 lies between the start and the wide well.
    """
    x = p[..., 0]
    return (
        1.0
        - torch.exp(-900.0 * (x - 0.6) ** 2)
        - torch.exp(-900.0 * (x + 0.6) ** 2)
        - torch.exp(-25.0 * x**2)
    )


def rosenbrock(p: Tensor) -> Tensor:
    """Rosenbrock: ``(1 − x)² + 100(y − x²)²``; a curved valley along ``y = x²``, minimum (1, 1)."""
    x, y = p[..., 0], p[..., 1]
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


def cardioid(p: Tensor) -> Tensor:
    """Square of the cardioid: ``((x² + y² − x)² − (x² + y²))² / 64``.

    ``F(x, y) = (x² + y² − ax)² − a²(x² + y²)`` with ``a = 1`` vanishes exactly on the cardioid
    ``r = a(1 + cos φ)`` (cusp at the origin, far point (2, 0)), so ``F²`` has a zero-loss valley
    along it. On the valley the Hessian of ``F²/64`` is ``∇F∇Fᵀ/32``: zero along the curve and
    ``‖∇F‖²/32`` across it, and ``‖∇F‖² = 8a³r³`` there, with ``r`` the distance from the cusp.
    So the across-valley eigenvalue is ``r³/4``: sharpest at the far point (2, 0) (eigenvalue 2),
    0.25 at the top and bottom (0, ±1), and flat towards the cusp (eigenvalue → 0; at the cusp
    itself the loss is quartic across the valley). The scale 1/64 makes the sharpest valley
    eigenvalue 2. Inside the cardioid ``F < 0``: a hill of height 0.044 at (1.5, 0).
    """
    x, y = p[..., 0], p[..., 1]
    r2 = x**2 + y**2
    implicit = (r2 - x) ** 2 - r2
    return implicit**2 / 64.0


def two_wells(p: Tensor) -> Tensor:
    """A sharp well near the start and a wide, equally deep one farther away (2-D analogue of f2).

    ``1 − exp(−‖p − s‖² / (2·0.05²)) − exp(−‖p − w‖² / (2·0.5²))`` with ``s = (1, 0.5)`` and
    ``w = (−1, −0.5)``: curvature 400 in the sharp well and 4 in the wide one, both of depth about
    0, separated by a plateau at height about 1. Gradient descent with a step above 2/400 cannot
    settle in the sharp well but can in the wide one (below 2/4).
    """
    sharp = ((p - p.new_tensor([1.0, 0.5])) ** 2).sum(-1)
    wide = ((p - p.new_tensor([-1.0, -0.5])) ** 2).sum(-1)
    return 1.0 - torch.exp(-sharp / (2 * 0.05**2)) - torch.exp(-wide / (2 * 0.5**2))


def rastrigin(p: Tensor) -> Tensor:
    """Rastrigin: ``10·n + Σ(x_i² − 10 cos 2πx_i)``; a lattice of local minima, global one at 0."""
    return 10.0 * p.shape[-1] + (p**2 - 10.0 * torch.cos(2.0 * math.pi * p)).sum(-1)


def _value_grad_hessian(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with torch.enable_grad():
        point = x.detach().requires_grad_(True)
        value = fn(point)
        (grad,) = torch.autograd.grad(value, point, create_graph=True)
        rows = [torch.autograd.grad(g, point, retain_graph=True)[0] for g in grad]
    return value.detach(), grad.detach(), torch.stack(rows)


def gradient_flow_limit(
    fn: Callable[[Tensor], Tensor],
    start: Sequence[float] | Tensor,
    *,
    max_step: float = 1e-2,
    max_iters: int = 5000,
) -> Tensor:
    """Where the gradient flow ``ẋ = −∇f(x)`` from ``start`` ends (float64 point).

    Integrated with the linearly implicit Euler method ``x⁺ = x − (H + I/τ)⁻¹ ∇f(x)``, which is
    stable for any step ``τ`` when ``H + I/τ`` is positive definite: plain gradient descent would
    need thousands of tiny steps in a stiff valley such as Rosenbrock's, and following the flow
    matters because the limit defines the basin. A step is accepted only if ``H + I/τ`` is positive
    definite, the step is at most ``max_step`` long (so the path stays close to the flow and
    cannot jump over a ridge) and ``f`` decreases; ``τ`` doubles after an accepted step and halves
    after a rejected one. As ``τ → ∞`` the step becomes Newton's, which converges fast once the
    flow has arrived. Stops when a step is shorter than ``1e-12·(1 + ‖x‖)``, when no step of
    positive ``τ`` decreases ``f`` (a minimum to rounding), at a zero gradient, or after
    ``max_iters`` steps.
    """
    x = torch.as_tensor(start, dtype=torch.float64).reshape(-1).clone()
    identity = torch.eye(x.numel(), dtype=torch.float64)
    value, grad, hessian = _value_grad_hessian(fn, x)
    tau = max_step / max(torch.linalg.vector_norm(grad).item(), 1e-300)
    for _ in range(max_iters):
        if not grad.any():
            break
        while tau > 1e-300:
            system = hessian + identity / tau
            if torch.linalg.eigvalsh(system)[0] > 0:
                step = -torch.linalg.solve(system, grad)
                candidate = x + step
                if (
                    torch.linalg.vector_norm(step) <= max_step
                    and fn(candidate).item() < value.item()
                ):
                    break
            tau /= 2
        else:
            break
        x = candidate
        if torch.linalg.vector_norm(step) <= 1e-12 * (1.0 + torch.linalg.vector_norm(x)):
            break
        value, grad, hessian = _value_grad_hessian(fn, x)
        tau *= 2
    return x


@dataclass(frozen=True)
class TestFunction:
    """A test function with the settings chosen for it (the paper publishes none for Figure 1).

    ``fn`` maps ``(..., dim)`` to ``(...)``; ``start`` is the default start point, ``bounds`` one
    ``(low, high)`` pair per dimension for plots, ``steps`` a step count that lets the optimizers
    settle, and ``description`` says what the function shows and why these settings.
    ``basin_tol`` is the distance between gradient-flow limits above which a trajectory counts as
    having left its first basin (module docstring); ``None`` means 1 % of the plot diagonal.
    """

    __test__ = False  # keeps pytest from collecting it as a test class

    name: str
    dim: int
    fn: Callable[[Tensor], Tensor]
    start: tuple[float, ...]
    bounds: tuple[tuple[float, float], ...]
    steps: int
    description: str
    basin_tol: float | None = None

    def __call__(self, p: Tensor) -> Tensor:
        return self.fn(p)

    @cached_property
    def first_minimum(self) -> Tensor:
        """The gradient-flow limit from :attr:`start` (computed once, then cached)."""
        return gradient_flow_limit(self.fn, self.start, max_step=self.flow_step)

    @property
    def flow_step(self) -> float:
        """Longest step of :func:`gradient_flow_limit`: 0.1 % of the plot diagonal."""
        return 1e-3 * self.diagonal

    @property
    def basin_tolerance(self) -> float:
        """:attr:`basin_tol`, or 1 % of the plot diagonal when that is ``None``."""
        return 1e-2 * self.diagonal if self.basin_tol is None else self.basin_tol

    @property
    def diagonal(self) -> float:
        """Length of the diagonal of the plot bounds."""
        return math.sqrt(sum((high - low) ** 2 for low, high in self.bounds))


FUNCTIONS: dict[str, TestFunction] = {
    f.name: f
    for f in (
        TestFunction(
            name="f1",
            dim=1,
            fn=f1,
            start=(2.3,),
            bounds=((0.5, 12.0),),
            steps=1000,
            description=(
                "Paper Figure 8 left, start 2.3 as published. Gradient descent stops in the "
                "ripple minimum at 4.08; exploring optimizers should reach later, lower ripples. "
                "Paper settings: Adam β=0.95 vs ALTO β1=0.99, β2=0.95, α=−80."
            ),
        ),
        TestFunction(
            name="f2",
            dim=1,
            fn=f2,
            start=(0.95,),
            bounds=((-1.2, 1.2),),
            steps=3000,
            description=(
                "Paper Figure 8 right, start 0.95 as published (on a plateau: |f'| ≈ 8e-9). "
                "Gradient descent stops in the sharp well at 0.6; ALTO should escape to the wide "
                "well at 0. Paper settings: Adam β=0.9999 vs ALTO β1=0.99, β2=0.9, α=−90."
            ),
        ),
        TestFunction(
            name="rosenbrock",
            dim=2,
            fn=rosenbrock,
            start=(-1.5, 2.0),
            bounds=((-2.0, 2.0), (-1.0, 3.0)),
            steps=2000,
            description=(
                "Paper Figure 1 right. Start (−1.5, 2) on the far side of the curved valley; the "
                "only minimum is (1, 1), so the test is how far along the valley an optimizer "
                "gets in the step budget. Plain SGD is stable only for lr < 2/1900 ≈ 1e-3 here."
            ),
        ),
        TestFunction(
            name="cardioid",
            dim=2,
            fn=cardioid,
            start=(2.4, 0.6),
            bounds=((-1.0, 3.0), (-2.0, 2.0)),
            steps=2000,
            description=(
                "Paper Figure 1 left: zero loss on the whole cardioid r = 1 + cos φ. Start "
                "(2.4, 0.6) outside its sharp end; gradient descent lands on the valley near the "
                "far point (2, 0), where the across-valley eigenvalue is largest (≈ 2 at r = 2, "
                "∝ r³); exploring optimizers should travel along it towards the flat cusp. "
                "Every valley point is a minimum, so leaving the first basin means ending more "
                "than 0.5 (of the valley's length 8) from where gradient descent lands."
            ),
            basin_tol=0.5,
        ),
        TestFunction(
            name="two_wells",
            dim=2,
            fn=two_wells,
            start=(1.125, 0.55),
            bounds=((-2.5, 2.0), (-2.0, 2.0)),
            steps=2000,
            description=(
                "2-D analogue of f2: start (1.125, 0.55) on the slope of the sharp well at "
                "(1, 0.5) (curvature 400); the wide well at (−1, −0.5) (curvature 4) is as deep "
                "and lies across a plateau of height ≈ 1. Gradient descent stops in the sharp "
                "well; an optimizer whose effective step exceeds 2/400 cannot stay there."
            ),
        ),
        TestFunction(
            name="rastrigin",
            dim=2,
            fn=rastrigin,
            start=(2.5, 2.5),
            bounds=((-5.12, 5.12), (-5.12, 5.12)),
            steps=2000,
            description=(
                "Rastrigin on the usual domain; start (2.5, 2.5) flows into the local minimum "
                "near (1.99, 1.99). Many equally sharp minima: a test of escaping, not flatness."
            ),
        ),
    )
}


@dataclass(frozen=True)
class Trajectory:
    """Iterates of an optimizer: ``points[k]`` is ``x_k`` (shape ``(n + 1, dim)``, float64) and
    ``losses[k] = f(x_k)``; ``diverged`` is set if a loss became non-finite (the run stops there)."""

    points: Tensor
    losses: Tensor
    diverged: bool


def run_trajectory(
    fn: Callable[[Tensor], Tensor],
    start: Sequence[float] | Tensor | None,
    make_optimizer: MakeOptimizer,
    steps: int,
) -> Trajectory:
    """Run ``steps`` optimizer steps on ``fn`` from ``start`` (``None``: ``fn.start``).

    ``make_optimizer`` receives the list with the single float64 parameter tensor and returns any
    ``torch.optim.Optimizer``. Each step is ``zero_grad → loss.backward() → step``.
    """
    if start is None:
        if not isinstance(fn, TestFunction):
            raise ValueError("start=None needs a TestFunction, which carries a default start")
        start = fn.start
    x = torch.as_tensor(start, dtype=torch.float64).reshape(-1).clone().requires_grad_(True)
    optimizer = make_optimizer([x])
    points: list[Tensor] = []
    losses: list[float] = []
    diverged = False
    for step in range(steps + 1):
        loss = fn(x)
        points.append(x.detach().clone())
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            diverged = True
            break
        if step == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return Trajectory(torch.stack(points), torch.tensor(losses, dtype=torch.float64), diverged)


def summarize(
    fn: TestFunction, trajectory: Trajectory, *, basin_tol: float | None = None
) -> dict[str, Any]:
    """JSON-ready summary of a trajectory on ``fn``.

    Keys: ``steps``, ``diverged``, ``final_loss``, ``end`` (the final point), ``path_length``
    (``Σ‖x_{k+1} − x_k‖``), ``distance_from_start`` (``‖x_T − x_0‖``), ``top_hessian_eigenvalue``
    (largest eigenvalue of the exact Hessian at ``x_T``), ``first_minimum``, ``end_minimum`` (the
    gradient-flow limit from ``x_T``) and ``left_first_basin``: whether ``end_minimum`` is farther
    than ``basin_tol`` (default ``fn.basin_tolerance``) from ``first_minimum`` (module docstring).
    Flatness and basin entries are NaN/None when the run diverged.
    """
    points = trajectory.points
    end = points[-1]
    tol = fn.basin_tolerance if basin_tol is None else basin_tol
    summary: dict[str, Any] = {
        "steps": points.shape[0] - 1,
        "diverged": trajectory.diverged,
        "final_loss": trajectory.losses[-1].item(),
        "end": end.tolist(),
        "path_length": torch.linalg.vector_norm(points.diff(dim=0), dim=1).sum().item(),
        "distance_from_start": torch.linalg.vector_norm(end - points[0]).item(),
        "first_minimum": fn.first_minimum.tolist(),
    }
    if trajectory.diverged:
        summary |= {"top_hessian_eigenvalue": math.nan, "end_minimum": None}
        summary["left_first_basin"] = None
        return summary
    hessian = torch.autograd.functional.hessian(fn.fn, end)
    end_minimum = gradient_flow_limit(fn.fn, end, max_step=fn.flow_step)
    summary |= {
        "top_hessian_eigenvalue": torch.linalg.eigvalsh(hessian)[-1].item(),
        "end_minimum": end_minimum.tolist(),
        "left_first_basin": torch.linalg.vector_norm(end_minimum - fn.first_minimum).item() > tol,
    }
    return summary


def _log_heights(values: Tensor) -> Tensor:
    # The test functions span many orders of magnitude (Rosenbrock's and the cardioid's walls grow
    # like x⁴ and r⁸ while their valleys are near 0), so contours are drawn for log(f − min + δ);
    # δ, 1 % of the median height, keeps the exact zeros of a valley finite.
    finite = values[torch.isfinite(values)]
    lowest = finite.min()
    offset = 1e-2 * (finite.median() - lowest).clamp_min(1e-12)
    return torch.log(values - lowest + offset)


def plot_trajectories(
    results: Mapping[str | TestFunction, Mapping[str, Trajectory]],
    path: str | Path,
) -> Path:
    """Write a PNG with one panel per function and every optimizer's trajectory on it.

    ``results`` maps a function (a :data:`FUNCTIONS` name or a :class:`TestFunction`) to
    ``{optimizer label: Trajectory}``. 2-D functions are drawn as filled contours of the log height
    (``log(f − min + δ)``, so valleys stay visible next to steep walls) with each path
    from its start (×) to its end (●), as in the paper's Figure 1; 1-D functions as the curve with
    each optimizer's iterates on it, as in Figure 8. Uses matplotlib's Agg canvas directly, so it
    never touches pyplot's global state. Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(FUNCTIONS[k] if isinstance(k, str) else k, runs) for k, runs in results.items()]
    if not panels:
        raise ValueError("results is empty: nothing to plot")
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.6 * columns, 4.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (function, runs) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.set_title(function.name)
        if function.dim == 1:
            _plot_1d(axes, function, runs)
        elif function.dim == 2:
            _plot_2d(axes, function, runs)
        else:
            raise ValueError(f"{function.name}: only 1-D and 2-D functions can be plotted")
        if runs:
            axes.legend(fontsize="small", loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _plot_1d(axes: Any, function: TestFunction, runs: Mapping[str, Trajectory]) -> None:
    ((low, high),) = function.bounds
    xs = torch.linspace(low, high, 1000, dtype=torch.float64)
    with torch.no_grad():
        ys = function(xs[:, None])
    axes.plot(xs.numpy(), ys.numpy(), color="black", linewidth=1.0)
    span = (ys.max() - ys.min()).item()
    axes.set_ylim(ys.min().item() - 0.05 * span, ys.max().item() + 0.05 * span)
    axes.set_xlim(low, high)
    for label, trajectory in runs.items():
        xs_run = trajectory.points[:, 0].numpy()
        (line,) = axes.plot(xs_run, trajectory.losses.numpy(), ".", markersize=3, label=label)
        axes.plot(xs_run[-1], trajectory.losses[-1].item(), "o", color=line.get_color())
    axes.plot(function.start[0], function(torch.tensor(function.start)).item(), "kx")
    axes.set_xlabel("x")
    axes.set_ylabel("f(x)")


def _plot_2d(axes: Any, function: TestFunction, runs: Mapping[str, Trajectory]) -> None:
    (x_low, x_high), (y_low, y_high) = function.bounds
    xs = torch.linspace(x_low, x_high, 300, dtype=torch.float64)
    ys = torch.linspace(y_low, y_high, 300, dtype=torch.float64)
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="xy")
    with torch.no_grad():
        values = function(torch.stack([grid_x, grid_y], dim=-1))
    heights = _log_heights(values).numpy()
    axes.contourf(grid_x.numpy(), grid_y.numpy(), heights, levels=30, cmap="viridis")
    axes.contour(
        grid_x.numpy(),
        grid_y.numpy(),
        heights,
        levels=30,
        colors="white",
        linewidths=0.3,
        alpha=0.5,
    )
    for label, trajectory in runs.items():
        points = trajectory.points.numpy()
        (line,) = axes.plot(points[:, 0], points[:, 1], "-", linewidth=1.2, label=label)
        axes.plot(points[-1, 0], points[-1, 1], "o", color=line.get_color())
    axes.plot(*function.start, "wx", markersize=8, markeredgewidth=2)
    axes.set_xlim(x_low, x_high)
    axes.set_ylim(y_low, y_high)
    axes.set_aspect("equal")
    axes.set_xlabel("x")
    axes.set_ylabel("y")
