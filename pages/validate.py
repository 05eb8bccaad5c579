"""Validate: backtest the generator on the loaded trial's own control arm (k-fold cross-fitting),
the PROCOVA sample size it supports, and a hold-out privacy audit."""

import streamlit as st

from components.state import cohort_ids_or_all, get_run, get_trial
from components.validate_widgets import procova_inputs, validation_card
from services.evaluation import validation as val
from services.evaluation.backtest import backtest
from services.reporting.figures import compare as fig

trial = get_trial()
st.title("Validate the twins")
st.caption("Backtest: the control arm is split into k folds; each fold is held out once, the generator learns "
           "from the rest of the trial and twins the held-out patients from their baseline only; the twins are "
           "then compared with what those patients really did.")

if not trial.longitudinal_parameters:
    st.info("This trial has no parameter with scheduled follow-up visits: nothing to backtest.")
    st.stop()

with st.form("backtest_settings"):
    c1, c2, c3, c4 = st.columns(4)
    arm = c1.selectbox("Arm to backtest", trial.arms, index=0, help="Usually the control arm: the twins of a "
                       "synthetic control arm are control-arm patients.")
    folds = c2.slider("Folds (k)", 2, 10, 5)
    k = c3.slider("Twins per held-out patient", 5, 50, 20, step=5)
    seed = c4.number_input("Seed", 0, 10_000, 0)
    st.form_submit_button("Run backtest")


@st.cache_data(show_spinner="Running the backtest (generating twins of every held-out patient)...", max_entries=16)
def _backtest(trial_hash: str, arm: str, folds: int, k: int, seed: int, _trial):
    return backtest(_trial, arm=arm, folds=folds, twins_per_patient=k, seed=seed)


result = _backtest(trial.content_hash, arm, folds, k, int(seed), trial)
card = val.bootstrap_card(result, seed=int(seed))
validation_card(result, card)

st.header("PROCOVA: how many patients would twins save?")
st.caption("The mean of each patient's twins is a prognostic score. Adjusting the primary analysis for it "
           "(PROCOVA, qualified by the EMA in 2022) shrinks the outcome variance by 1 - rho², where rho is the "
           "correlation between score and outcome, estimated here on held-out control patients.")
inputs = procova_inputs(val.endpoint_pairs(trial, result))
if inputs is not None:
    plan = val.procova(trial, result, **inputs)
    if "error" in plan:
        st.warning(plan["error"])
    else:
        cols = st.columns(4)
        cols[0].metric("rho (held-out)", f"{plan['rho']['rho']:.2f}",
                       help=f"95 % CI {plan['rho']['ci_low']:.2f} to {plan['rho']['ci_high']:.2f} on "
                            f"{plan['n_pairs']} patients")
        cols[1].metric("Patients, unadjusted", plan["n_unadjusted"])
        cols[2].metric("Patients, PROCOVA", plan["n_adjusted"], delta=-plan["saving_total"], delta_color="inverse")
        cols[3].metric("Saving", f"{plan['saving_pct']:.0f} %")
        st.plotly_chart(fig.sample_size_bars({"n_unadjusted": plan["n_unadjusted"], "n_adjusted": plan["n_adjusted"]},
                                             f"Total sample size for {plan['paramcd']} (effect {plan['effect']:g} "
                                             f"{plan['unit']}, SD {plan['sd']:.3g})"), width="stretch")
        st.caption(f"rho used: {plan['plan']['rho_used']:.2f} ({plan['rule']}). Two-sided alpha {plan['alpha']}, "
                   f"power {plan['power']:.0%}, allocation {plan['ratio']:g}:1 (treatment:control).")

st.header("Privacy audit with a hold-out")
st.caption("Half of the real target arm is withheld; the generator learns from the other half and twins the "
           "cohort; an attacker then tries to tell training patients from withheld ones by how close twins come.")
run = get_run()
target = run.target_arm if run is not None else trial.control_arm
if st.button("Run privacy audit", key="run_privacy_audit"):
    sources = [u for u in cohort_ids_or_all() if u in set(trial.subjects["USUBJID"])]
    st.session_state["privacy_audit"] = val.privacy_audit(trial, target, sources, seed=int(seed))
audit = st.session_state.get("privacy_audit")
if audit:
    if "error" in audit:
        st.warning(audit["error"])
    else:
        cols = st.columns(4)
        cols[0].metric("DCR ratio", f"{audit['dcr']['ratio_median']:.2f}", help=">= 1: twins are no closer to "
                       "training patients than to withheld ones.")
        cols[1].metric("Membership advantage", f"{audit['membership']['advantage']:.2f}",
                       help="Sensitivity minus false-positive rate of the attack; 0 is ideal.")
        cols[2].metric("NNAA", f"{audit['nnaa']['nnaa']:.2f}", help="0.5 ideal; near 0 means copies.")
        cols[3].metric("Exact copies", audit["exact_copies"]["n_copies"])
