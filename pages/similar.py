"""Similar patients: the knowledge-base patients most like a chosen patient, in one arm: the
patients a twin of this patient would be personalised with."""

import streamlit as st

from components.state import get_cohort, get_trial, kept, kept_choice
from services.reporting.figures import similar as fs
from services.retrieval.index import PatientIndexError, client_description
from services.retrieval.retriever import Retriever


@st.cache_resource(show_spinner="Indexing the trial's patients...", max_entries=8)
def cached_retriever(content_hash: str, space: str, _trial) -> Retriever:
    """One fitted retriever per trial content and space, shared by sessions (the Chroma index
    itself persists: reopening the same trial adds nothing)."""
    return Retriever(_trial, space=space).fit()


trial = get_trial()
st.title("Similar patients")
st.caption("A twin is personalised with the most similar real patients of the target arm. Pick a "
           "patient, the arm to search and how many neighbours to see.")

_, cohort_ids = get_cohort()
ids = list(cohort_ids) if cohort_ids else list(trial.subjects["USUBJID"])
scope = trial.content_hash[:12]

c1, c2, c3 = st.columns([2, 2, 1])
with c1:
    patient = kept_choice(st.selectbox, f"Patient ({'cohort' if cohort_ids else 'all subjects'}: {len(ids)})", ids,
                          key=f"similar_patient_{scope}", help="Type to search by USUBJID.")
with c2:
    arms = trial.arms
    arm = kept_choice(st.selectbox, "Search the arm", arms, key=f"similar_arm_{scope}",
                      index=arms.index(trial.control_arm) if trial.control_arm in arms else 0,
                      help="Default: the trial's control arm, where twins come from.")
with c3:
    arm_size = trial.arm_counts().get(arm, 0)
    top = max(1, min(50, arm_size - 1 if arm_size > 1 else 1))
    k = kept(st.number_input, "Neighbours (k)", min_value=1, max_value=top, step=1, key=f"similar_k_{scope}",
             default_arg="value", default=min(10, top), valid=lambda v: 1 <= v <= top)
full = kept(st.toggle, "Also match on follow-up", key=f"similar_full_{scope}", default_arg="value", default=False,
            help="Off (default): similarity uses what is known at baseline, as for twin generation. "
                 "On: the patients' observed changes from baseline count too (exploration only).")
space = "full" if full else "baseline"

if patient is None:
    st.info("This trial has no subjects to choose from.")
    st.stop()

try:
    retriever = cached_retriever(trial.content_hash, space, trial)
    neighbours = retriever.neighbours(patient, arm=arm, k=int(k))
except PatientIndexError as exc:
    st.error(f"The patient index is unavailable ({client_description()}): {exc}")
    st.stop()

with st.expander("What does “similar” mean here?", expanded=False):
    st.markdown(retriever.describe())
    st.caption(f"Index: {client_description()}, collection `{retriever.build_report.name}`. "
               "The patient is never their own neighbour.")

if not neighbours:
    st.warning(f"No other patient in {arm}.")
    st.stop()

data = retriever.neighbour_data([patient] + [n.usubjid for n in neighbours])
labels = {p: f"{info.label}" + (f" ({info.unit})" if info.unit and info.unit not in info.label else "")
          for p, info in trial.parameters.items()}
labels.update({c: trial.labels.get(c, c) for c in trial.covariates})
table = fs.neighbour_table(patient, neighbours, data, list(trial.covariates), list(trial.parameters))
sim = [n.similarity for n in neighbours]
m1, m2, m3 = st.columns(3)
m1.metric("Closest", f"{sim[0]:.3f}")
m2.metric(f"Mean of {len(sim)}", f"{sum(sim) / len(sim):.3f}")
m3.metric(f"{len(sim)}th", f"{sim[-1]:.3f}")

st.subheader("Baseline side by side")
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"Similarity": st.column_config.ProgressColumn(
                 "Similarity", min_value=0.0, max_value=1.0, format="%.3f")}
             | {c: st.column_config.Column(c, help=labels.get(c, c)) for c in table.columns[4:]})
st.caption("First row: the chosen patient; last row: the neighbours' mean (numbers) or most frequent "
           "value (categories). Hover a column name for its label.")

st.subheader("Trajectories")
params = trial.longitudinal_parameters
if not params:
    st.info("This trial has no parameter with scheduled follow-up visits to draw.")
    st.plotly_chart(fs.similarity_bars(neighbours), width="stretch", key="similar_bars")
    st.stop()
endpoint = trial.meta.endpoint.get("paramcd") if trial.meta.endpoint else None
p1, p2, p3 = st.columns([2, 1, 1])
with p1:
    param = kept_choice(st.selectbox, "Parameter", params, index=params.index(endpoint) if endpoint in params else 0,
                        format_func=lambda p: f"{p}: {trial.parameters[p].label}", key=f"similar_param_{scope}")
with p2:
    x_axis = kept_choice(st.radio, "x axis", ["Study day", "Visit"], horizontal=True, key=f"similar_x_{scope}")
with p3:
    y_axis = kept_choice(st.radio, "y axis", ["Value", "Change from baseline"], horizontal=True,
                         key=f"similar_y_{scope}")
info = trial.parameters[param]
fig = fs.trajectory_overlay(patient, neighbours, data.trajectories, param, label=info.label, unit=info.unit,
                            x="ADY" if x_axis == "Study day" else "AVISITN",
                            y="AVAL" if y_axis == "Value" else "CHG")
st.plotly_chart(fig, width="stretch", key="similar_overlay")
st.caption("Red: the chosen patient's observed values; blue: the neighbours (more opaque = more similar); "
           "dashed: the neighbours' mean per visit. In the default (baseline) matching, follow-up plays no "
           "part in who is a neighbour.")
