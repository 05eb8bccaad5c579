"""The effects table shared by Compare's Effect tab and the report (services/evaluation/effects_table.py)."""

from __future__ import annotations


def test_each_effect_row_says_whether_its_interval_carries_the_generator_term():
    # a browser review: pbc ALB at Year 8 (var_generator floored at 0, Satterthwaite df 0.87) had an
    # interval 8 times its neighbours', and Year 9-10 rows none at all, under a caption saying that
    # every interval adds the generator's uncertainty
    from services.evaluation.effects_table import effects_display, generator_term_cell

    row = {"measure": "mean_difference", "paramcd": "ALB", "avisit": "Year 8", "avisitn": 96, "estimate": 0.1,
           "ci_low": -0.2, "ci_high": 0.4, "p_value": 0.5, "n_patients": 24, "B": 20, "var_generator": 0.01,
           "df": 25.0, "design": "synthetic_control"}
    assert generator_term_cell(row) == "included"
    assert generator_term_cell(row | {"df": 0.87}) == "unstable (df 0.9): interval very wide"
    assert generator_term_cell(row | {"var_generator": None}).startswith("NOT included")
    assert generator_term_cell(row | {"B": 0}) == "not included (no refits)"
    assert generator_term_cell(row | {"measure": "mean_difference_dr"}) == "none needed (doubly robust)"
    frame = effects_display([row, row | {"df": 0.87}])
    assert list(frame["generator term"]) == ["included", "unstable (df 0.9): interval very wide"]


def test_the_rmst_difference_is_in_days_and_ratios_are_ratios():
    from services.evaluation.effects_table import effects_display

    base = {"paramcd": "DEATH", "avisit": "", "avisitn": None, "estimate": 1.0, "ci_low": 0.5, "ci_high": 2.0,
            "p_value": 0.5, "n_patients": 30, "B": 20, "var_generator": 0.1, "df": 40.0}
    frame = effects_display([base | {"measure": "rmst_difference"}, base | {"measure": "hazard_ratio"}],
                            units={"DEATH": ""})
    assert list(frame["unit"]) == ["days", "ratio"]
