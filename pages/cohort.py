"""Cohort builder: choose patients by arm and eligibility filters, read their Table 1, keep the
cohort for the later pages (similar patients, twin generation, comparison)."""

import streamlit as st

from components import cohort_widgets as cw
from components.state import get_cohort, get_trial, set_cohort
from services.data.cohort import (
    CohortError,
    CohortSpec,
    apply_cohort,
    check_expression,
    describe_filters,
)
from services.data.cohort_frame import (
    cohort_frame,
    repeated_baselines,
    table1_kinds,
    variable_labels,
)
from services.data.table1 import ordered_levels, table1, table1_long
from services.reporting.figures import baseline as fb

trial = get_trial()
scope = trial.content_hash
st.title("Cohort")
st.caption("Choose the patients to work with: an arm and eligibility-style criteria on baseline "
           "covariates and baseline lab or vital values. The cohort's Table 1 updates as you go; "
           "**Use this cohort** keeps it for the next pages.")

saved_spec, saved_ids = get_cohort()
filters = describe_filters(trial)
labels = variable_labels(trial)
kinds = table1_kinds(trial)
repeats = repeated_baselines(trial)

left, right = st.columns([2, 3], gap="large")
with left:
    spec, expression_error = cw.cohort_filters(filters, trial.arms, scope=scope, initial=saved_spec,
                             check_expression=lambda text: check_expression(trial, text))
    st.button("Reset filters", on_click=cw.reset_filters, args=("cohort", scope), key="cohort_reset")

try:
    cohort = apply_cohort(trial, spec)
except CohortError as exc:
    with right:
        st.error("The filters do not fit this trial:\n\n" + "\n".join(f"- {m}" for m in exc.messages))
    st.stop()

with right:
    total = len(trial.subjects)
    cols = st.columns(len(cohort.by_arm) + 1)
    cols[0].metric("N", cohort.n, help=f"Subjects in the cohort, of {total} in {trial.title}.")
    for col, (arm, n) in zip(cols[1:], cohort.by_arm.items()):
        col.metric(arm + (" (control)" if arm == trial.control_arm else ""), n,
                   help=f"{trial.arm_counts().get(arm, 0)} subjects in this arm of the trial.")
    st.caption(f"{cohort.n} of {total} subjects ({100 * cohort.n / total:.0f}%) · {spec.summary()}")

    if len(cohort.attrition) > 1:
        steps = cohort.attrition_frame()
        st.plotly_chart(fb.attrition_chart(steps), width="stretch", key="cohort_attrition")
        st.caption("Subjects left after each criterion, applied in order from top to bottom "
                   "(an eligibility funnel).")
    if cohort.n == 0:
        st.warning("No subject meets every criterion: widen a range or remove a filter.")

    st.markdown("**Use this cohort**")
    name = cw.cohort_name_input(saved_spec.name if saved_spec else "", key=f"cohort_name_{scope[:12]}")
    if expression_error:
        st.error(f"**Cannot use this cohort:** the filter expression has an error ({expression_error}). "
                 "Fix or clear the expression first; the N above leaves it out.")
    if st.button("Use this cohort", type="primary", disabled=cohort.n == 0 or bool(expression_error),
                 key="cohort_use"):
        chosen = CohortSpec(arms=spec.arms, ranges=spec.ranges, categories=spec.categories,
                            expression=spec.expression, name=name.strip())
        set_cohort(chosen, cohort.usubjids)
        saved_spec, saved_ids = chosen, cohort.usubjids
        what = f"Cohort “{chosen.name}”" if chosen.name else "This cohort"
        st.success(f"{what} is kept for the next pages: {cohort.n} subjects.")
    if saved_spec is not None and saved_ids:
        same = saved_spec.to_dict() | {"name": ""} == spec.to_dict() | {"name": ""}
        st.caption(f"In use on later pages: **{saved_spec.name or 'unnamed cohort'}**, "
                   f"{len(saved_ids)} subjects ({saved_spec.summary()})"
                   + ("" if same else " — differs from the filters shown here."))
    else:
        st.caption("No cohort chosen yet: later pages use every subject of the trial.")

# ----- Table 1 ------------------------------------------------------------------------
st.subheader("Table 1: baseline characteristics")
groups = [arm for arm, n in cohort.by_arm.items()]
opt_left, opt_right = st.columns([3, 2])
with opt_left:
    variables = st.multiselect(
        "Variables", list(kinds), default=[v for v in kinds if v not in repeats],
        key=f"cohort_t1_vars_{scope[:12]}", format_func=lambda v: labels.get(v, v),
        help="Baseline covariates of ADSL, then the baseline value of each parameter.")
smd_pair = None
with opt_right:
    if len(groups) >= 2:
        control = trial.control_arm if trial.control_arm in groups else groups[0]
        pairs = [(g, control) for g in groups if g != control]
        pairs += [(a, b) for i, a in enumerate(groups) for b in groups[i + 1:]
                  if a != control and b != control]
        smd_pair = st.selectbox("Standardized mean difference", pairs, key=f"cohort_smd_{scope[:12]}",
                                format_func=lambda p: f"{p[0]} vs {p[1]}",
                                help="(mean of the first − mean of the second) / pooled SD; for "
                                     "categorical variables, the multi-level SMD (≥ 0). |SMD| > 0.1 "
                                     "is the usual mark of imbalance.")

table = table1(cohort.frame, by="ARM", variables=variables, kinds=kinds, groups=groups, smd=smd_pair)
shown = cw.table1_for_display(table, labels, kinds)
st.dataframe(shown, hide_index=True, width="stretch", height=min(35 * (len(shown) + 1) + 3, 2400),
             column_config={"Variable": st.column_config.TextColumn(width="medium"),
                            "Statistic": st.column_config.TextColumn(width="medium")})
st.caption("Continuous variables: mean (SD), median [Q1, Q3] and the number missing; categorical: "
           "n (%) of the subjects with a value. Columns are the arms in the cohort and all of them together.")
left_out = {col: cov for col, cov in repeats.items() if col not in variables}
if left_out:
    st.caption("Not shown by default, as they repeat an ADSL variable (the same values to within 0.5 %): "
               + "; ".join(f"{labels.get(col, col)} (= {labels.get(cov, cov)})" for col, cov in left_out.items())
               + ". Add them under Variables.")

tidy = table1_long(cohort.frame, by="ARM", variables=variables, kinds=kinds, groups=groups, smd=smd_pair)
d1, d2, d3, d4 = st.columns(4)
d1.download_button("Table 1 (tidy CSV)", tidy.to_csv(index=False).encode(), "table1_long.csv",
                   "text/csv", key="cohort_dl_tidy", help="One row per variable, level and arm, unrounded.")
d2.download_button("Table 1 as shown (CSV)", shown.to_csv(index=False).encode(), "table1.csv", "text/csv",
                   key="cohort_dl_table", help="The table above with its labels (the tidy CSV keeps variable codes).")
d3.download_button("Cohort spec (JSON)", CohortSpec(arms=spec.arms, ranges=spec.ranges,
                                                    categories=spec.categories, expression=spec.expression,
                                                    name=name.strip()).to_json().encode(),
                   "cohort.json", "application/json", key="cohort_dl_spec")
d4.download_button("Subject list (CSV)", ("USUBJID\n" + "\n".join(cohort.usubjids) + "\n").encode(),
                   "cohort_subjects.csv", "text/csv", key="cohort_dl_ids")

# ----- distributions ------------------------------------------------------------------
st.subheader("Baseline distributions")
if not kinds:
    st.info("This trial has no baseline covariate or baseline value to show.")
    st.stop()
c1, c2 = st.columns([3, 2])
with c1:
    variable = st.selectbox("Variable", list(kinds), key=f"cohort_fig_var_{scope[:12]}",
                            format_func=lambda v: labels.get(v, v))
kind = kinds[variable]
style = "box"
with c2:
    if kind == "continuous":
        style = st.radio("Chart", ["box", "histogram"], horizontal=True, key="cohort_fig_style",
                         format_func=lambda s: "Box plot" if s == "box" else "Histogram")
label = labels.get(variable, variable)
full = cohort_frame(trial)
levels = ordered_levels(full, variable) if kind == "categorical" else None

f1, f2 = st.columns(2)
with f1:
    st.plotly_chart(fb.baseline_distribution(cohort.frame, variable, kind, by="ARM", groups=groups,
                                             label=label, style=style, levels=levels),
                    width="stretch", key="cohort_fig_arm")
    if kind == "continuous":
        st.caption(f"{label} in each arm of the cohort: "
                   + ("box = quartiles, line = median, dashed = mean, dots = subjects."
                      if style == "box" else "percent of the arm's subjects in each bin, arms overlaid."))
    else:
        st.caption(f"Percent of each arm of the cohort in each category of {label}.")
with f2:
    st.plotly_chart(fb.cohort_vs_excluded(full, cohort.mask.to_numpy(), variable, kind, label=label,
                                          style=style, levels=levels),
                    width="stretch", key="cohort_fig_excluded")
    st.caption(f"{label} of the subjects in the cohort against the trial's subjects the filters left "
               "out, to see what the eligibility criteria change.")
