"""Widgets of the Validate page: the validation card and the PROCOVA inputs."""

from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from components.data_table import data_table
from components.state import kept_choice
from services.evaluation.backtest_verdicts import backtest_setup
from services.evaluation.metrics.procova import default_effect
from services.evaluation.validation import ancova_headline
from services.reporting.tables import INFORMATION_NOTE, validation_card_table


def validation_card(result, card: pd.DataFrame, parameter_labels: dict[str, str] | None = None) -> None:
    """Plain-language verdicts first, then per-parameter figures with 95 % bootstrap intervals.
    `parameter_labels` (PARAMCD -> shown label) spell out the parameter codes of the tables."""
    codes = {"PARAMCD": parameter_labels or {}}
    s = result.summary
    st.subheader("Validation card")
    st.markdown(f"Generator **{result.generator}**, {backtest_setup(result, cost_note=True)}.")
    headline = ancova_headline(card)
    if headline:
        st.warning(headline)
    cols = st.columns(3)
    if len(result.visits) or not len(result.tte):     # a trial with events only has no visit figures
        cols[0].metric("Accuracy (median RMSE ratio)", "n/a" if s.get("rmse_ratio_median") is None
                       else f"{s['rmse_ratio_median']:.2f}", help="Twins' mean vs a regression on the baseline "
                       "value; <= 1 means twins predict at least as well.")
        cols[1].metric("Calibration (10-90 % coverage)", "n/a" if s.get("coverage") is None
                       else f"{s['coverage']:.0%}", help="Share of real values inside their twins' 10-90 % range, "
                       "target 75-85 %. A value tied with an end of the range (on an integer scale) "
                       "counts by the share of the tie that falls inside, and balanced twins (re-centred "
                       "exactly on their mean, as the run's manifest says) are ranked by their own "
                       "positions, so a perfect generator scores about 80 % at any number of twins "
                       "(exactly for continuous values with normal residuals).")
    if s.get("cindex_twins") is not None:
        cols[2].metric("C-index twins vs Cox", f"{s['cindex_twins']:.2f} vs {s['cindex_cox']:.2f}")
    for verdict in s.get("verdicts", []):
        if "not met" in verdict or "too narrow" in verdict or "too wide" in verdict:
            st.warning(verdict)
        elif "met" in verdict:
            st.success(verdict)
        else:
            st.info(verdict)
    if len(card):
        data_table(validation_card_table(card, codes["PARAMCD"]), key="validate_card")
        st.caption("Intervals are 95 % percentile bootstrap intervals over held-out patients; "
                   "'not conclusively' means the interval contains the target."
                   + (" " + INFORMATION_NOTE if "gain" in card else ""))
    if len(result.tte):
        data_table(result.tte, codes=codes, key="validate_tte")
        st.caption("Time to event: KM sup distance of the pooled twins to the held-out patients vs that of the "
                   "knowledge base's control arm (ratio <= 1 met), and C-index of the twins vs a Cox model.")
    if len(result.visits):
        with st.expander("Per visit"):
            data_table(result.visits, codes=codes, key="validate_visits")


def endpoint_picker(choices: list[tuple[str, float]], default, label_of, scope: str, saved=None):
    """The PROCOVA endpoint, a parameter at a visit (`validation.endpoint_choices`): the trial's
    by default (trial.toml's `endpoint`, else the first parameter's last well-attended visit)."""
    if not choices:
        return default
    start = tuple(saved) if saved and tuple(saved) in choices else default if default in choices else choices[0]
    return kept_choice(st.selectbox, "Endpoint", choices, key=f"procova_endpoint_{scope}",
                       index=choices.index(start), format_func=label_of,
                       help="The primary endpoint the trial is sized for. Its default can be set in the trial's "
                            "trial.toml: endpoint = {paramcd = \"...\", avisitn = ...}.")


def procova_inputs(endpoint, saved: dict | None = None, scope: str = "", visit: str | None = None) -> dict | None:
    """Effect, SD, alpha, power, allocation and the conservative option; None without endpoint.
    `saved`: the inputs last set for this run, the widgets' starting values (a page's widgets are
    reset when the user leaves it, and a revisit then silently replaced the inputs the report
    plans with). Keyed by `scope` (the backtest they plan on): an unkeyed widget whose value
    follows the saved input is a new widget at each change, and dropped every second edit."""
    saved = saved or {}
    paramcd, avisitn, pairs = endpoint
    if paramcd is None or len(pairs) < 5:
        st.info("No endpoint with enough held-out patients to estimate the prognostic correlation.")
        return None
    sd_obs = float(pairs["OBSERVED"].std(ddof=1))
    st.markdown(f"Endpoint: **{paramcd}** at **{visit or f'visit {avisitn:g}'}** ({len(pairs)} held-out patients). The effect "
                "to detect starts at 0.4 SD, a moderate effect: set it to the difference your trial is "
                "powered for, since the sample size follows it.")
    c1, c2, c3, c4, c5 = st.columns(5)
    # steps and display follow the SD's magnitude (a lab in g/L and one in mg/dL alike)
    step = 10.0 ** (math.floor(math.log10(sd_obs)) - 1) if sd_obs > 0 else 0.01
    effect = c1.number_input("Effect to detect", min_value=1e-9, value=saved.get("effect") or (default_effect(sd_obs) if sd_obs > 0 else 1.0),
                             step=step, format="%.4g", help="Difference in means between arms, in the endpoint's unit.", key=f"procova_effect_{scope}")
    sd = c2.number_input("SD", min_value=1e-9, value=saved.get("sd") or (sd_obs if sd_obs > 0 else 1.0), step=step,
                         format="%.4g", help="Outcome SD; defaults to the held-out control patients' SD.", key=f"procova_sd_{scope}")
    alpha = c3.select_slider("Alpha (two-sided)", [0.01, 0.025, 0.05, 0.1], value=saved.get("alpha", 0.05), key=f"procova_alpha_{scope}")
    power = c4.select_slider("Power", [0.8, 0.85, 0.9, 0.95], value=saved.get("power", 0.8), key=f"procova_power_{scope}")
    ratio = c5.select_slider("Allocation (treatment:control)", [1.0, 1.5, 2.0, 3.0], value=saved.get("ratio", 1.0), key=f"procova_ratio_{scope}")
    c6, c7, c8, c9 = st.columns(4)
    conservative = c6.checkbox("Conservative rho", value=saved.get("conservative", True),
                               help="Use the one-sided 95 % lower bound of rho, times a deflation factor; with a "
                                    "baseline, the score's partial correlation so, and the baseline's correlation "
                                    "at its lower bound.", key=f"procova_conservative_{scope}")
    deflation = c7.slider("Deflation factor", 0.5, 1.0, saved.get("deflation", 0.9), 0.05,
                          disabled=not conservative, key=f"procova_deflation_{scope}")
    sd_t = c8.number_input("Treated-arm SD", min_value=0.0, value=saved.get("sd_treatment"), format="%.3f",
                           placeholder="control arm's",
                           help="Empty = the same as the control arm's.", key=f"procova_sd_treatment_{scope}")
    rho_t = c9.number_input("Treated-arm rho", min_value=0.0, max_value=0.99, value=saved.get("rho_treatment"), format="%.2f",
                            placeholder="control arm's",
                            help="Correlation of the adjustment (the score, with the baseline where there is "
                                 "one) with the treated arm's outcome; empty = the control arm's. Treatment "
                                 "may weaken the prognostic relation; 0 = no adjustment gain in that arm.", key=f"procova_rho_treatment_{scope}")
    return {"effect": effect, "sd": sd, "alpha": alpha, "power": power, "ratio": ratio,
            "conservative": conservative, "deflation": deflation,
            "sd_treatment": sd_t or None, "rho_treatment": rho_t}


def safety_settings(arms: list[str], default_arm: int, default_k: int, source: str,
                    bounded: int | None) -> tuple[bool, dict]:
    """The safety backtest's own small form: (pressed, {arm, folds, k, seed, top, n_boot}).
    `source` says which generator and settings are used; `bounded` the held-out patients
    twinned per fold for a generator that calls a model per twin (None: all)."""
    with st.form("safety_backtest_settings"):
        st.caption(source + ("" if bounded is None else
                             f" Each twin costs a model call: {bounded} held-out patients per fold are twinned."))
        c1, c2, c3, c4, c5, c6 = st.columns(6)
        out = {
            "arm": c1.selectbox("Arm", arms, index=default_arm, key="safety_arm"),
            "folds": c2.slider("Folds (k)", 2, 10, 2, key="safety_folds"),
            "k": c3.slider("Twins per held-out patient", 1, 50, default_k, key="safety_k",
                           help="The probability of a term is the share of a patient's K twins with it."),
            "seed": int(c4.number_input("Seed", 0, 10_000, 0, key="safety_seed")),
            "top": c5.slider("Terms", 3, 20, 10, key="safety_top", help="The most frequent preferred terms."),
            "n_boot": c6.select_slider("Bootstrap resamples", [100, 200, 500, 1000], value=500,
                                       key="safety_boot"),
        }
        return st.form_submit_button("Run safety backtest"), out


def safety_backtest_card(result, card: pd.DataFrame, verdict: list[str]) -> None:
    """The safety backtest: what was run, the summary in plain words, the per-term table."""
    s = result.summary
    st.markdown(f"Generator **{result.generator}**, {backtest_setup(result, cost_note=True)}.")
    if not s.get("twin_ae_records"):
        st.warning(f"The {result.generator} generator wrote no adverse-event twins: every probability is 0, "
                   "so the figures below only say what predicting no event is worth.")
    cols = st.columns(3)
    cols[0].metric("Mean abs. incidence error, twins", f"{100 * s['mae_twins']:.1f} pp",
                   help=f"Over the {s['terms']} most frequent terms, per fold then averaged (percentage points).")
    cols[1].metric("Mean abs. incidence error, KB rates", f"{100 * s['mae_kb']:.1f} pp",
                   help="The knowledge base's own rate of the term in the arm (no personalisation).")
    cols[2].metric("Mean AUROC", "n/a" if s["mean_auroc"] != s["mean_auroc"] else f"{s['mean_auroc']:.2f}",
                   help="0.5 = chance; within-fold pairs of a case and a non-case.")
    (st.success if s.get("mae_ok") else st.warning)(verdict[0])
    for line in verdict[1:]:
        st.info(line)
    data_table(card, key="validate_safety_card")
    st.caption("A held-out patient's probability of a term is the share of its twins with a treatment-emergent "
               "record of it. AUROC: do patients who had the term get higher probabilities than those who did "
               "not (0.5 = chance)? Brier skill: 1 - Brier(twins) / Brier(knowledge-base rate); > 0 means the "
               "twins personalise usefully, < 0 that their probabilities (multiples of 1/K) are noisier than the "
               "flat rate. Intervals are 95 % percentile bootstrap intervals over patients, within folds.")
