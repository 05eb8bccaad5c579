"""Cohorts on the real trials: counts checked against pandas, validation, JSON, and the page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.data.cohort import (
    MISSING_LEVEL,
    CohortError,
    CohortSpec,
    apply_cohort,
    check_expression,
    describe_filters,
    validate_spec,
)
from services.data.cohort_frame import cohort_frame

ROOT = Path(__file__).resolve().parents[1]


# ----- the frame filters act on -----------------------------------------------------------
def test_cohort_frame_is_adsl_plus_baseline(pilot):
    frame = cohort_frame(pilot)
    assert list(frame["USUBJID"]) == list(pilot.subjects["USUBJID"])      # ADSL order, one row each
    for paramcd in pilot.baseline.columns:
        assert paramcd in frame.columns
        assert frame.set_index("USUBJID")[paramcd].equals(pilot.baseline[paramcd])


def test_describe_filters(pilot, pbc):
    by_name = {f.name: f for f in describe_filters(pilot)}
    assert by_name["AGE"].kind == "continuous" and by_name["AGE"].integer
    assert (by_name["AGE"].low, by_name["AGE"].high) == (pilot.subjects["AGE"].min(), pilot.subjects["AGE"].max())
    assert by_name["SEX"].levels == ("F", "M")
    assert by_name["AGEGR1"].levels == ("<65", "65-80", ">80")
    assert by_name["SYSBP"].source == "baseline"
    assert by_name["BMIBL"].n_missing == 1
    pbc_filters = {f.name: f for f in describe_filters(pbc)}
    assert pbc_filters["BILI"].kind == "continuous" and pbc_filters["BILI"].source == "baseline"
    assert pbc_filters["CHOL"].n_missing > 0
    assert pbc_filters["STAGE"].kind == "categorical"


# ----- counts ------------------------------------------------------------------------------
def test_arm_filter_counts(pilot):
    cohort = apply_cohort(pilot, CohortSpec(arms=["Placebo"]))
    assert cohort.n == 86 == len(cohort.usubjids)
    assert cohort.by_arm == {"Placebo": 86}
    assert set(cohort.frame["ARM"]) == {"Placebo"}
    everyone = apply_cohort(pilot, CohortSpec())
    assert everyone.n == 254
    assert everyone.by_arm == {"Placebo": 86, "Xanomeline High Dose": 84, "Xanomeline Low Dose": 84}


def test_usubjids_in_adsl_order(pilot):
    cohort = apply_cohort(pilot, CohortSpec(arms=["Xanomeline Low Dose", "Placebo"]))
    adsl = pilot.subjects
    expected = list(adsl.loc[adsl["ARM"].isin(["Placebo", "Xanomeline Low Dose"]), "USUBJID"])
    assert cohort.usubjids == expected
    assert list(cohort.by_arm) == ["Placebo", "Xanomeline Low Dose"]       # control arm first


def test_categories_match_pandas(pilot):
    adsl = pilot.subjects
    cohort = apply_cohort(pilot, CohortSpec(categories={"SEX": ["F"]}))
    assert cohort.n == int((adsl["SEX"] == "F").sum())
    by_expr = apply_cohort(pilot, CohortSpec(expression='SEX == "F"'))
    assert by_expr.usubjids == cohort.usubjids
    both = apply_cohort(pilot, CohortSpec(arms=["Placebo"], categories={"sex": ["F"]}))
    assert both.n == int(((adsl["SEX"] == "F") & (adsl["ARM"] == "Placebo")).sum())


def test_ranges_match_pandas_and_exclude_missing(pilot):
    adsl = pilot.subjects
    cohort = apply_cohort(pilot, CohortSpec(ranges={"AGE": (65, 80)}))
    assert cohort.n == int(adsl["AGE"].between(65, 80).sum())
    open_low = apply_cohort(pilot, CohortSpec(ranges={"AGE": (None, 70)}))
    assert open_low.n == int((adsl["AGE"] <= 70).sum())
    # BMIBL has one missing: an open range still requires a value
    anybmi = apply_cohort(pilot, CohortSpec(ranges={"BMIBL": (None, None)}))
    assert anybmi.n == int(adsl["BMIBL"].notna().sum()) == 253


def test_baseline_parameter_range_and_expression(pbc):
    base = pbc.baseline
    cohort = apply_cohort(pbc, CohortSpec(ranges={"BILI": (1, 5)}))
    assert cohort.n == int(base["BILI"].between(1, 5).sum())
    expr = apply_cohort(pbc, CohortSpec(expression="BILI between 1 and 5"))
    assert expr.usubjids == cohort.usubjids
    combo = apply_cohort(pbc, CohortSpec(arms=["Placebo"], expression="BILI > 2 and ALB < 3.5"))
    arm = pbc.subjects.set_index("USUBJID")["ARM"]
    want = base[(base["BILI"] > 2) & (base["ALB"] < 3.5) & (arm.reindex(base.index) == "Placebo")]
    assert set(combo.usubjids) == set(want.index)


def test_missing_level_in_categories(pbc):
    frame = cohort_frame(pbc)
    assert frame["CHOL"].isna().any()
    # a numeric column filtered as categories, with the "(missing)" level
    cohort = apply_cohort(pbc, CohortSpec(expression="CHOL is missing"))
    assert cohort.n == int(frame["CHOL"].isna().sum())
    pilot_like = apply_cohort(pbc, CohortSpec(categories={"SEX": ["F", MISSING_LEVEL]}))
    assert pilot_like.n == int((frame["SEX"] == "F").sum() + frame["SEX"].isna().sum())


def test_all_criteria_combine_with_and_and_attrition(pilot):
    adsl = pilot.subjects.merge(pilot.baseline, left_on="USUBJID", right_index=True)
    spec = CohortSpec(arms=["Placebo", "Xanomeline High Dose"], ranges={"AGE": (60, None)},
                      categories={"SEX": ["F"]}, expression="SYSBP < 160")
    cohort = apply_cohort(pilot, spec)
    want = adsl[adsl["ARM"].isin(spec.arms) & (adsl["AGE"] >= 60) & (adsl["SEX"] == "F") & (adsl["SYSBP"] < 160)]
    assert cohort.n == len(want)
    assert cohort.by_arm == want["ARM"].value_counts().reindex(spec.arms).to_dict()
    steps = cohort.attrition_frame()
    assert steps["remaining"].iloc[0] == 254 and steps["remaining"].iloc[-1] == cohort.n
    assert (steps["remaining"] + steps["excluded"]).iloc[1:].tolist() == steps["remaining"].iloc[:-1].tolist()
    assert int(cohort.mask.sum()) == cohort.n and cohort.mask.index[0] == adsl["USUBJID"].iloc[0]


def test_empty_cohort_is_not_an_error(pilot):
    cohort = apply_cohort(pilot, CohortSpec(arms=["Placebo"], ranges={"AGE": (10, 20)}))
    assert cohort.n == 0 and cohort.usubjids == [] and cohort.by_arm == {"Placebo": 0}


# ----- validation --------------------------------------------------------------------------
def test_validation_names_every_problem(pilot):
    spec = CohortSpec(arms=["Placebos"], ranges={"AGEE": (1, 2), "SEX": (1, 2), "AGE": (80, 60)},
                      categories={"RACE": ["ASIAN"]}, expression="SEX > 3")
    with pytest.raises(CohortError) as info:
        apply_cohort(pilot, spec)
    text = "\n".join(info.value.messages)
    assert len(info.value.messages) == 6
    assert "unknown arm 'Placebos'" in text and "did you mean Placebo?" in text
    assert "unknown column 'AGEE'" in text and "did you mean AGE?" in text
    assert "range of SEX: SEX is not numeric" in text
    assert "lower bound 80 is above the upper bound 60" in text
    assert "categories of RACE: value 'ASIAN' does not occur" in text
    assert text.splitlines()[-1].startswith("expression: ")


def test_bad_bounds_and_shapes():
    with pytest.raises(CohortError, match="not a number"):
        CohortSpec(ranges={"AGE": ("old", None)})
    with pytest.raises(CohortError, match="expected \\[low, high\\]"):
        CohortSpec(ranges={"AGE": 5})
    with pytest.raises(CohortError, match="unknown key"):
        CohortSpec.from_dict({"arm": ["Placebo"]})
    with pytest.raises(CohortError, match="not valid JSON"):
        CohortSpec.from_json("{arms: ")


def test_check_expression(pilot):
    assert check_expression(pilot, "AGE > 60") is None
    assert check_expression(pilot, "") is None
    assert "unknown column 'AGEE' at position 1" in check_expression(pilot, "AGEE > 60")
    assert validate_spec(pilot, CohortSpec(expression="__import__('os')"))


# ----- JSON --------------------------------------------------------------------------------
def test_spec_json_round_trip(pilot):
    spec = CohortSpec(arms=["Placebo"], ranges={"AGE": (50, None), "SYSBP": (None, 160.5)},
                      categories={"SEX": ["F"], "RACE": ["WHITE", MISSING_LEVEL]},
                      expression='BMIBL between 18.5 and 30 and ETHNIC != "HISPANIC OR LATINO"',
                      name="Placebo women over 50")
    data = json.loads(json.dumps(spec.to_dict()))
    again = CohortSpec.from_dict(data)
    assert again == spec
    assert CohortSpec.from_json(spec.to_json()) == spec
    assert data["ranges"]["AGE"] == [50, None]
    assert apply_cohort(pilot, again).usubjids == apply_cohort(pilot, spec).usubjids
    assert CohortSpec.from_dict({}) == CohortSpec() and CohortSpec().is_empty
    assert spec.summary().startswith("arm: Placebo; AGE ≥ 50; SYSBP ≤ 160.5; SEX: F")


def test_numpy_values_become_plain_json(pilot):
    frame = cohort_frame(pilot)
    spec = CohortSpec(ranges={"AGE": (frame["AGE"].min(), frame["AGE"].max())},
                      categories={"SEX": list(frame["SEX"].unique())})
    json.dumps(spec.to_dict())                     # numpy floats and str_ are converted


# ----- the page ----------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_cohort_page_apptest():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/cohort.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert "N" in metrics
    total = int(metrics["N"])
    assert total > 0
    assert at.dataframe, "Table 1 is shown"

    # arm filter: N follows
    arms = next(m for m in at.multiselect if m.label == "Arms")
    first_arm = arms.options[0]
    arms.set_value([first_arm]).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert 0 < int(metrics["N"]) < total

    # a bad expression is shown inline and not applied; a good one is
    box = at.text_area[0]
    box.input("AGEE > 50").run()
    assert any("unknown column 'AGEE'" in e.value for e in at.error)
    assert not at.exception
    # ... and the cohort cannot be saved while the expression is wrong: the button is disabled
    # and the error beside it names what is wrong
    assert at.button(key="cohort_use").disabled
    assert any(e.value.startswith("**Cannot use this cohort:**") and "unknown column 'AGEE'" in e.value
               for e in at.error)
    assert "cohort_ids" not in at.session_state
    at.text_area[0].input("AGE > 50").run()
    assert not at.error
    assert not at.button(key="cohort_use").disabled
    n_filtered = int({m.label: m.value for m in at.metric}["N"])

    # use this cohort: kept in session state for the later pages
    at.button(key="cohort_use").click().run()
    assert not at.exception
    assert len(at.session_state["cohort_ids"]) == n_filtered
    assert at.session_state["cohort_spec"].expression == "AGE > 50"


# ----- figure builders ------------------------------------------------------------------------
def test_baseline_figures(pbc):
    from services.reporting.figures import baseline as fb

    cohort = apply_cohort(pbc, CohortSpec(expression="BILI < 3"))
    full = cohort_frame(pbc)
    box = fb.baseline_distribution(cohort.frame, "AGE", "continuous", groups=list(cohort.by_arm))
    assert [len(t.y) for t in box.data] == [cohort.by_arm[a] for a in cohort.by_arm]
    hist = fb.baseline_distribution(cohort.frame, "BILI", "continuous", groups=list(cohort.by_arm),
                                    style="histogram")
    assert {t.type for t in hist.data} == {"histogram"}
    bars = fb.baseline_distribution(cohort.frame, "STAGE", "categorical", groups=list(cohort.by_arm))
    assert list(bars.data[0].x) == ["Stage 1", "Stage 2", "Stage 3", "Stage 4"]
    assert sum(bars.data[0].customdata) == cohort.by_arm[bars.data[0].name.split(" (n=")[0]]
    versus = fb.cohort_vs_excluded(full, cohort.mask.to_numpy(), "SEX", "categorical")
    assert [t.name for t in versus.data] == [f"In cohort (n={cohort.n})",
                                             f"Excluded (n={len(full) - cohort.n})"]
    everyone = fb.cohort_vs_excluded(full, [True] * len(full), "AGE", "continuous")
    assert "No subject is excluded" in everyone.layout.annotations[0].text
    funnel = fb.attrition_chart(cohort.attrition_frame())
    assert list(funnel.data[0].x) == [len(full), cohort.n]
