"""The command line's progress line: seconds per twin and the time left when the unit is
twins (the LLM generator), counts only otherwise."""

from __future__ import annotations

from services.cli.generate import progress_text


def test_twins_show_seconds_per_twin_and_time_left():
    assert progress_text(0, 10, "twins", 3.2, 0.0) == "0/10 twins (3 s)"
    # 4 twins in 50 s of writing (the model's start before the first report is not counted)
    assert progress_text(4, 10, "twins", 62.0, 50.0) == \
        "4/10 twins (62 s, 12.5 s per twin, about 1 min 15 s left)"
    assert progress_text(10, 10, "twins", 140.0, 128.0) == "10/10 twins (140 s, 12.8 s per twin)"
    assert progress_text(1, 400, "twins", 70.0, 60.0).endswith("about 6 h 39 min left)")
    assert progress_text(2, 3, "twins", 9.0, 8.0).endswith("about 4 s left)")


def test_other_units_show_counts_only():
    assert progress_text(30, 120, "patients", 1.4, 1.0) == "30/120 patients (1 s)"
