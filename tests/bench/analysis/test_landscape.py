"""Tests for valleys.bench.analysis.landscape: formulas, basins, trajectories and the plot."""

from __future__ import annotations

import math

import pytest
import torch
from one_thread import one_thread  # noqa: F401  (the fixture pytestmark uses)

from valleys.bench.analysis.landscape import (
    FUNCTIONS,
    TestFunction,
    Trajectory,
    cardioid,
    f1,
    f2,
    gradient_flow_limit,
    plot_trajectories,
    rastrigin,
    rosenbrock,
    run_trajectory,
    summarize,
    two_wells,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def at(*coordinates: float) -> torch.Tensor:
    return torch.tensor(coordinates, dtype=torch.float64)


@pytest.mark.parametrize("x", [0.3, 2.3, 4.0, 7.5])
def test_f1_matches_formula(x):
    expected = 1 / (0.05 * x * math.sin(2 * x) ** 2 + math.log(x + 1))
    assert f1(at(x)).item() == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("x", [-0.6, 0.0, 0.2, 0.6, 0.95])
def test_f2_matches_formula(x):
    expected = (
        1 - math.exp(-900 * (x - 0.6) ** 2) - math.exp(-900 * (x + 0.6) ** 2) - math.exp(-25 * x**2)
    )
    assert f2(at(x)).item() == pytest.approx(expected, rel=1e-14, abs=1e-15)


def test_2d_functions_at_known_points():
    assert rosenbrock(at(1.0, 1.0)).item() == 0.0
    assert rosenbrock(at(0.0, 1.0)).item() == 101.0
    assert rastrigin(at(0.0, 0.0)).item() == 0.0
    assert rastrigin(at(1.0, -1.0)).item() == pytest.approx(2.0)
    assert two_wells(at(1.0, 0.5)).item() == pytest.approx(-math.exp(-0.5 * 5 / 0.25), abs=1e-15)
    # On the plateau between the wells only the tails contribute.
    assert two_wells(at(2.0, -2.0)).item() == pytest.approx(1.0, abs=1e-3)


def test_functions_evaluate_batches_like_points():
    grid = torch.rand(5, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for function in FUNCTIONS.values():
        points = grid[..., : function.dim] + 0.5  # keeps f1's logarithm defined
        batched = function(points)
        assert batched.shape == (5, 3)
        single = torch.stack([function(p) for p in points.reshape(-1, function.dim)])
        torch.testing.assert_close(batched.reshape(-1), single, rtol=0, atol=0)


@pytest.mark.parametrize("phi", [0.0, 0.7, math.pi / 2, 2.2, 2.9])
def test_cardioid_valley_is_zero_and_sharpness_grows_as_r_cubed(phi):
    r = 1 + math.cos(phi)
    point = at(r * math.cos(phi), r * math.sin(phi))
    assert cardioid(point).item() == pytest.approx(0.0, abs=1e-28)
    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(cardioid, point))
    assert eigenvalues[0].item() == pytest.approx(0.0, abs=1e-12)
    assert eigenvalues[1].item() == pytest.approx(r**3 / 4, rel=1e-10)


def test_registry_is_consistent():
    assert set(FUNCTIONS) == {"f1", "f2", "rosenbrock", "cardioid", "two_wells", "rastrigin"}
    for name, function in FUNCTIONS.items():
        assert function.name == name
        assert len(function.start) == len(function.bounds) == function.dim
        assert all(
            low < s < high for s, (low, high) in zip(function.start, function.bounds, strict=True)
        )
        assert math.isfinite(function(at(*function.start)).item())
        assert function.description and function.steps > 0
    assert FUNCTIONS["f1"].start == (2.3,) and FUNCTIONS["f2"].start == (0.95,)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("f1", (4.0853,)),
        ("f2", (0.6,)),
        ("rosenbrock", (1.0, 1.0)),
        ("two_wells", (1.0, 0.5)),
        ("rastrigin", (1.9899, 1.9899)),
    ],
)
def test_first_minimum_is_a_stationary_point_of_the_right_well(name, expected):
    function = FUNCTIONS[name]
    minimum = function.first_minimum
    assert minimum.tolist() == pytest.approx(expected, abs=1e-4)
    point = minimum.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(function(point), point)
    assert grad.norm().item() < 1e-6
    assert function.first_minimum is minimum  # cached


@pytest.mark.parametrize(
    ("name", "lr", "steps"), [("two_wells", 1e-3, 3000), ("cardioid", 1e-2, 3000)]
)
def test_first_minimum_agrees_with_small_step_gradient_descent(name, lr, steps):
    function = FUNCTIONS[name]
    descent = run_trajectory(function, None, lambda p: torch.optim.SGD(p, lr=lr), steps)
    torch.testing.assert_close(descent.points[-1], function.first_minimum, rtol=0, atol=1e-3)


def test_cardioid_gradient_descent_lands_on_the_sharp_part_of_the_valley():
    function = FUNCTIONS["cardioid"]
    minimum = function.first_minimum
    assert function(minimum).item() < 1e-20
    r = minimum.norm().item()
    assert r > 1.9  # sharp end: across-valley eigenvalue r³/4 near its maximum 2


def test_gradient_flow_limit_stays_in_the_start_basin():
    # Just outside the sharp well of two_wells, on the side facing the wide one.
    limit = gradient_flow_limit(two_wells, at(0.75, 0.4), max_step=1e-2)
    torch.testing.assert_close(limit, at(-1.0, -0.5), rtol=0, atol=1e-4)
    limit = gradient_flow_limit(two_wells, at(0.9, 0.45), max_step=1e-2)
    torch.testing.assert_close(limit, at(1.0, 0.5), rtol=0, atol=1e-4)


def test_sgd_trajectory_is_gradient_descent():
    lr, steps = 1e-3, 20
    trajectory = run_trajectory(
        FUNCTIONS["rosenbrock"], None, lambda p: torch.optim.SGD(p, lr=lr), steps
    )
    assert trajectory.points.shape == (steps + 1, 2) and trajectory.losses.shape == (steps + 1,)
    assert not trajectory.diverged
    x = at(*FUNCTIONS["rosenbrock"].start)
    for k in range(steps + 1):
        torch.testing.assert_close(trajectory.points[k], x, rtol=0, atol=0)
        assert trajectory.losses[k].item() == rosenbrock(x).item()
        point = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(rosenbrock(point), point)
        x = x - lr * grad


def test_adam_trajectory_descends_and_summary():
    function = FUNCTIONS["rosenbrock"]
    trajectory = run_trajectory(function, (-1.5, 2.0), lambda p: torch.optim.Adam(p, lr=0.02), 500)
    summary = summarize(function, trajectory)
    assert summary["steps"] == 500 and summary["diverged"] is False
    assert summary["final_loss"] < 0.25 * trajectory.losses[0].item()
    assert summary["path_length"] >= summary["distance_from_start"] > 0
    assert summary["distance_from_start"] == pytest.approx(
        math.dist(summary["end"], function.start)
    )
    assert summary["first_minimum"] == pytest.approx([1.0, 1.0])
    assert summary["left_first_basin"] is False  # Rosenbrock has a single basin
    expected_top = torch.linalg.eigvalsh(
        torch.autograd.functional.hessian(rosenbrock, trajectory.points[-1])
    )[-1]
    assert summary["top_hessian_eigenvalue"] == pytest.approx(expected_top.item())


def test_summary_tells_sharp_from_flat_well():
    function = FUNCTIONS["two_wells"]
    stays = run_trajectory(function, None, lambda p: torch.optim.SGD(p, lr=1e-3), 1000)
    summary = summarize(function, stays)
    assert summary["left_first_basin"] is False
    assert summary["top_hessian_eigenvalue"] == pytest.approx(400.0, rel=1e-3)
    # Heavy-ball momentum overshoots the narrow well and settles in the wide one.
    escapes = run_trajectory(
        function, None, lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9), 2000
    )
    summary = summarize(function, escapes)
    assert summary["left_first_basin"] is True
    assert summary["end_minimum"] == pytest.approx([-1.0, -0.5], abs=1e-4)
    assert summary["top_hessian_eigenvalue"] == pytest.approx(4.0, rel=1e-3)


def test_divergence_is_reported():
    function = FUNCTIONS["rosenbrock"]
    trajectory = run_trajectory(function, None, lambda p: torch.optim.SGD(p, lr=1.0), 100)
    assert trajectory.diverged
    assert len(trajectory.points) == len(trajectory.losses) < 101
    assert not math.isfinite(trajectory.losses[-1].item())
    summary = summarize(function, trajectory)
    assert summary["left_first_basin"] is None and math.isnan(summary["top_hessian_eigenvalue"])


def test_start_none_needs_a_test_function():
    with pytest.raises(ValueError, match="TestFunction"):
        run_trajectory(rosenbrock, None, lambda p: torch.optim.SGD(p, lr=1e-3), 1)


def test_plot_writes_a_png(tmp_path):
    custom = TestFunction(
        name="bowl",
        dim=2,
        fn=lambda p: (p**2).sum(-1),
        start=(1.0, 1.0),
        bounds=((-2.0, 2.0), (-2.0, 2.0)),
        steps=10,
        description="a quadratic bowl",
    )
    sgd = lambda p: torch.optim.SGD(p, lr=1e-2)  # noqa: E731
    results: dict[str | TestFunction, dict[str, Trajectory]] = {
        "f2": {"SGD": run_trajectory(FUNCTIONS["f2"], None, sgd, 20)},
        "two_wells": {
            "SGD": run_trajectory(FUNCTIONS["two_wells"], None, sgd, 20),
            "Adam": run_trajectory(
                FUNCTIONS["two_wells"], None, lambda p: torch.optim.Adam(p, lr=1e-2), 20
            ),
        },
        custom: {"SGD": run_trajectory(custom, None, sgd, 10)},
    }
    path = plot_trajectories(results, tmp_path / "sub" / "landscape.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
