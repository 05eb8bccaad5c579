"""What-if: generate a twin arm (K synthetic patients per source patient under a target arm),
follow its progress, cancel, save and reopen runs, and take a first look at the result."""

import streamlit as st

from components import llm_widgets as lw
from components import run_widgets as rw
from components.state import get_cohort, get_run, get_run_dir, get_trial, set_run
from services.evaluation.comparison import compare, group_counts
from services.evaluation.trajectories import trajectory_summary
from services.generation import GENERATORS, GeneratorError
from services.generation.saved_runs import list_runs, load_run

trial = get_trial()
st.title("What-if: twin arm")
st.caption("For every source patient, K synthetic patients (digital twins) under the target arm: "
           "they keep the patient's baseline, everything after it is generated from what similar "
           "patients of the target arm did. Twins of treated patients under the control arm form "
           "a synthetic control arm.")

job = rw.current_job()
spec, cohort_ids = get_cohort()
if cohort_ids:
    known = set(trial.subjects["USUBJID"])
    cohort_ids = [u for u in cohort_ids if u in known]

# ----- settings -----------------------------------------------------------------------------
c1, c2 = st.columns(2)
with c1:
    source = rw.source_picker(trial, spec, cohort_ids)
with c2:
    target_arm = rw.target_arm_picker(trial)
in_target = int(trial.subjects.loc[trial.subjects["USUBJID"].isin(source.ids), "ARM"]
                .eq(target_arm).sum())
if in_target:
    st.caption(f"{in_target} source patient(s) are themselves in {target_arm}: their twins are made "
               "without any of their own data (a back-test of the generator).")

generator = rw.generator_picker(GENERATORS)
caps = GENERATORS[generator].capabilities
options = rw.run_settings(generator, caps)
ready, why_not, llm = True, "", None
if caps.needs_network:
    llm = lw.llm_panel()
    ready, why_not = llm.ready, llm.message
    if llm.settings is not None and llm.settings.available:
        lw.check_endpoint_button(llm.settings, llm.consent)
if not source.ids:
    ready, why_not = False, "no source patient"

started_now = False
clicked = st.button("Generate twin arm", type="primary", key="whatif_generate",
                    disabled=job is not None or not ready,
                    help=why_not or "Runs in the background; you can cancel and keep what is done.")
if job is not None:
    st.caption("A generation is running: wait for it or cancel it below.")
elif why_not and caps.needs_network:
    st.caption(f"{generator} generator: {why_not}.")
if clicked and job is None and ready:
    settings = {"neighbors": options["neighbors"]}
    if caps.needs_network:
        settings.update(llm.extra)
    try:
        with st.spinner("Preparing the generator (similar-patient index, models)…"):
            gen = rw.fitted_generator(trial.content_hash, generator, rw.settings_key(settings),
                                      _trial=trial)
            if caps.needs_network:
                gen = gen.with_endpoint(llm.settings, allow_remote=llm.consent)
            gen.check_ready()
    except GeneratorError as exc:
        st.error(str(exc))
    else:
        rw.start_job(rw.GenerationJob(gen, trial.subset(source.ids), target_arm,
                                      options["twins_per_patient"], options["seed"], source.label,
                                      {"kind": source.kind, **source.detail}))
        started_now = True

rw.job_panel(on_finished=set_run, first_run=started_now)

# ----- the current run ----------------------------------------------------------------------
run = get_run()
note = st.session_state.get(rw.LAST_RUN_NOTE)
if run is not None or (note and note[0] in ("error", "warning")):
    st.subheader("Twin arm")
    rw.run_header(run, get_run_dir(), note)
if run is not None:
    kb_hash = (run.manifest.get("knowledge_base") or {}).get("content_hash")
    if kb_hash and kb_hash != trial.content_hash:
        kb_name = (run.manifest.get("knowledge_base") or {}).get("name")
        st.info(f"This run was generated from another trial ({kb_name}); load that trial in the "
                "sidebar to compare it with the real patients.")
    elif run.n_twins:
        cache = st.session_state.setdefault("whatif_comparisons", {})
        if run.run_id not in cache:
            cache.clear()
            with st.spinner("Loading the twin arm…"):
                cache[run.run_id] = compare(trial, run.as_trial(), run.manifest)
        comp = cache[run.run_id]
        left, right = st.columns([3, 1])
        with left:
            rw.trajectory_chart(comp, trajectory_summary, key=f"whatif_param_{trial.content_hash[:12]}")
        with right:
            st.markdown("**Patients per group**")
            st.markdown("\n".join(f"- {line}" for line in group_counts(comp)))
            st.caption("The twin arm, the real patients of the target arm (sources excluded) and "
                       "the real source cohort under its own arm.")
    rw.failures_table(run)
    rw.manifest_expander(run)
    st.caption("Compare, Validate and Export & report use this run.")

# ----- saved runs ---------------------------------------------------------------------------
st.subheader("Saved runs")
st.caption("Every generation is saved with its manifest under TWINARM_HOME/runs; open one to make "
           "it the current run.")
chosen = rw.saved_runs_table(list_runs(), run.run_id if run is not None else None)
if chosen:
    try:
        opened = load_run(chosen)
    except (OSError, ValueError) as exc:
        st.error(f"Cannot open run {chosen}: {exc}")
    else:
        from services.generation.saved_runs import runs_root

        set_run(opened, runs_root() / chosen)
        st.session_state[rw.LAST_RUN_NOTE] = ("opened", chosen)
        st.rerun()
