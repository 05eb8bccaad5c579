"""Table 1 checked against plain pandas computations on the real trials."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from services.data.cohort import CohortSpec, apply_cohort
from services.data.cohort_frame import cohort_frame, repeated_baselines, table1_kinds
from services.data.table1 import (
    OVERALL,
    decimals_for,
    smd_categorical,
    smd_continuous,
    table1,
    table1_long,
)


def cell(table, variable, statistic, column):
    rows = table[(table["Variable"] == variable) & (table["Statistic"] == statistic)]
    assert len(rows) == 1, (variable, statistic)
    return rows.iloc[0][column]


@pytest.fixture(scope="module")
def pilot_table(pilot):
    frame = cohort_frame(pilot)
    return frame, table1(frame, by="ARM", groups=pilot.arms, smd=("Xanomeline High Dose", "Placebo"))


def test_layout_header_and_columns(pilot, pilot_table):
    _, t = pilot_table
    assert list(t.columns) == ["Variable", "Statistic", *pilot.arms, OVERALL, "SMD"]
    n_row = t.iloc[0]
    assert n_row["Variable"] == "N"
    assert int(n_row["Placebo"]) == 86
    assert int(n_row[OVERALL]) == len(pilot.subjects) == 254
    # default variables: covariates then baseline parameters, one block each
    variables = list(dict.fromkeys(t["Variable"][1:]))
    assert variables == list(table1_kinds(pilot))
    assert variables[:2] == ["AGE", "AGEGR1"] and "SYSBP" in variables


def test_age_in_placebo_matches_pandas(pilot, pilot_table):
    _, t = pilot_table
    age = pilot.subjects.loc[pilot.subjects["ARM"] == "Placebo", "AGE"]
    assert cell(t, "AGE", "mean (SD)", "Placebo") == f"{age.mean():.1f} ({age.std(ddof=1):.1f})"
    q1, q3 = age.quantile([0.25, 0.75])
    assert cell(t, "AGE", "median [Q1, Q3]", "Placebo") == f"{age.median():.1f} [{q1:.1f}, {q3:.1f}]"
    assert cell(t, "AGE", "missing n", "Placebo") == "0"
    overall = pilot.subjects["AGE"]
    assert cell(t, "AGE", "mean (SD)", OVERALL) == f"{overall.mean():.1f} ({overall.std():.1f})"


def test_percent_female_matches_pandas(pilot, pilot_table):
    _, t = pilot_table
    adsl = pilot.subjects
    for arm in pilot.arms:
        sex = adsl.loc[adsl["ARM"] == arm, "SEX"]
        n_f = int((sex == "F").sum())
        assert cell(t, "SEX", "F", arm) == f"{n_f} ({100 * n_f / len(sex):.1f}%)"
    n_f = int((adsl["SEX"] == "F").sum())
    assert cell(t, "SEX", "F", OVERALL) == f"{n_f} ({100 * n_f / len(adsl):.1f}%)"


def test_categorical_levels_follow_adam_codes_and_missing_rows(pilot, pilot_table):
    _, t = pilot_table
    levels = list(t.loc[t["Variable"] == "AGEGR1", "Statistic"])
    assert levels == ["<65", "65-80", ">80"]           # ordered by AGEGR1N, not alphabetically
    # BMIBL has one missing value in the pilot
    missing = int(pilot.subjects["BMIBL"].isna().sum())
    assert cell(t, "BMIBL", "missing n", OVERALL) == str(missing) == "1"


def test_baseline_parameter_block_matches_trial_baseline(pilot, pilot_table):
    _, t = pilot_table
    base = pilot.baseline.join(pilot.subjects.set_index("USUBJID")["ARM"])
    sbp = base.loc[base["ARM"] == "Placebo", "SYSBP"]
    assert cell(t, "SYSBP", "mean (SD)", "Placebo") == f"{sbp.mean():.1f} ({sbp.std():.1f})"


def test_smd_values(pilot, pilot_table):
    frame, t = pilot_table
    a = frame.loc[frame["ARM"] == "Xanomeline High Dose", "AGE"]
    b = frame.loc[frame["ARM"] == "Placebo", "AGE"]
    expected = (a.mean() - b.mean()) / math.sqrt((a.var() + b.var()) / 2)
    assert cell(t, "AGE", "mean (SD)", "SMD") == f"{expected:.3f}"
    assert cell(t, "AGE", "median [Q1, Q3]", "SMD") == ""
    # binary categorical: the classic proportion formula
    p1 = (frame.loc[frame["ARM"] == "Xanomeline High Dose", "SEX"] == "M").mean()
    p2 = (frame.loc[frame["ARM"] == "Placebo", "SEX"] == "M").mean()
    binary = abs(p1 - p2) / math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / 2)
    assert cell(t, "SEX", "F", "SMD") == f"{binary:.3f}"


def test_smd_functions_edge_cases():
    assert smd_continuous(pd.Series([1.0, 1.0]), pd.Series([1.0, 1.0])) == 0.0
    assert np.isnan(smd_continuous(pd.Series([1.0]), pd.Series([2.0, 3.0])))
    assert smd_categorical(pd.Series(["a", "b"]), pd.Series(["a", "b"])) == 0.0
    # three levels: positive, and symmetric
    x, y = pd.Series(list("aabbcc")), pd.Series(list("aaaabc"))
    assert smd_categorical(x, y) > 0
    assert smd_categorical(x, y) == pytest.approx(smd_categorical(y, x))


def test_long_table_has_unrounded_numbers(pilot):
    frame = cohort_frame(pilot)
    long = table1_long(frame, by="ARM", groups=pilot.arms, smd=True)
    row = long[(long["variable"] == "AGE") & (long["group"] == "Placebo")].iloc[0]
    age = pilot.subjects.loc[pilot.subjects["ARM"] == "Placebo", "AGE"]
    assert row["mean"] == pytest.approx(age.mean())
    assert row["sd"] == pytest.approx(age.std())
    assert row["q1"] == pytest.approx(age.quantile(0.25))
    assert row["n"] == len(age) and row["missing"] == 0
    female = long[(long["variable"] == "SEX") & (long["level"] == "F") & (long["group"] == OVERALL)].iloc[0]
    assert female["percent"] == pytest.approx(100 * (pilot.subjects["SEX"] == "F").mean())
    assert set(long["group"]) == set(pilot.arms) | {OVERALL}
    assert "smd" in long.columns
    # CSV round trip keeps everything
    again = pd.read_csv(pd.io.common.StringIO(long.to_csv(index=False)), keep_default_na=False,
                        na_values=[""])
    assert len(again) == len(long)


def test_pbc_cohort_table_and_small_values(pbc):
    cohort = apply_cohort(pbc, CohortSpec(ranges={"BILI": (None, 5)}))
    t = table1(cohort.frame, by="ARM", groups=list(cohort.by_arm))
    assert int(t.iloc[0][OVERALL]) == cohort.n
    # albumin (~3.5 g/dL) gets 2 decimals, cholesterol (~350 mg/dL) 1
    alb = cohort.frame.loc[cohort.frame["ARM"] == "Placebo", "ALB"]
    assert cell(t, "ALB", "mean (SD)", "Placebo") == f"{alb.mean():.2f} ({alb.std():.2f})"
    chol = cohort.frame.loc[cohort.frame["ARM"] == "Placebo", "CHOL"]
    assert cell(t, "CHOL", "mean (SD)", "Placebo") == f"{chol.mean():.1f} ({chol.std():.1f})"
    assert cell(t, "CHOL", "missing n", "Placebo") == str(int(chol.isna().sum()))
    # STAGE is text with 4 levels: n (%) rows
    stage = list(t.loc[t["Variable"] == "STAGE", "Statistic"])
    assert stage == ["Stage 1", "Stage 2", "Stage 3", "Stage 4"]


def test_decimals_rule():
    assert decimals_for(pd.Series([70.0, 80.0])) == 1
    assert decimals_for(pd.Series([3.2, 3.8])) == 2
    assert decimals_for(pd.Series([0.2, 0.4])) == 3
    assert decimals_for(pd.Series([0.002, 0.004])) == 4


def test_variables_kinds_and_empty_groups(pilot):
    frame = cohort_frame(pilot)
    t = table1(frame, variables=["AGE", "EDUCLVL"], kinds={"EDUCLVL": "categorical"},
               groups=["Placebo", "No such arm"])
    assert list(dict.fromkeys(t["Variable"])) == ["N", "AGE", "EDUCLVL"]
    assert cell(t, "AGE", "mean (SD)", "No such arm") == "–"
    assert int(t.iloc[0]["No such arm"]) == 0
    assert "12" in set(t.loc[t["Variable"] == "EDUCLVL", "Statistic"])
    with pytest.raises(ValueError, match="unknown variable"):
        table1(frame, variables=["NOPE"])
    empty = table1(frame.iloc[0:0], variables=["AGE", "SEX"], groups=["Placebo"])
    assert int(empty.iloc[0][OVERALL]) == 0 and cell(empty, "AGE", "mean (SD)", OVERALL) == "–"


def test_frame_without_attrs_infers_variables(pilot):
    frame = pilot.subjects[["USUBJID", "ARM", "AGE", "SEX", "TRTSDT"]].copy()
    t = table1(frame)
    assert list(dict.fromkeys(t["Variable"])) == ["N", "AGE", "SEX"]   # ids and dates left out
    assert list(t.columns[2:]) == sorted(pilot.arms) + [OVERALL]


def test_grouped_values_read_in_threshold_order_and_the_example_filter_fits_the_trial(pilot, demo_trials):
    # a browser review: the pilot's BMI groups read "25-<30, <25, >=30"; the expression's
    # placeholder named BILI, a column of the PBC demo only
    from services.data.cohort import describe_filters, expression_example
    from services.data.table1 import observed_levels

    assert observed_levels(pilot.subjects["BMIBLGR1"]) == ["<25", "25-<30", ">=30"]
    assert observed_levels(pilot.subjects["AGEGR1"]) == ["<65", "65-80", ">80"]
    assert observed_levels(pd.Series(["M", "F"])) == ["F", "M"]
    for trial in [pilot, *demo_trials]:
        example = expression_example(describe_filters(trial))
        assert example.startswith("e.g. ") and apply_cohort(trial, CohortSpec(expression=example[5:])).n > 0


def test_a_baseline_that_repeats_an_adsl_variable_is_found(pilot, pbc):
    # the pilot's vital-signs HEIGHT / WEIGHT are ADSL's HEIGHTBL / WEIGHTBL to rounding (147.32 vs 147.3)
    assert repeated_baselines(pilot) == {"HEIGHT": "HEIGHTBL", "WEIGHT": "WEIGHTBL"}
    assert repeated_baselines(pbc) == {}
    # the same quantity in other units is another variable
    subjects = pilot.subjects.assign(WEIGHTBL=pilot.subjects["WEIGHTBL"] * 2.2046)
    assert repeated_baselines(dataclasses.replace(pilot, subjects=subjects)) == {"HEIGHT": "HEIGHTBL"}
