"""``valleys landscape``: the learning-rate rule, the table and the report files."""

from __future__ import annotations

import json

import pytest
from one_thread import one_thread  # noqa: F401  (the fixture pytestmark uses)

from valleys.bench.analysis.landscape_runs import (
    STORED_POINTS,
    markdown_table,
    run_landscapes,
    write_report,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_alto_travels_where_lamb_stops_and_the_report_is_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_landscapes(["f2", "cardioid"], ["lamb", "alto"])
    for function in ("f2", "cardioid"):
        lamb, alto = result.summaries[function]["lamb"], result.summaries[function]["alto"]
        # ALTO runs at Lamb's own most aggressive first-basin lr, so the difference is E's.
        assert result.settings[function]["alto"]["lr"] == result.settings[function]["lamb"]["lr"]
        assert lamb["left_first_basin"] is False
        assert alto["left_first_basin"] is True
    # On the cardioid ALTO ends near the flat cusp, Lamb at the sharp far end.
    assert result.summaries["cardioid"]["alto"]["top_hessian_eigenvalue"] < 1e-3
    assert result.summaries["cardioid"]["lamb"]["top_hessian_eigenvalue"] > 1.0
    assert result.settings["f2"]["alto"]["alpha"] == -90.0

    paths = write_report(result, tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads(paths["json"].read_text())
    assert stored["settings"]["cardioid"]["alto"]["lr_rule"].startswith("largest lr")
    # Trajectories are stored thinned, with their step numbers, first and last iterate included.
    full = result.trajectories["f2"]["alto"]
    kept = stored["trajectories"]["f2"]["alto"]
    assert len(kept["steps"]) == len(kept["points"]) == len(kept["losses"]) == STORED_POINTS
    assert kept["steps"][0] == 0 and kept["steps"][-1] == full.points.shape[0] - 1
    assert kept["points"][-1] == full.points[-1].tolist()
    assert kept["losses"][0] == full.losses[0].item()
    assert "| cardioid | alto |" in paths["markdown"].read_text()
    assert markdown_table(result).count("\n") == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"functions": ["nope"]}, r"Unknown function\(s\) nope; valid: f1, f2"),
        ({"optimizers": ["adamz"]}, r"Unknown optimizer\(s\) adamz; valid: .*alto"),
        ({"lr": -1.0}, r"Invalid lr: -1\.0"),
        ({"steps": 0}, r"Invalid steps: 0"),
    ],
)
def test_bad_input_lists_valid_choices(kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        run_landscapes(**kwargs)
