"""``benchmarks/e_perturbation.py``: E's relative perturbation of the gradient along training."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "e_perturbation.py"


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("e_perturbation", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


@pytest.mark.parametrize(("beta1", "alpha"), [(0.9, -8.0), (0.5, 0.5)])
def test_first_step_perturbation_is_the_coefficient_then_e_turns_the_gradient(
    beta1: float, alpha: float
) -> None:
    e_perturbation = _module()
    setting = e_perturbation.Setting("test", 30000, beta1, alpha, 0.01, 1)
    result = e_perturbation.measure(setting)
    assert result["steps"] == 2
    # Step 1: E's buffer is zero, so ĝ − g = α(1 − β1) g exactly: ρ = |α(1 − β1)|, cos = 1 (both
    # up to float32 rounding over 270k entries, measured ~1e-5).
    assert result["rho_first"] == pytest.approx(abs(alpha * (1 - beta1)), rel=1e-5)
    assert result["cosine"][0] == pytest.approx(1.0, abs=1e-4)
    # Step 2: e holds (1 − β1) g_1, so ĝ is no longer parallel to g (a new batch's gradient) and
    # the perturbation is no longer |α(1 − β1)|.
    assert result["cosine"][1] < 1 - 1e-4
    assert result["rho"][1] != pytest.approx(result["rho_first"], rel=1e-3)
