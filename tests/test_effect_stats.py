"""The per-patient pseudo-values behind the generator term (each patient's own contribution: by
hand for the mean difference, against a leave-one-patient-out jackknife for the hazard ratio and
the RMST difference) and the rules of the RMST horizon, on the PBC demo."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from services.data.demo import load_demo
from services.evaluation.effect_stats import (
    horizon,
    ratio_parameters,
    statistics,
    twin_tte,
    twin_values,
)
from services.generation import get_generator
from services.retrieval.retriever import ExactRetriever


@pytest.fixture(scope="module")
def pbc_sc():
    trial = load_demo("pbc")
    ctrl = trial.control_arm
    treated = trial.subjects.loc[trial.subjects["ARM"] != ctrl, "USUBJID"].iloc[:40]
    real = trial.subset(treated)
    gen = get_generator("local", retriever_factory=ExactRetriever).fit(trial)
    run = gen.generate(real.baseline_only(), target_arm=ctrl, twins_per_patient=5, seed=3)
    return trial, real, run


def _stats(real, tw_vals, tw_tte, tau):
    return statistics(real, tw_vals, tw_tte, {"DEATH": tau}, ["BILI"])


def test_mean_difference_pseudo_values_are_each_patients_own_difference(pbc_sc):
    _, real, run = pbc_sc
    st = _stats(real, twin_values(run), twin_tte(run), 1500.0)
    vv = real.visit_values
    tw = twin_values(run)
    assert sum(k[0] == "mean_difference" for k in st) >= 3      # BILI at several visits
    for (measure, p, v), s in st.items():
        if measure != "mean_difference":
            continue
        y = vv[(vv["PARAMCD"] == p) & (vv["AVISITN"] == v)].set_index("USUBJID")["AVAL"]
        t = tw[(tw["PARAMCD"] == p) & (tw["AVISITN"] == v)].groupby("SRCSUBJID")["AVAL"].mean()
        d = (y - t.reindex(y.index)).dropna()
        assert s.pseudo.sort_index().to_dict() == pytest.approx(d.sort_index().to_dict(), rel=1e-12)
        assert s.theta == pytest.approx(d.mean()) and s.n == len(d)


def test_geometric_mean_ratio_pseudo_values_are_log_differences_of_positive_parameters(pbc_sc):
    _, real, run = pbc_sc
    tw = twin_values(run)
    st = statistics(real, tw, None, {}, None)
    vv = real.visit_values
    positive = {p for p, g in vv.groupby("PARAMCD") if g["AVAL"].min() > 0}
    assert "BILI" in positive
    assert {k[1] for k in st if k[0] == "geometric_mean_ratio"} == positive & {k[1] for k in st}
    for (measure, p, v), s in st.items():
        if measure != "geometric_mean_ratio":
            continue
        y = np.log(vv[(vv["PARAMCD"] == p) & (vv["AVISITN"] == v)].set_index("USUBJID")["AVAL"])
        t = np.log(tw[(tw["PARAMCD"] == p) & (tw["AVISITN"] == v)]["AVAL"]).groupby(
            tw.loc[(tw["PARAMCD"] == p) & (tw["AVISITN"] == v), "SRCSUBJID"]).mean()
        d = (y - t.reindex(y.index)).dropna()
        assert s.pseudo.sort_index().to_dict() == pytest.approx(d.sort_index().to_dict(), rel=1e-12)
    # a twin value <= 0 (which the log cannot take) removes that visit's ratio, never a patient
    key = next(k for k in st if k[0] == "geometric_mean_ratio" and k[1] == "BILI")
    who = st[key].pseudo.index[0]
    hit = (tw["SRCSUBJID"] == who) & (tw["PARAMCD"] == "BILI") & (tw["AVISITN"] == key[2])
    bad = statistics(real, tw.assign(AVAL=tw["AVAL"].where(~hit, 0.0)), None, {}, ["BILI"])
    assert key not in bad and len([k for k in bad if k[0] == "geometric_mean_ratio"]) == \
        len([k for k in st if k[:2] == ("geometric_mean_ratio", "BILI")]) - 1
    assert bad[("mean_difference", "BILI", key[2])].n == st[("mean_difference", "BILI", key[2])].n


def test_ratio_parameters_need_positive_values_in_the_cohort_and_the_knowledge_base(pbc_sc):
    trial, real, _ = pbc_sc
    ctrl = trial.control_arm
    both = ratio_parameters(real, trial, ctrl)
    assert "BILI" in both and both <= ratio_parameters(real)
    # one control patient's bilirubin at 0 in the knowledge base: no ratio for BILI
    lab = next(n for n, df in trial.bds.items() if df["PARAMCD"].eq("BILI").any())
    df = trial.bds[lab].copy()
    one = df.index[(df["PARAMCD"] == "BILI") & (df["ARM"] == ctrl)][0]
    df.loc[one, "AVAL"] = 0.0
    zeroed = dataclasses.replace(trial, bds={**trial.bds, lab: df})
    assert ratio_parameters(real, zeroed, ctrl) == both - {"BILI"}
    # a zero in another arm of the knowledge base does not matter
    df = trial.bds[lab].copy()
    df.loc[df.index[(df["PARAMCD"] == "BILI") & (df["ARM"] != ctrl)][0], "AVAL"] = 0.0
    assert ratio_parameters(real, dataclasses.replace(trial, bds={**trial.bds, lab: df}), ctrl) == both


@pytest.mark.parametrize("measure", ["hazard_ratio", "rmst_difference"])
def test_event_pseudo_values_match_a_leave_one_patient_out_jackknife(pbc_sc, measure):
    _, real, run = pbc_sc
    vals, tte = twin_values(run), twin_tte(run)
    tau = 1500.0
    full = _stats(real, vals, tte, tau)[(measure, "DEATH", None)]
    ids = list(full.pseudo.index)
    n = len(ids)
    jack = {}
    for i in ids:
        rest = real.subset([u for u in ids if u != i])
        s = _stats(rest, vals[vals["SRCSUBJID"] != i], tte[tte["SRCSUBJID"] != i], tau)
        jack[i] = n * full.theta - (n - 1) * s[(measure, "DEATH", None)].theta
    jack = pd.Series(jack)
    ours = full.pseudo.reindex(jack.index)
    assert ours.mean() == pytest.approx(full.theta, abs=1e-9 * max(1.0, abs(full.theta)))
    assert np.corrcoef(ours, jack)[0, 1] > 0.98          # each patient's own contribution
    assert np.abs(ours - jack).max() < 0.25 * jack.std()


def _with_tte(trial, tte):
    return dataclasses.replace(trial, tte=tte.reset_index(drop=True))


def test_rmst_horizon_rules(pbc_sc):
    trial, real, run = pbc_sc
    ctrl = trial.control_arm
    kb_t = trial.tte[(trial.tte["PARAMCD"] == "DEATH")
                     & trial.tte["USUBJID"].isin(trial.subjects.loc[trial.subjects["ARM"] == ctrl, "USUBJID"])]
    q90 = float(np.quantile(kb_t["AVAL"], 0.9))
    longest = float(min(real.tte.loc[real.tte["PARAMCD"] == "DEATH", "AVAL"].max(),
                        run.tte.loc[run.tte["PARAMCD"] == "DEATH", "AVAL"].max()))
    assert q90 < longest
    tau, rule = horizon(real, run, "DEATH", trial, ctrl)
    assert tau == pytest.approx(q90) and "90 % of the knowledge base" in rule
    # no follow-up in the knowledge base (or not in its target arm): survRM2's default
    assert horizon(real, run, "DEATH") == (longest, "the shorter of the two arms' longest follow-up")
    assert horizon(real, run, "DEATH", trial, "no such arm")[0] == longest
    assert horizon(real, run, "DEATH", _with_tte(trial, trial.tte.iloc[:0]), ctrl)[0] == longest
    # a cohort followed for less time than the knowledge base: capped, and said so
    short = real.tte.assign(AVAL=np.minimum(real.tte["AVAL"], q90 / 2),
                            CNSR=np.where(real.tte["AVAL"] > q90 / 2, 1, real.tte["CNSR"]))
    tau, rule = horizon(_with_tte(real, short), run, "DEATH", trial, ctrl)
    assert tau == pytest.approx(q90 / 2) and "capping" in rule and "conservative" in rule
