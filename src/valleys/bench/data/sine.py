"""The noisy sine regression of the paper's Appendix A (large-batch training of a small MLP)."""

from __future__ import annotations

import torch

from valleys.bench.data._common import RegressionSplits, check_fraction

X_RANGE = (-10.0, 10.0)


def sine_regression(
    n: int = 41_000, noise: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> RegressionSplits:
    """``n`` samples of ``y = sin(x) + noise · ε``, ``x ~ U[-10, 10]``, ``ε ~ N(0, 1)``.

    Returns :class:`RegressionSplits` of ``float32 [N, 1]`` tensors: the first
    ``n - round(n · test_fraction)`` samples train and the rest test (at least one each); the
    samples are i.i.d., so no shuffle is needed. The paper reports ~41k noisy samples and an 80/20
    split but not the noise law, so Gaussian noise of standard deviation ``noise`` is used. The
    same ``seed`` gives the same data on every call.
    """
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    check_fraction(test_fraction)
    generator = torch.Generator().manual_seed(seed)
    low, high = X_RANGE
    x = low + (high - low) * torch.rand(n, 1, generator=generator, dtype=torch.float64)
    y = torch.sin(x) + noise * torch.randn(n, 1, generator=generator, dtype=torch.float64)
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    x, y = x.float(), y.float()
    return RegressionSplits(x[: n - n_test], y[: n - n_test], x[n - n_test :], y[n - n_test :])
