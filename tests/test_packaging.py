"""The package a user installs: one version, and a wheel that works with torch alone.

The wheel test builds ``pip wheel --no-deps`` from a copy of the sources (so the checkout gets no
build folders), installs it with ``--no-deps`` into a fresh venv that holds only torch, and steps
ALTO there: a harness import creeping into ``valleys.optim`` fails it, since the venv has no numpy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch

import valleys

if sys.version_info >= (3, 11):
    import tomllib
else:  # tomli comes with the bench extra below Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# Run in the fresh venv: step ALTO, then name every module that should not have been imported.
_STEP_ALTO = """
import sys
import torch
import valleys.optim
model = torch.nn.Linear(4, 2)
opt = valleys.optim.ALTO(model.parameters(), lr=1e-2)
before = model.weight.detach().clone()
model(torch.randn(8, 4)).square().mean().backward()
opt.step()
assert not torch.equal(before, model.weight), "ALTO did not move the weights"
heavy = ("numpy", "jax", "valleys.bench", "valleys.commands", "valleys.optax")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith(heavy))
assert not loaded, f"import valleys.optim loaded {loaded}"
print("ok", valleys.__version__)
"""


def _run(*command: str | Path) -> str:
    # A failing step shows pip's own output, not just its exit status.
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_version_is_defined_once() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "valleys.__version__"}


def test_the_changelog_has_the_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"\n## {valleys.__version__} - " in changelog


def _torch_requirement() -> str:
    """The torch the Makefile installs (``VALLEYS_TORCH``), else the version running the tests."""
    return os.environ.get("VALLEYS_TORCH") or f"torch=={torch.__version__.split('+')[0]}"


@pytest.mark.slow
def test_wheel_installs_and_steps_alto_with_torch_alone(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "--no-deps", "-q", "-w", tmp_path / "wheels", source)
    (wheel,) = (tmp_path / "wheels").glob("valleys-*.whl")
    assert wheel.name.startswith(f"valleys-{valleys.__version__}-")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", _torch_requirement())
    _run(python, "-m", "pip", "install", "-q", "--no-deps", wheel)
    assert _run(python, "-c", _STEP_ALTO).split() == ["ok", valleys.__version__]
    assert _run(venv / "bin" / "valleys", "--version").strip() == f"valleys {valleys.__version__}"
