"""The filter language: grammar, semantics on real data, and rejection of everything else."""

from __future__ import annotations

import builtins

import numpy as np
import pandas as pd
import pytest

from services.data import filterlang
from services.data.cohort_frame import cohort_frame
from services.data.filterlang import FilterError, evaluate, parse


@pytest.fixture(scope="module")
def pframe(pilot):
    return cohort_frame(pilot)


@pytest.fixture(scope="module")
def bframe(pbc):
    return cohort_frame(pbc)


@pytest.fixture
def toy():
    return pd.DataFrame({
        "AGE": [40.0, 55.0, np.nan, 80.0, 65.0],
        "SEX": ["F", "M", "F", None, "M"],
        "SYSBP": [120.0, 150.0, 130.0, 110.0, np.nan],
        "DIABP": [80.0, 95.0, 85.0, 70.0, 75.0],
        "RANDDT": pd.to_datetime(["2013-01-01", "2013-06-01", "2014-01-01", None, "2012-12-31"]),
        "FLAG": [True, False, True, False, True],
    })


def ids(frame, expr):
    return list(frame.index[evaluate(expr, frame)])


# ----- semantics on a small frame --------------------------------------------------------
def test_comparisons_and_missing_values_never_match(toy):
    assert ids(toy, "AGE >= 55") == [1, 3, 4]
    assert ids(toy, "AGE < 55") == [0]                    # missing AGE is in neither
    assert ids(toy, "not (AGE >= 55)") == [0]             # three-valued logic, as in SQL
    assert ids(toy, 'SEX == "F"') == [0, 2]
    assert ids(toy, "SEX != 'F'") == [1, 4]               # missing SEX is not "not F"
    assert ids(toy, "SEX = 'F'") == [0, 2]                # SQL/SAS style single '='
    assert ids(toy, "SEX <> 'F'") == [1, 4]
    assert ids(toy, "55 <= AGE") == [1, 3, 4]             # value on the left


def test_in_between_missing(toy):
    assert ids(toy, 'SEX in ("F", "M")') == [0, 1, 2, 4]
    assert ids(toy, "SEX not in ('M',)") == [0, 2]
    assert ids(toy, "AGE in (40, 80)") == [0, 3]
    assert ids(toy, "AGE between 55 and 80") == [1, 3, 4]  # both ends included
    assert ids(toy, "AGE not between 55 and 79") == [0, 3]
    assert ids(toy, "AGE is missing") == [2]
    assert ids(toy, "SEX is not missing and AGE is not null") == [0, 1, 4]


def test_logic_precedence_and_parentheses(toy):
    # and binds tighter than or
    assert ids(toy, 'SEX == "M" or SEX == "F" and AGE > 50') == [1, 4]
    assert ids(toy, '(SEX == "M" or SEX == "F") and AGE > 50') == [1, 4]
    assert ids(toy, 'SEX == "M" or (SEX == "F" and AGE < 50)') == [0, 1, 4]
    assert ids(toy, 'not SEX == "M" and AGE > 0') == [0]
    assert ids(toy, "NOT (AGE > 50) OR age IS MISSING") == [0, 2]   # keywords in any case


def test_case_insensitive_columns_negative_numbers_and_column_comparisons(toy):
    assert ids(toy, "age > 50 and sysbp > diabp") == [1, 3]
    assert ids(toy, "DIABP > -1.5e1") == [0, 1, 2, 3, 4]
    assert ids(toy, "`AGE` >= 80") == [3]


def test_dates_and_yes_no(toy):
    assert ids(toy, 'RANDDT >= "2013-01-01"') == [0, 1, 2]
    assert ids(toy, 'RANDDT between "2013-01-01" and "2013-12-31"') == [0, 1]
    assert ids(toy, "FLAG == true") == [0, 2, 4]
    assert ids(toy, "FLAG == 0") == [1, 3]


def test_empty_expression_selects_all(toy):
    assert parse("  ") is None
    assert evaluate("", toy).all()
    assert evaluate(None, toy).all()


def test_ast_shape():
    node = parse('AGE >= 50 and not SEX in ("F") or BILI between 1 and 5')
    assert isinstance(node, filterlang.Or)
    assert isinstance(node.left, filterlang.And)
    assert isinstance(node.left.right, filterlang.Not)
    assert isinstance(node.right, filterlang.Between)
    assert filterlang.columns_used(node) == ["AGE", "SEX", "BILI"]


# ----- real data ------------------------------------------------------------------------
def test_pilot_expressions_match_pandas(pilot, pframe):
    adsl = pilot.subjects
    assert evaluate('SEX == "F"', pframe).sum() == (adsl["SEX"] == "F").sum()
    assert evaluate('ARM in ("Placebo", "Xanomeline Low Dose")', pframe).sum() == \
        adsl["ARM"].isin(["Placebo", "Xanomeline Low Dose"]).sum()
    expected = ((adsl["AGE"] >= 70) & (adsl["AGE"] <= 80) & (adsl["SEX"] != "M")).sum()
    assert evaluate("AGE between 70 and 80 and SEX != 'M'", pframe).sum() == expected
    # BMIBL has one missing value: excluded both ways
    bmi = adsl["BMIBL"]
    assert evaluate("BMIBL >= 25", pframe).sum() + evaluate("BMIBL < 25", pframe).sum() == bmi.notna().sum()
    assert evaluate("BMIBL is missing", pframe).sum() == bmi.isna().sum() == 1


def test_pilot_baseline_parameters_are_columns(pilot, pframe):
    base = pilot.baseline
    expected = set(base.index[(base["SYSBP"] > 140) | (base["DIABP"] > 90)])
    mask = evaluate("sysbp > 140 or DIABP > 90", pframe)
    assert set(pframe.loc[mask, "USUBJID"]) == expected


def test_pbc_baseline_lab_filter(pbc, bframe):
    base = pbc.baseline
    expected = set(base.index[(base["BILI"] > 2) & base["BILI"].notna()])
    assert set(bframe.loc[evaluate("BILI > 2", bframe), "USUBJID"]) == expected
    both = evaluate('BILI between 1 and 5 and SEX == "F" and CHOL is not missing', bframe)
    want = (bframe["BILI"].between(1, 5) & (bframe["SEX"] == "F") & bframe["CHOL"].notna())
    assert both.sum() == want.sum() > 0


# ----- rejection ------------------------------------------------------------------------
@pytest.mark.parametrize("expr, words", [
    ("__import__('os')", "function calls are not allowed"),
    ("__import__('os').system('ls')", "not allowed"),
    ("AGE.__class__", "attribute access"),
    ('open("x")', "function calls are not allowed"),
    ("1; drop", "';'"),
    ("AGE > 50; import os", "';'"),
    ("AGE[0] > 1", "indexing"),
    ("lambda: 1", "':'"),
    ("AGE > 50 && SEX == 'F'", "use the word 'and'"),
    ("AGE > 50 | SEX == 'F'", "use the word 'or'"),
    ("AGE + 1 > 50", "arithmetic"),
    ("AGE > @x", "'@'"),
    ("AGE", "not compared with anything"),
    ("AGE >", "after '>'"),
    ("(AGE > 50", "not closed"),
    ("AGE > 50)", "unmatched ')'"),
    ("SEX == 'F", "not closed"),
    ("AGE > 50 SEX == 'F'", "join criteria with 'and' or 'or'"),
    ("AGE between 50", "expected 'and'"),
    ("AGE in 50", "expected '('"),
    ("50 > 40", "compares two values"),
    ("not", "ends too early"),
    ("50abc > 1", "neither a number nor a column name"),
    ("AGE > " + "9" * 4500, "too long"),
    ("AGE > 'x\\", "not closed"),
    ("`AGE > 1", "not closed"),
])
def test_rejects_anything_outside_the_language(pframe, expr, words):
    with pytest.raises(FilterError) as info:
        evaluate(expr, pframe)
    assert words in str(info.value)


def test_error_messages_say_what_and_where(pframe):
    with pytest.raises(FilterError) as info:
        evaluate("AGEE >= 50", pframe)
    assert str(info.value) == "unknown column 'AGEE' at position 1 (did you mean AGE?)"
    assert info.value.position == 1

    with pytest.raises(FilterError) as info:
        evaluate('AGE >= 50 and SEX > 3', pframe)
    msg = str(info.value)
    assert "position 19" in msg and "SEX" in msg and "text" in msg and info.value.position == 19

    with pytest.raises(FilterError) as info:
        evaluate("AGE.__class__", pframe)
    assert info.value.position == 4

    with pytest.raises(FilterError) as info:
        evaluate("__import__('os')", pframe)
    assert info.value.position == 1


@pytest.mark.parametrize("expr, words", [
    ("SEX > 3", "needs numbers or dates"),
    ("SEX == 3", "quote the value"),
    ('AGE == "50"', "write the number without quotes"),
    ('SEX == "f"', 'did you mean "F"'),
    ("SEX between 1 and 2", "needs numbers or dates"),
    ("AGE between 80 and 70", "lower bound 80 is above the upper bound 70"),
    ("SEX > AGE", "cannot compare column SEX"),
    ('TRTSDT > "not a date"', "is not a date"),
    ("TRTSDT > 5", "holds dates"),
    ("NOSUCH is missing", "unknown column 'NOSUCH'"),
])
def test_type_mismatches_and_unknown_values(pframe, expr, words):
    with pytest.raises(FilterError) as info:
        evaluate(expr, pframe)
    assert words in str(info.value)


def test_never_calls_python_eval(monkeypatch, pframe):
    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec/query called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(pd.DataFrame, "query", forbidden)
    monkeypatch.setattr(pd.DataFrame, "eval", forbidden)
    assert evaluate("AGE > 60 and SEX == 'F'", pframe).sum() > 0


def test_limits_of_size_and_nesting(pframe):
    with pytest.raises(FilterError, match="too long"):
        filterlang.parse("AGE > 1 and " * 600 + "AGE > 1")
    with pytest.raises(FilterError, match="nested too deeply"):
        filterlang.parse("(" * 80 + "AGE > 1" + ")" * 80)
    with pytest.raises(FilterError, match="nested too deeply"):
        filterlang.parse("not " * 80 + "AGE > 1")
    # a long flat expression is fine
    assert evaluate(" or ".join(f"AGE == {a}" for a in range(50, 90)), pframe).all()


def test_check_returns_message_or_none(pframe):
    assert filterlang.check("AGE > 50", pframe) is None
    assert "unknown column" in filterlang.check("XYZ > 1", pframe)


def test_random_text_only_ever_raises_filter_error(pframe):
    """Fuzz: whatever is typed, the answer is a mask or a FilterError, never another exception."""
    rng = np.random.default_rng(7)
    pieces = ["AGE", "SEX", "sysbp", "ARM", "TRTSDT", "BMIBL", "(", ")", ",", "and", "or", "not", "in",
              "between", "is", "missing", "==", "!=", ">=", "<", "=", "-", "50", "1.5e3", "'F'", '"M"',
              "'2013-01-01'", "true", ".", ";", "[", "`", "'", '"', "__import__", "x", " ", "\\"]
    for _ in range(3000):
        text = " ".join(rng.choice(pieces, size=int(rng.integers(1, 9))))
        try:
            mask = evaluate(text, pframe)
        except FilterError as exc:
            assert str(exc)
        else:
            assert mask.dtype == bool and len(mask) == len(pframe)
