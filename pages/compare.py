"""Compare: how the twin arm compares with real patients (trajectories, survival, embeddings,
similarity, fidelity/privacy/utility metrics)."""

import streamlit as st

from components.compare_state import (
    cached_comparison,
    cached_effects,
    cached_evaluation,
    require_run,
)
from components.effects import effects_view
from components.metric_cards import headline_table, metric_definitions
from components.run_widgets import scale_choice
from components.safety_panel import safety_tab
from components.state import get_run_dir, kept_choice
from services.data.adverse import has_ae
from services.evaluation import comparison as ev
from services.evaluation import patient_space as ps
from services.evaluation.projection import is_umap_warm
from services.evaluation.survival_comparison import km_curves
from services.evaluation.trajectories import patient_and_twins, spaghetti_values, trajectory_summary
from services.reporting.figures import compare as fig
from services.reporting.tables import IN_SAMPLE_PRIVACY_NOTE

kb, run = require_run()
comp = cached_comparison(kb, run)
result = cached_evaluation(kb, run)

st.title("Compare twins with real patients")
st.caption(f"Run {run.run_id}: {run.n_twins} twins under **{comp.target_arm}** for {len(comp.source_ids)} "
           f"real patients of {comp.source_arm() or 'another trial'}, compared with "
           f"{len(comp.groups[ev.TARGET].subjects)} real {comp.target_arm} patients.")

# the open tab is kept by the server (a key and on_change="rerun"): a button inside a tab (Effect's
# "Estimate the effect") reran the page and the browser reopened Trajectories, hiding the result
tab_traj, tab_surv, tab_effect, tab_emb, tab_sim, tab_metrics, *tab_safety = st.tabs(
    ["Trajectories", "Survival", "Effect", "Embeddings", "Similarity", "Metrics"]
    + (["Safety"] if has_ae(kb) else []), key="compare_tab", on_change="rerun")

with tab_traj:
    if not comp.parameters:
        st.info("This trial has no parameter with scheduled follow-up visits.")
    else:
        labels = {p: f"{p}: {kb.parameters[p].label}" for p in comp.parameters}
        paramcd = kept_choice(st.selectbox, "Parameter", comp.parameters, key="cmp_param", format_func=labels.get)
        unit = kb.parameters[paramcd].unit
        scale = scale_choice(comp, paramcd, "cmp_scale")
        log, what = scale == "log", "Geometric mean" if scale == "log" else "Mean"
        st.plotly_chart(fig.mean_trajectories(trajectory_summary(comp, paramcd, scale),
                                              f"{what} {labels[paramcd]} with 95 % CI", unit, log=log),
                        width="stretch")
        st.caption(f"{what} per visit with its 95 % confidence interval (twins: over source patients, each the "
                   "mean of its twins). Twins should follow the real target arm. The gap to the real source "
                   "cohort is not an effect estimate by itself: the Effect tab estimates it with the patient "
                   "as the unit and the generator's own uncertainty.")
        st.plotly_chart(fig.spaghetti(spaghetti_values(comp, paramcd, per_group=12),
                                      f"{labels[paramcd]}: a sample of individual patients", unit, log=log),
                        width="stretch")
        st.caption("Twelve random patients per group: twins should show the same spread and shapes as real "
                   "patients, not smooth averages.")
        if comp.source_ids:
            source = kept_choice(st.selectbox, "Source patient", comp.source_ids, key="cmp_source")
            real, twins = patient_and_twins(comp, source, paramcd)
            st.plotly_chart(fig.patient_band(real, twins, f"{source}: real trajectory vs its twins", unit, log=log),
                            width="stretch")
            k = twins["USUBJID"].nunique()
            spread = (f"the band is where their {k} {comp.target_arm} twins go (10th-90th percentile)"
                      if k >= fig.MIN_BAND_TWINS else
                      f"the orange lines are their {k} {comp.target_arm} twins (fewer than "
                      f"{fig.MIN_BAND_TWINS}: too few for a 10-90 % band), dashed their median")
            st.caption(f"The black line is what happened to this patient on their own arm; {spread}.")

with tab_surv:
    if not comp.tte_parameters:
        st.info("This trial has no time-to-event outcome.")
    else:
        tte = kept_choice(st.selectbox, "Event", comp.tte_parameters, key="cmp_tte",
                          format_func=lambda p: f"{p}: {kb.tte_label(p)}")
        curves, at_risk = km_curves(comp, tte)
        st.plotly_chart(fig.kaplan_meier(curves, at_risk, f"Kaplan-Meier: {kb.tte_label(tte)}"), width="stretch")
        st.caption("Kaplan-Meier curves with 95 % bands and the number at risk below: the twin arm should "
                   "overlap the real target arm.")
        s = result["survival"].get(tte, {})
        cols = st.columns(3)
        lr = s.get("logrank_twins_vs_real_target", {})
        cols[0].metric("Log-rank p, twins vs real", "n/a" if lr.get("p_value") is None else f"{lr['p_value']:.3f}",
                       help="A small p-value means twin survival differs from the real target arm (twins weighted 1/K, variance "
                            "clustered by patient); a large one is not evidence that they agree.")
        for col, key, label in ((cols[1], "hr_source_vs_twins", "HR source vs twin arm"),
                                (cols[2], "hr_source_vs_real_target", "HR source vs real target arm")):
            hr = s.get(key, {})
            if hr.get("hazard_ratio") is not None:
                col.metric(label, f"{hr['hazard_ratio']:.2f}",
                           help=f"95 % CI {hr['ci_low']:.2f} to {hr['ci_high']:.2f} (patients as the unit; "
                                "the Effect tab adds the generator's own uncertainty)")
        st.caption("Hazard ratios of the real source cohort against its twin arm (each patient's twins weigh "
                   "one patient) and against the real control arm.")

with tab_effect:
    effects_view(kb, run, cached_effects)

with tab_emb:
    method = kept_choice(st.radio, "Method", ["UMAP", "t-SNE"], key="cmp_method", horizontal=True)
    key = "umap" if method == "UMAP" else "tsne"
    if key == "umap" and not is_umap_warm():
        st.info("UMAP is still compiling in the background (first use of this app process); "
                "t-SNE is ready now, or try again in a few seconds.")
    else:
        with st.spinner(f"Computing the {method} embedding..."):
            points = ps.cached_embedding_points(comp, get_run_dir(), method=key)
        st.plotly_chart(fig.embedding_scatter(points, f"{method} of real patients and twins", comp.arm_groups()),
                        width="stretch")
        st.caption("Each point is a patient vector (baseline and follow-up): twins (crosses) should mix with "
                   "the real target arm, not form an island of their own.")

with tab_sim:
    dist = ps.similarity(comp)
    st.plotly_chart(fig.similarity_histogram(dist, "Cosine similarity of patient vectors"), width="stretch")
    st.caption("Twins that mirror the real population give real-to-twin similarities like those within real "
               "patients; twin-to-own-source above that shows personalisation, and values near 1 would mean copies.")

with tab_metrics:
    headline_table(ev.headline(result))
    st.caption(IN_SAMPLE_PRIVACY_NOTE)
    marginal = result["fidelity"]["marginal"]
    if marginal:
        import pandas as pd

        frame = pd.DataFrame(marginal)
        st.plotly_chart(fig.smd_dot_plot(frame, "Standardized mean difference, twins vs real target arm"),
                        width="stretch")
        st.caption("Each dot is a parameter at a visit; inside the green band (|SMD| < 0.1) the twin mean "
                   "is practically the real one. Open circles: the raw SMD; filled: net of what the sources' "
                   "own baseline difference from the real arm carries to that visit (twins inherit their "
                   "sources' baselines, so that part is not twin error).")
        st.dataframe(frame.round(3), hide_index=True, width="stretch")
    metric_definitions()

for tab in tab_safety:   # only when the trial has adverse events
    with tab:
        safety_tab(comp)
