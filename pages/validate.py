"""Validate: backtest the generator on the loaded trial's own control arm (k-fold cross-fitting),
the PROCOVA sample size it supports, a hold-out privacy audit, and (with adverse-event data)
the safety backtest: do twins predict who has which AE?"""

import hashlib

import streamlit as st

from components.data_table import code_labels
from components.metric_cards import headline_table
from components.state import cohort_ids_or_all, get_run, get_run_dir, get_trial
from components.validate_widgets import (
    endpoint_picker,
    procova_inputs,
    safety_backtest_card,
    safety_settings,
    validation_card,
)
from services.data.adverse import has_ae
from services.evaluation import validation as val
from services.evaluation.comparison import headline
from services.evaluation.safety_backtest import safety_card, safety_verdict
from services.reporting.figures import compare as fig

trial = get_trial()
st.title("Validate the twins")
st.caption("Backtest: the control arm is split into k folds; each fold is held out once, the generator learns "
           "from the rest of the trial and twins the held-out patients from their baseline only; the twins are "
           "then compared with what those patients really did.")

run = get_run()
if run is not None and (run.manifest.get("knowledge_base") or {}).get("content_hash") != trial.content_hash:
    run = None                                   # a run of another trial is not validated here
gen_name, _, run_k = val.run_generator(run)


def backtest_sections() -> None:
    """Backtest card (visits and events) and, for a trial with visits, PROCOVA (it needs the
    longitudinal backtest)."""
    with st.form("backtest_settings"):
        st.caption(f"Generator: **{gen_name}**" + (f" with the settings and K of run {run.run_id}" if run is not None
                                                  else " with its default settings (no twin arm yet)") + ".")
        c1, c2, c3, c4 = st.columns(4)
        arms = trial.arms
        default_arm = arms.index(run.target_arm) if run is not None and run.target_arm in arms else 0
        arm = c1.selectbox("Arm to backtest", arms, index=default_arm, help="Usually the control arm: the twins of "
                           "a synthetic control arm are control-arm patients.")
        folds = c2.slider("Folds (k)", 2, 10, val.RUN_FOLDS, help=f"{val.RUN_FOLDS} (with the run's arm, K and seed 0): "
                          "the run's own validation, kept with it and shown in the report.")
        k = c3.slider("Twins per held-out patient", 1, 50, run_k if run is not None else 20)
        seed = c4.number_input("Seed", 0, 10_000, 0)
        asked = st.form_submit_button("Run backtest")

    key = (trial.content_hash, run.run_id if run is not None else None, arm, folds, k, int(seed))
    own_validation = run is not None and (arm, folds, k, int(seed)) == (run.target_arm, val.RUN_FOLDS, run_k, 0)
    store = st.session_state.setdefault("validate_backtests", {})
    if asked and key not in store:
        with st.spinner(f"Backtesting the {gen_name} generator: twins of every held-out patient..."):
            store.clear()
            if own_validation:
                # the run's own validation: the one the report shows (often done in the background)
                store[key] = val.cached_validate_run(trial, run, get_run_dir())
            else:
                store[key] = val.validate_run(trial, run, arm=arm, folds=folds, twins_per_patient=k, seed=int(seed))
    result = store.get(key)
    if result is None:
        st.info("Choose the settings and press **Run backtest** (a few seconds for the local generator).")
        return
    cards = st.session_state.setdefault("validate_cards", {})
    if key not in cards:                  # the card's bootstraps take seconds: once per backtest
        cards.clear()
        cards[key] = val.bootstrap_card(result, seed=int(seed), trial=trial)
    card = cards[key]
    validation_card(result, card, code_labels({p: i.label for p, i in trial.parameters.items()}
                                              | {p: trial.tte_label(p) for p in trial.tte_parameters}))
    if not trial.longitudinal_parameters:
        return

    st.header("PROCOVA: how many patients would twins save?")
    st.caption("The mean of each patient's twins is a prognostic score. Adjusting the primary analysis for it "
               "(PROCOVA, qualified by the EMA in 2022) shrinks the outcome variance by 1 - rho², where rho is the "
               "correlation between score and outcome, estimated here on held-out control patients.")
    planned_for, saved = st.session_state.get("validate_procova_inputs") or (None, None)
    saved = saved if own_validation and planned_for == run.run_id else None
    scope = hashlib.sha1(repr(key).encode()).hexdigest()[:12]
    chosen = endpoint_picker(val.endpoint_choices(trial, result), val.endpoint_visit(trial),
                             lambda e: f"{e[0]}: {trial.parameters[e[0]].label} at {val.visit_label(trial, *e)}",
                             scope, (saved or {}).get("endpoint"))
    endpoint = val.endpoint_pairs(trial, result, chosen if chosen and chosen[0] else None)
    # the effect and SDs are in the endpoint's unit: another endpoint starts from its own (a review
    # planned albumin with bilirubin's SD); alpha, power, allocation and the rules carry over
    same = saved is not None and tuple(saved.get("endpoint") or val.endpoint_visit(trial)) == tuple(endpoint[:2])
    start = saved if same else {k: v for k, v in (saved or {}).items() if k not in val.PROCOVA_UNIT_INPUTS}
    inputs = procova_inputs(endpoint, start, scope=f"{scope}_{endpoint[0]}_{endpoint[1]}",
                            visit=val.visit_label(trial, endpoint[0], endpoint[1]) if endpoint[0] else None)
    if inputs is not None and endpoint[0]:
        inputs["endpoint"] = [endpoint[0], endpoint[1]]     # the report plans for the same endpoint
    if own_validation:       # the report plans on the run's own validation with the inputs on this screen
        st.session_state["validate_procova_inputs"] = (run.run_id, inputs)
    elif run is not None:
        st.caption("These inputs plan on this backtest only: the report plans on the run's own validation (the "
                   "default settings above), with the inputs last set there.")
    if inputs is not None:
        plan = val.procova(trial, result, **inputs)
        if "error" in plan:
            st.warning(plan["error"])
        else:
            if plan.get("note"):
                st.info(plan["note"])
            cols = st.columns(5)
            cols[0].metric(plan["rho_used_label"], f"{plan['plan']['rho_used']:.2f}",
                           help=f"The twins' rho: {plan['rho']['rho']:.2f} (95 % CI {plan['rho']['ci_low']:.2f} to "
                                f"{plan['rho']['ci_high']:.2f}, {plan['n_pairs']} held-out patients)"
                                + ("" if "rho_partial" not in plan else
                                   f", {plan['rho_partial']:.2f} beyond the baseline (partial)") + f"; {plan['rule']}")
            cols[1].metric("Patients, unadjusted", plan["n_unadjusted"])
            base_n = plan.get("n_baseline_ancova")
            cols[2].metric("Patients, baseline ANCOVA", "n/a" if base_n is None else base_n)
            cols[3].metric("Patients, PROCOVA", plan["n_adjusted"])
            if base_n is not None:
                cols[4].metric("Saving vs baseline ANCOVA", f"{plan['saving_vs_baseline_total']} "
                               f"({plan['saving_vs_baseline_pct']:.0f} %)",
                               help="What the twins add beyond the baseline adjustment a regulator expects anyway.")
            else:
                cols[4].metric("Saving vs unadjusted", f"{plan['saving_pct']:.0f} %")
            sizes = {"n_unadjusted": plan["n_unadjusted"], "n_adjusted": plan["n_adjusted"],
                     "n_baseline_ancova": base_n}
            st.plotly_chart(fig.sample_size_bars(sizes,
                                                 f"Total sample size for {plan['paramcd']} (effect {plan['effect']:g} "
                                                 f"{plan['unit']}, SD {plan['sd']:.3g})"), width="stretch")
            st.caption(f"Endpoint {plan['paramcd']} at {plan['visit']}. Sizes by the noncentral t; two-sided alpha "
                       f"{plan['alpha']}, power {plan['power']:.0%}, allocation {plan['ratio']:g}:1 "
                       f"(treatment:control). rho from {plan['generator']} twins (K = {plan['twins_per_patient']}).")


def privacy_section() -> None:
    """The hold-out privacy audit (needs no backtest), kept per (trial, run, cohort)."""
    st.header("Privacy audit with a hold-out")
    st.caption("Half of the real target arm is withheld; the generator learns from the other half and twins the "
               "cohort; an attacker then tries to tell training patients from withheld ones by how close twins come.")
    target = run.target_arm if run is not None else trial.control_arm
    sources, whom = val.audit_sources(trial, run, cohort_ids_or_all())
    audit_key = (trial.content_hash, run.run_id if run is not None else None, hash(tuple(sorted(sources))))
    if st.button("Run privacy audit", key="run_privacy_audit"):
        name, settings, k_run = val.run_generator(run)
        with st.spinner(f"Generating {name} twins from half of {target} and attacking them..."):
            st.session_state["privacy_audit"] = (audit_key, val.privacy_audit(
                trial, target, sources, generator=name, settings=settings,
                twins_per_patient=k_run if run is not None else 5, seed=0))
    stored = st.session_state.get("privacy_audit")
    audit = stored[1] if stored and stored[0] == audit_key else None
    if audit:
        if "error" in audit:
            st.warning(audit["error"])
        else:
            st.caption(f"{audit['generator']} twins, K = {audit['twins_per_patient']}, of {whom} (those outside "
                       f"{target}: {audit['twinned']}); {audit['withheld']} {target} patients withheld. Unlike "
                       "Compare's privacy figures, which measure twins against the very patients the generator "
                       "learnt from, these judge the twins against patients it never saw.")
            rows = headline({"privacy": audit})
            headline_table(rows[rows["group"] == "privacy"].reset_index(drop=True))


def safety_section() -> None:
    """The safety backtest: its own small form, results kept per (trial, run, settings)."""
    st.header("Adverse events: do twins predict who has which AE?")
    st.caption("Same cross-fitting: each held-out patient's probability of a preferred term is the share of its "
               "twins with it; it is scored against what the patient really had, and against the knowledge "
               "base's own rate of the term (the forecast without personalisation).")
    arms = trial.arms
    bounded = val.held_out_bound(gen_name)
    source = f"Generator: **{gen_name}**" + (f" with the settings of run {run.run_id}." if run is not None
                                            else " with its default settings (no twin arm yet).")
    asked, opts = safety_settings(arms, arms.index(run.target_arm) if run is not None and run.target_arm in arms
                                  else arms.index(trial.control_arm), run_k if run is not None else 20,
                                  source, bounded)
    key = (trial.content_hash, run.run_id if run is not None else None, *sorted(opts.items()))
    store = st.session_state.setdefault("validate_safety_backtests", {})
    if asked and key not in store:
        with st.spinner(f"Safety backtest of the {gen_name} generator: AE twins of every held-out patient..."):
            while len(store) >= 4:                   # keep the last few, drop the oldest
                store.pop(next(iter(store)))
            store[key] = val.validate_safety(trial, run, arm=opts["arm"], folds=opts["folds"],
                                             twins_per_patient=opts["k"], seed=opts["seed"], top=opts["top"],
                                             n_boot=opts["n_boot"], max_held_out=bounded)
    result = store.get(key)
    if result is None:
        st.info("Press **Run safety backtest** (a few seconds for the local generator).")
        return
    safety_backtest_card(result, safety_card(result), safety_verdict(result))


if val.backtestable(trial):
    backtest_sections()
    privacy_section()
else:
    st.info("This trial has no parameter with scheduled follow-up visits and no time-to-event data: "
            "nothing to backtest.")
if has_ae(trial):
    safety_section()
