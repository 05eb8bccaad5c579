"""Cohort builder widgets: arms, eligibility filters and the expression box -> a CohortSpec.

No domain logic here: the filterable columns come from `services.data.cohort.describe_filters`,
and the expression is checked by a callback the page passes in (`check_expression`).
What the user set is kept as a draft in session state per trial (`scope`), so leaving the page
and coming back restores it (Streamlit forgets widget values of pages not shown).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
import streamlit as st

from services.data.cohort import MISSING_LEVEL, CohortSpec, FilterColumn, expression_example

EXPRESSION_HELP = """A filter in plain syntax, combined with the filters above by *and*:

- comparisons: `AGE >= 50`, `SEX == "F"`, `SEX != 'M'`
- lists: `ARM in ("Placebo", "Xanomeline Low Dose")`, `RACE not in ("ASIAN")`
- ranges (ends included): `AGE between 50 and 80`, `BILI not between 1 and 5`
- missing values: `CHOL is missing`, `CHOL is not missing`
- `and`, `or`, `not`, parentheses

Column names are case-insensitive; baseline lab and vital values are columns too (`BILI > 2`).
A subject whose value is missing never meets a comparison."""


def _nice_step(low: float, high: float, integer: bool) -> float:
    if integer:
        return 1.0
    span = high - low
    if span <= 0:
        return 1.0
    raw = span / 100
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step))) if step < 1 else 0


def _clean(value: float, step: float):
    digits = _decimals(step)
    return round(value) if digits == 0 else round(value, digits)


def _draft_key(key: str, scope: str) -> str:
    return f"{key}__draft__{scope[:12]}"


def reset_filters(key: str, scope: str) -> None:
    """Forget the draft and every widget value of this builder (a callback for a button)."""
    prefix = f"{key}_{scope[:12]}_"
    for k in list(st.session_state.keys()):
        if str(k).startswith(prefix) or str(k) == _draft_key(key, scope):
            del st.session_state[k]
    st.session_state[_draft_key(key, scope)] = CohortSpec().to_dict()


def _initial(key: str, scope: str, initial: CohortSpec | None) -> CohortSpec:
    draft = st.session_state.get(_draft_key(key, scope))
    if draft is not None:
        return CohortSpec.from_dict(draft)
    return initial or CohortSpec()


def cohort_filters(filters: list[FilterColumn], arms: list[str], *, scope: str,
                   check_expression: Callable[[str], str | None], initial: CohortSpec | None = None,
                   key: str = "cohort") -> tuple[CohortSpec, str | None]:
    """Render the filter widgets; return the spec they describe and the expression's error.

    `scope` identifies the trial (e.g. its content hash) so widgets and draft reset when the
    trial changes. An expression that does not parse or fit the trial is shown with its error
    inline and left out of the returned spec until it is fixed; the error (None when the
    expression is empty or valid) is returned so that the page can refuse to save the cohort.
    """
    start = _initial(key, scope, initial)
    prefix = f"{key}_{scope[:12]}_"
    by_name = {f.name: f for f in filters}

    st.markdown("**Arms**")
    chosen_arms = st.multiselect(
        "Arms", arms, default=[a for a in start.arms if a in arms], key=prefix + "arms",
        placeholder="All arms", label_visibility="collapsed",
        help="Leave empty for every arm.")

    st.markdown("**Eligibility filters**")
    preselected = [c for c in list(start.ranges) + list(start.categories) if c in by_name]
    columns = st.multiselect(
        "Filter on", list(by_name), default=list(dict.fromkeys(preselected)), key=prefix + "columns",
        format_func=lambda c: f"{by_name[c].label} [{c}]" if by_name[c].label != c else c,
        placeholder="Choose covariates or baseline values to filter on",
        help="Baseline covariates of ADSL, baseline values of each parameter, population flags.")

    ranges: dict[str, tuple] = {}
    categories: dict[str, list] = {}
    for col in columns:
        info = by_name[col]
        if info.kind == "continuous":
            value = _range_slider(info, start.ranges.get(col), prefix)
            if value is not None:
                ranges[col] = value
        else:
            value = _category_select(info, start.categories.get(col), prefix)
            if value is not None:
                categories[col] = value

    st.markdown("**Expression**")
    expression = st.text_area(
        "Filter expression", value=start.expression, key=prefix + "expression", height=80,
        placeholder=expression_example(filters),
        help=EXPRESSION_HELP, label_visibility="collapsed")
    valid_expression = expression
    error = None
    if expression.strip():
        error = check_expression(expression)
        if error:
            st.error(f"**Expression not applied:** {error}", icon="⚠️")
            valid_expression = ""
    st.caption("Filters are combined with *and*. Subjects with a missing value are excluded by a "
               "range on that variable.")

    spec = CohortSpec(arms=list(chosen_arms), ranges=ranges, categories=categories,
                      expression=valid_expression.strip(), name=start.name)
    draft = CohortSpec(arms=list(chosen_arms), ranges=ranges, categories=categories,
                       expression=expression, name=start.name)
    st.session_state[_draft_key(key, scope)] = draft.to_dict()
    return spec, error


def _range_slider(info: FilterColumn, current, prefix: str):
    """A range slider; returns (low, high) with None for an untouched end, or None if untouched."""
    low, high = float(info.low), float(info.high)
    if low == high:
        st.caption(f"{info.label}: every subject has {low:g}; nothing to filter.")
        return None
    step = _nice_step(low, high, info.integer)
    lo_bound = _clean(math.floor(low / step) * step, step)
    hi_bound = _clean(math.ceil(high / step) * step, step)
    cur_lo, cur_hi = current if current else (None, None)
    start_lo = lo_bound if cur_lo is None else min(max(_clean(cur_lo, step), lo_bound), hi_bound)
    start_hi = hi_bound if cur_hi is None else min(max(_clean(cur_hi, step), lo_bound), hi_bound)
    if start_lo > start_hi:
        start_lo, start_hi = lo_bound, hi_bound
    step_value = 1 if info.integer else _clean(step, step)
    missing = f" · {info.n_missing} missing" if info.n_missing else ""
    chosen = st.slider(
        f"{info.label}{missing}", min_value=lo_bound, max_value=hi_bound, value=(start_lo, start_hi),
        step=step_value, key=prefix + "range_" + info.name,
        help=f"{info.name}: observed {info.low:g} to {info.high:g}. Both ends included; subjects with "
             "a missing value are excluded once the range is narrowed.")
    sel_lo, sel_hi = chosen
    if sel_lo <= lo_bound and sel_hi >= hi_bound:
        return None
    return (None if sel_lo <= lo_bound else float(sel_lo), None if sel_hi >= hi_bound else float(sel_hi))


def _category_select(info: FilterColumn, current, prefix: str):
    """A multiselect of levels; returns the chosen levels, or None when all (or none) are chosen."""
    levels = list(info.levels)
    default = [v for v in (current or levels) if v in levels] or levels
    chosen = st.multiselect(
        info.label, levels, default=default, key=prefix + "cat_" + info.name,
        format_func=lambda v: str(v),
        help=f"{info.name}: keep subjects with one of the chosen values"
             + (f"; {MISSING_LEVEL} selects subjects without a value." if MISSING_LEVEL in levels else "."))
    if not chosen:
        st.caption(f"Choose at least one value of {info.label}; an empty choice does not filter.")
        return None
    if set(chosen) == set(levels):
        return None
    return list(chosen)


def cohort_name_input(default: str = "", key: str = "cohort_name") -> str:
    return st.text_input("Cohort name", value=default, key=key, placeholder="e.g. Placebo, age 50-80",
                         help="Shown on later pages and saved with the cohort spec.")


def table1_for_display(table: pd.DataFrame, labels: dict[str, str], kinds: dict[str, str]) -> pd.DataFrame:
    """Table 1 as printed in a paper: the variable's label on its block's first row only, with
    ", n (%)" after categorical variables."""
    out = table.copy()
    shown, previous = [], None
    for var in out["Variable"]:
        if var == previous:
            shown.append("")
            continue
        previous = var
        label = labels.get(var, var)
        if kinds.get(var) == "categorical":
            label = f"{label}, n (%)"
        shown.append(label)
    out["Variable"] = shown
    return out
