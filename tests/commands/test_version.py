"""``valleys --version``: the package's one version, printed without building any command."""

from __future__ import annotations

import subprocess
import sys

import pytest

import valleys
from valleys.commands.main import main


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"valleys {valleys.__version__}\n"


def test_version_from_the_installed_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "valleys", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"valleys {valleys.__version__}"
