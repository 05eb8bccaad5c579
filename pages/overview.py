"""Overview: what the loaded trial holds and what TwinArm does with it."""

import streamlit as st

from components.state import get_trial
from services.data.summary import parameter_table, visit_table

trial = get_trial()
st.title("TwinArm")
st.caption("Digital twins for clinical-trial design: a synthetic patient for every real patient, "
           "under the arm they did not receive.")

st.header(trial.title)
if trial.meta.description:
    st.write(trial.meta.description)
meta_bits = [b for b in (trial.meta.indication and f"**Indication:** {trial.meta.indication}",
                         trial.meta.source and f"**Source:** {trial.meta.source}") if b]
if meta_bits:
    st.markdown(" · ".join(meta_bits))

counts = trial.arm_counts()
cols = st.columns(len(counts) + 1)
cols[0].metric("Subjects", len(trial.subjects))
for col, (arm, n) in zip(cols[1:], counts.items()):
    col.metric(arm + (" (control)" if arm == trial.control_arm else ""), n)
for arm, text in trial.meta.arm_descriptions.items():
    st.markdown(f"- **{arm}**: {text}")

left, right = st.columns(2)
with left:
    st.subheader("Parameters")
    st.dataframe(parameter_table(trial), hide_index=True, width="stretch")
with right:
    st.subheader("Scheduled visits")
    st.dataframe(visit_table(trial), hide_index=True, width="stretch")
    if trial.tte_parameters:
        st.subheader("Time-to-event")
        st.dataframe(
            [{"parameter": p, "label": trial.tte_label(p),
              "events": int((trial.tte.loc[trial.tte["PARAMCD"] == p, "CNSR"] == 0).sum()),
              "subjects": int((trial.tte["PARAMCD"] == p).sum())} for p in trial.tte_parameters],
            hide_index=True, width="stretch")

st.subheader("How to use TwinArm")
st.markdown(
    "1. **Cohort**: pick the patients to twin (arm, eligibility filters) and read their Table 1.\n"
    "2. **Similar patients**: see who in another arm is most like a given patient (Chroma index).\n"
    "3. **What-if**: generate a twin arm, e.g. a placebo twin for every treated patient.\n"
    "4. **Compare** and **Validate**: trajectories, survival, embeddings, fidelity, privacy, "
    "utility, backtest and the PROCOVA sample size.\n"
    "5. **Export**: the twin arm as ADaM-lite files and a self-contained HTML report."
)
if trial.warnings:
    with st.expander(f"Load notes ({len(trial.warnings)})"):
        for w in trial.warnings:
            st.write("- " + w)
