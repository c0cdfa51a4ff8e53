"""The multilayer perceptron of the paper's Appendix A (noisy sine regression)."""

from __future__ import annotations

import itertools

from torch import nn


def mlp(
    in_features: int = 1,
    hidden: int = 64,
    out_features: int = 1,
    depth: int = 3,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Module:
    """``depth`` linear layers, ``hidden`` units wide, with ``activation`` between them.

    Maps ``[B, in_features]`` to ``[B, out_features]``. The paper describes "a 3-layer MLP" and
    gives neither width nor activation; 64 units and ReLU are this package's choice.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    widths = [in_features] + [hidden] * (depth - 1) + [out_features]
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        if index:
            layers.append(activation())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)
