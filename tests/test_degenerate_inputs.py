"""Degenerate inputs get "not estimable" and a reason, never a confident number.

Each case was found by a review that fed the statistics layer edge cases a user can reach
(a small cohort without events, an endpoint nobody changed, missing baselines, a lab in
small units) and got a figure that looked like a finding: HR 6e-23 with p 4e-13, a 97 %
saving, a plan at power 1.0."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from services.evaluation import estimators as est
from services.evaluation import procova_analysis as PA
from services.evaluation.backtest import backtest
from services.evaluation.effects import run_effects
from services.evaluation.metrics.procova import (
    default_effect,
    estimate_adjustment,
    fisher_lower_bound,
    procova_plan,
)
from services.evaluation.validation import bootstrap_card, endpoint_pairs, procova
from services.generation import get_generator


@pytest.fixture(scope="module")
def result(pbc):
    return backtest(pbc, folds=2, twins_per_patient=5, seed=1)


def test_cox_without_events_in_one_group_is_not_estimable():
    rng = np.random.default_rng(0)
    t = rng.exponential(10, 40)
    g = np.r_[np.ones(20), np.zeros(20)]
    e = np.r_[np.zeros(20), np.ones(20)]          # the group of interest never has the event
    fit = est.cox_binary(t, e, g)
    assert math.isnan(fit.log_hr) and math.isnan(fit.se_robust)
    # weights count: events of zero weight are no events
    fit_w = est.cox_binary(t, np.ones(40), g, weights=np.r_[np.zeros(20), np.ones(20)])
    assert math.isnan(fit_w.log_hr)
    # one event on each side is enough
    e[0] = 1
    assert math.isfinite(est.cox_binary(t, e, g).log_hr)


def test_a_cohort_without_deaths_gets_no_hazard_ratio_and_says_why(pbc):
    """pbc, D-penicillamine, stage 1, female: 10 patients, none died. The Cox fit ran off to
    log HR -51 (HR 6e-23, p 4e-13) before; now the RMST difference stays, the HR is absent,
    and the note names the event counts."""
    s = pbc.subjects
    ids = list(s[(s.ARM == "D-penicillamine") & (s.STAGE == "Stage 1") & (s.SEX == "F")].USUBJID)
    real = pbc.subset(ids, name="stage 1 women")
    assert (real.tte.query("PARAMCD == 'DEATH'").CNSR == 1).all()
    run = get_generator("local").fit(pbc).generate(real.baseline_only(), target_arm="Placebo",
                                                     twins_per_patient=5, seed=0)
    out = run_effects(pbc, run, refits=2)
    measures = {(e["measure"], e["paramcd"]) for e in out["effects"]}
    assert ("rmst_difference", "DEATH") in measures and ("hazard_ratio", "DEATH") not in measures
    assert "no hazard ratio for DEATH: 0 events among the real patients" in out["note"]


def test_treated_arm_rho_counts_with_a_baseline():
    kw = {"conservative": False, "method": "t", "rho_baseline": 0.6, "rho_partial": 0.4}
    same = procova_plan(2.0, 5.0, 0.7, **kw)
    weaker = procova_plan(2.0, 5.0, 0.7, rho_treatment=0.3, **kw)
    none = procova_plan(2.0, 5.0, 0.7, rho_treatment=0.0, **kw)
    assert same.adjusted.n_total < weaker.adjusted.n_total < none.adjusted.n_total
    # the baseline alone cannot explain more of the treated outcome than the whole adjustment
    assert weaker.baseline_ancova.n_total > same.baseline_ancova.n_total
    assert weaker.rho_treatment_used == pytest.approx(0.3)


def test_an_outcome_on_the_baselines_line_is_an_error_not_a_plan(pbc, result):
    b = np.linspace(1, 3, 20)
    rng = np.random.default_rng(1)
    adj = estimate_adjustment(b + rng.normal(size=20), b, 2 * b + 1)
    assert math.isnan(adj.rho_partial) and math.isnan(adj.partial_lower) and adj.r2_added == 0
    with pytest.raises(ValueError, match="line of the baseline"):
        procova_plan(1.0, 2.0, 0.5, rho_baseline=1.0, rho_partial=0.0, method="t")
    # through the Validate page's service: nobody changed between baseline and the endpoint
    pairs = result.pairs.copy()
    pairs["OBSERVED"] = 2 * pairs["BASELINE"] + 1
    out = procova(pbc, dataclasses.replace(result, pairs=pairs))
    assert "error" in out and "exact line of the baseline" in out["error"]


def test_conservative_planning_bounds_the_baseline_correlation_on_the_triples(pbc, result):
    _, _, pairs = endpoint_pairs(pbc, result)
    adj = estimate_adjustment(pairs.PREDICTED, pairs.BASELINE, pairs.OBSERVED)
    out = procova(pbc, result, effect=1.0, sd=4.0, conservative=True)
    assert out["plan"]["rho_baseline"] == pytest.approx(fisher_lower_bound(adj.rho_baseline, adj.n))
    raw = procova(pbc, result, effect=1.0, sd=4.0, conservative=False)
    assert raw["plan"]["rho_baseline"] == pytest.approx(abs(adj.rho_baseline))
    assert out["n_baseline_ancova"] > raw["n_baseline_ancova"]
    # missing baselines: the partial correlation's bound counts the triples it was estimated on
    gone = pairs.USUBJID.drop_duplicates().iloc[: int(0.8 * pairs.USUBJID.nunique())]
    thin = result.pairs.copy()
    thin.loc[thin.USUBJID.isin(gone), "BASELINE"] = np.nan
    small = procova(pbc, dataclasses.replace(result, pairs=thin), effect=1.0, sd=4.0)
    n_triples = estimate_adjustment(*[endpoint_pairs(pbc, dataclasses.replace(result, pairs=thin))[2][c]
                                      for c in ("PREDICTED", "BASELINE", "OBSERVED")]).n
    assert n_triples < small["n_pairs"]
    assert f"on {n_triples} pairs" in small["rule"]


def test_the_default_effect_is_0_4_sd_whatever_the_unit(pbc, result):
    assert default_effect(0.0033) == pytest.approx(0.00132)
    assert default_effect(6.7849) == pytest.approx(2.71)
    pairs = result.pairs.copy()
    for c in ("OBSERVED", "PREDICTED", "BASELINE", "REFERENCE"):
        pairs[c] = pairs[c] * 1e-4
    out = procova(pbc, dataclasses.replace(result, pairs=pairs))
    assert out["effect"] / out["sd"] == pytest.approx(0.4, rel=2e-3)


def test_a_card_without_reference_says_not_estimated(result):
    # the reference regression exact (0/0): no ratio, no verdict on it
    pairs = result.pairs.assign(REFERENCE=result.pairs["OBSERVED"])
    card = bootstrap_card(dataclasses.replace(result, pairs=pairs), n_boot=20)
    assert (card["accuracy"] == "not estimated").all()
    # no reference at all: no patient is scored, and the card says so
    pairs = result.pairs.assign(REFERENCE=np.nan)
    card = bootstrap_card(dataclasses.replace(result, pairs=pairs), n_boot=20)
    assert (card["accuracy"] == "too few patients (0)").all()
    assert not card["accuracy"].str.contains("worse|better").any()


def test_a_perfect_fit_has_no_interval_or_p_value(pbc):
    vv = pbc.visit_values
    p, v = "BILI", float(vv.loc[vv.PARAMCD == "BILI", "AVISITN"].max())
    arm = pbc.subjects.set_index("USUBJID")["ARM"]
    bds = {}
    for name, d in pbc.bds.items():
        d = d.copy()
        at = (d.PARAMCD == p) & (d.AVISITN == v)
        d.loc[at, "AVAL"] = np.where(d.loc[at, "USUBJID"].map(arm) == "Placebo", 1.0, 3.0)
        bds[name] = d
    flat = dataclasses.replace(pbc, bds=bds)
    score = pd.Series(1.0, index=pbc.subjects.USUBJID) + np.random.default_rng(0).normal(size=len(pbc.subjects))
    effects = PA.procova_effects(flat, score, p, v, "D-penicillamine", analyses=("unadjusted",))
    (eff,) = effects
    assert eff.estimate == pytest.approx(2.0)
    assert math.isnan(eff.se) and math.isnan(eff.p_value) and math.isnan(eff.ci_low)


def test_plan_refuses_a_partial_correlation_that_is_not_a_number():
    with pytest.raises(ValueError, match="rho_partial is not a number"):
        procova_plan(1.0, 2.0, 0.5, conservative=False, rho_baseline=0.5, rho_partial=float("nan"))


def test_one_twin_per_patient_cannot_show_calibration(pbc):
    """A single twin's rank reads 80 % inside the band whatever the twins: no verdict, and the
    card says 'not estimated' (its NaN summed to 0 before: 'too narrow')."""
    res = backtest(pbc, folds=2, twins_per_patient=1, seed=1)
    assert res.pairs["PIT_COVER"].isna().all()
    s = res.summary
    assert s["coverage"] is None and s["calibration_met"] is None
    assert any(v.startswith("Calibration: not estimable with 1 twin") for v in s["verdicts"])
    card = bootstrap_card(res, n_boot=20)
    assert (card["calibration"] == "not estimable with 1 twin").all() and card["coverage"].isna().all()
    # two twins read no better (balanced: never below 60 %); five get a verdict and its floor
    two = backtest(pbc, folds=2, twins_per_patient=2, seed=1).summary
    assert two["coverage"] is None and two["calibration_met"] is None
    assert (bootstrap_card(backtest(pbc, folds=2, twins_per_patient=2, seed=1), n_boot=20)["calibration"]
            == "not estimable with 2 twins").all()
    assert any(v.startswith("Calibration: not estimable with 2 twins") and "below 60%" in v for v in two["verdicts"])
    five = backtest(pbc, folds=2, twins_per_patient=5, seed=1).summary
    assert five["coverage"] is not None and five["calibration_met"] is not None
    assert any(v.startswith("Calibration: ") and "cannot fall below 21%" in v for v in five["verdicts"])


def test_too_few_held_out_patients_get_figures_not_verdicts(pbc):
    res = backtest(pbc, folds=2, twins_per_patient=5, seed=1, max_held_out=2)
    s = res.summary
    assert s["patients_scored"] == 4
    assert s["accuracy_met"] is None and s["calibration_met"] is None
    assert s["verdicts"][0].startswith("Too few held-out patients for a verdict: 4 scored")
    assert not any(v.startswith(("Accuracy", "Calibration", "PROCOVA")) for v in s["verdicts"])
    card = bootstrap_card(res, n_boot=20)
    assert card["accuracy"].str.fullmatch(r"too few patients \([34]\)").all()


def test_an_event_type_without_events_is_not_estimable(pbc):
    tte = pbc.tte.copy()
    tte.loc[tte.PARAMCD == "DEATH", "CNSR"] = 1
    res = backtest(dataclasses.replace(pbc, tte=tte), folds=2, twins_per_patient=5, seed=1)
    (death,) = [v for v in res.summary["verdicts"] if v.startswith("Time to event DEATH")]
    assert "not estimable: 0 events among the" in death
    others = [v for v in res.summary["verdicts"] if v.startswith("Time to event DTHTX")]
    assert others and "events among" in others[0]


def test_an_arm_too_small_to_score_says_so():
    from services.data.demo import load_demo

    epilepsy = load_demo("epilepsy")
    ids = list(epilepsy.subjects.query("ARM == 'Placebo'").USUBJID[:12])
    ids += list(epilepsy.subjects.query("ARM != 'Placebo'").USUBJID)
    res = backtest(epilepsy.subset(ids), folds=2, twins_per_patient=5, seed=0)
    assert res.visits.empty
    assert res.summary["verdicts"][0].startswith("No visit could be scored")


def test_twins_stay_under_a_scales_ceiling():
    """btheb's BDI recoded to a 0-10 scale, 6 % of values at 10: a pile at an end is the scale's
    bound, not a range to widen by 10 % (54 twins scored 11 before; a 0-100 VAS reached 110)."""
    from services.data.demo import load_demo
    from services.retrieval.retriever import ExactRetriever

    t = load_demo("btheb")
    d = t.bds["adqs"].assign(AVAL=lambda d: np.minimum(10, np.round(d.AVAL / 4)))
    scale = dataclasses.replace(t, bds={"adqs": d}, content_hash="btheb-0-10")
    assert (d.AVAL == 10).mean() > 0.02
    src = scale.subset(list(scale.subjects.query("ARM == 'Beat the Blues'").USUBJID))
    run = get_generator("local", retriever_factory=ExactRetriever).fit(scale).generate(
        src.baseline_only(), target_arm="Treatment as usual", twins_per_patient=20, seed=0)
    v = run.values()
    assert v.AVAL.max() == 10 and (v.AVAL == 10).any() and v.AVAL.min() >= 0


def test_events_found_at_the_last_visit_keep_their_mass(pbc):
    """pbc's deaths as yearly visits would record them (day 365 / 730 / 1095), follow-up ending at
    day 1095: the last step's events were spread past the end of follow-up and half of them
    censored there (16.6 % of twins died against 20.8 % of the real arm, KM at the end 0.834 vs
    0.792)."""
    from services.retrieval.retriever import ExactRetriever

    d = pbc.tte.copy()
    death = d.PARAMCD.eq("DEATH")
    ev = death & d.CNSR.eq(0) & (d.AVAL <= 1095)
    d["AVAL"] = np.where(death, np.where(ev, np.ceil(d.AVAL / 365) * 365, 1095), d.AVAL)
    d["CNSR"] = np.where(death, np.where(ev, 0, 1), d.CNSR)
    visits = dataclasses.replace(pbc, tte=d, content_hash="pbc-yearly-deaths")
    src = visits.subset(list(visits.subjects.query("ARM == 'Placebo'").USUBJID))
    run = get_generator("local", retriever_factory=ExactRetriever).fit(visits).generate(
        src, target_arm="Placebo", twins_per_patient=20, seed=0)
    real = d[death & d.ARM.eq("Placebo")]
    twins = run.tte[run.tte.PARAMCD == "DEATH"]
    assert twins.AVAL.max() <= 1095
    assert abs((twins.CNSR == 0).mean() - (real.CNSR == 0).mean()) < 0.015


def test_a_gross_entry_error_is_named_in_the_runs_notes():
    """One BDI of 1e6 among scores of 0-63 spread into twins up to 1.1e6 with empty notes; the
    run now names the value (23 real trials of the backtest corpus raise no such note)."""
    from services.data.demo import load_demo
    from services.data.quality import outlying_values

    t = load_demo("btheb")
    d = t.bds["adqs"].copy()
    row = d.index[(d.ARM == "Treatment as usual") & (d.AVISITN > 0)][0]
    d.loc[row, "AVAL"] = 1e6
    bad = dataclasses.replace(t, bds={"adqs": d}, content_hash="btheb-1e6")
    assert outlying_values(t.visit_values) == []
    src = bad.subset(list(bad.subjects.query("ARM == 'Beat the Blues'").USUBJID[:5]))
    run = get_generator("local").fit(bad).generate(src.baseline_only(), "Treatment as usual", twins_per_patient=2)
    (note,) = [n for n in run.manifest["notes"] if "far outside the rest" in n]
    assert note.startswith("BDI: 1 value(s) far outside the rest (1e+06 (" + str(d.loc[row, "USUBJID"]))
