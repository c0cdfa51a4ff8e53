"""What the integration tests share: loading an example, and comparing optimizer states."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first, as an import would: dataclasses and pickling look the module up.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def e_buffers(state_dict: dict[str, Any]) -> list[torch.Tensor]:
    """E's buffer of every parameter in an optimizer ``state_dict``, in parameter order."""
    return [state_dict["state"][index]["grad_ema"] for index in sorted(state_dict["state"])]


def assert_same_optimizer_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Bit-equal per-parameter state (E's buffer, moments, step) and equal hyperparameters; E's
    buffer must be there and have moved, or the comparison would prove nothing about it."""
    assert got["state"].keys() == want["state"].keys()
    for index, state in want["state"].items():
        assert got["state"][index].keys() == state.keys(), index
        for key, value in state.items():
            assert torch.equal(got["state"][index][key], value), (index, key)
    assert all(buffer.abs().sum() > 0 for buffer in e_buffers(want))
    for mine, theirs in zip(got["param_groups"], want["param_groups"], strict=True):
        assert {k: v for k, v in mine.items() if k != "lr"} == {
            k: v for k, v in theirs.items() if k != "lr"
        }
        assert float(mine["lr"]) == float(theirs["lr"])


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """The same names, each tensor bit-equal."""
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), name
