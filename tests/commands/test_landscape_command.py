"""``valleys landscape`` from the command line: its options and what it prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from valleys.commands.main import main


@pytest.mark.parametrize("lr", ["0", "-1", "nan", "inf", "fast"])
def test_lr_must_be_a_positive_finite_number(lr: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["landscape", "--lr", lr])
    assert exit_info.value.code == 2
    assert re.search(r"--lr: expected a finite number > 0, got '?" + lr, capsys.readouterr().err)


def test_prints_the_table_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["landscape", "--functions", "f1", "--optimizers", "sgd,esgd", "--lr", "0.01"]
    assert main([*argv, "--steps", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| f1 | sgd | 0.01 |" in out and "| f1 | esgd | 0.01 |" in out
    assert f"report: {tmp_path / 'landscape.md'}" in out
    assert (tmp_path / "landscape.json").is_file() and (tmp_path / "landscape.png").is_file()


def test_unknown_function_is_an_error_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["landscape", "--functions", "nope", "--quiet"]) == 1
    assert capsys.readouterr().err.startswith("valleys: error: Unknown function(s) nope")
