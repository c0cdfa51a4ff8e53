"""What the ``valleys`` commands share: exit statuses, the error line and the argument types."""

from __future__ import annotations

import argparse

import pytest

from valleys.commands._common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    comma_list,
    fail,
    finite_float,
    key_value,
    name_list,
    non_negative_float,
    optimizer_list,
    positive_float,
    positive_int,
    seed_list,
)


def test_exit_statuses_are_the_documented_ones() -> None:
    assert (EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED) == (1, 2, 130)


def test_fail_prints_one_error_line(capsys: pytest.CaptureFixture) -> None:
    assert fail(ValueError("bad lr")) == EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.err == "valleys: error: bad lr\n" and captured.out == ""


def test_fail_shows_an_os_error_by_its_file_and_reason(capsys: pytest.CaptureFixture) -> None:
    fail(PermissionError(13, "Permission denied", "/runs/a/config.json"))
    fail(OSError(28, "cannot write /runs/a/checkpoint.pt (No space left on device)"))
    assert capsys.readouterr().err.splitlines() == [
        "valleys: error: /runs/a/config.json: Permission denied",
        "valleys: error: cannot write /runs/a/checkpoint.pt (No space left on device)",
    ]


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (positive_int, "0", "expected an integer >= 1, got 0"),
        (positive_int, "1.5", "expected an integer >= 1, got '1.5'"),
        (positive_float, "0", "expected a finite number > 0, got 0"),
        (positive_float, "inf", "expected a finite number > 0, got inf"),
        (positive_float, "x", "expected a finite number > 0, got 'x'"),
        (non_negative_float, "-0.5", "expected a finite number >= 0, got -0.5"),
        (finite_float, "nan", "expected a finite number, got nan"),
        (seed_list, " , ", "expected comma-separated integers >= 0"),
        (seed_list, "1,-2", "expected an integer >= 0, got -2"),
        (optimizer_list, ",", "expected comma-separated optimizer names"),
        (optimizer_list, "alto,adamx", "valid names"),
        (key_value, "=3", "expected KEY=VALUE"),
        (name_list, " , ", "expected comma-separated names, got ' , '"),
    ],
)
def test_argument_types_refuse_with_a_message(parse, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_argument_types_accept() -> None:
    assert positive_int("3") == 3 and positive_float("1e-3") == 1e-3
    assert non_negative_float("0") == 0.0 and finite_float("-2") == -2.0
    assert comma_list(" f1, ,f2 ") == ["f1", "f2"] and comma_list("") == []
    assert name_list("f1,") == ["f1"]
    assert seed_list("0, 1") == (0, 1)
    assert optimizer_list("alto, lamb") == ("alto", "lamb")
    assert key_value(" betas =(0.9,0.99)") == ("betas", (0.9, 0.99))
    assert key_value("name=adam") == ("name", "adam")
