"""The doubly robust mean difference against a synthetic control: known answers (Welch's t, a
hand computation), a known-truth trial where the twins' mean is wrong, and the effects section
on the bundled PBC trial."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from services.evaluation import doubly_robust as dr
from services.evaluation.effects import run_effects
from services.generation.local.generator import LocalGenerator
from services.retrieval.retriever import ExactRetriever


def test_equal_weights_give_welchs_t():
    rng = np.random.default_rng(3)
    d = pd.Series(rng.normal(1.0, 2.0, 23), index=[f"c{i}" for i in range(23)])
    r = pd.Series(rng.normal(0.2, 1.0, 11), index=[f"k{i}" for i in range(11)])
    a = dr.Augmented(d, r, pd.Series(0.7, index=r.index))
    se, lo, hi, p = dr.interval(a)
    welch = stats.ttest_ind(d, r, equal_var=False)
    assert a.theta == pytest.approx(d.mean() - r.mean())
    assert a.theta / se == pytest.approx(welch.statistic)
    assert p == pytest.approx(welch.pvalue)
    assert a.df == pytest.approx(welch.df)
    assert a.m_eff == pytest.approx(11)
    q = stats.t.ppf(0.975, welch.df)
    assert (lo, hi) == pytest.approx((a.theta - q * se, a.theta + q * se))


def test_unequal_weights_by_hand():
    d = pd.Series([1.0, 3.0, 2.0, 6.0, 4.0], index=list("abcde"))
    r = pd.Series([0.5, -1.0, 2.0, 1.0, 0.0, 3.0], index=list("uvwxyz"))
    w = pd.Series([1.0, 3.0, 0.5, 2.0, 1.0, 0.5], index=r.index)
    a = dr.Augmented(d, r, w)
    r_w = (1 * 0.5 - 3 * 1 + 0.5 * 2 + 2 * 1 + 0 + 0.5 * 3) / 8.0          # = 0.25
    assert a.correction == pytest.approx(r_w)
    assert a.theta == pytest.approx(3.2 - r_w)
    m_eff = 8.0**2 / (1 + 9 + 0.25 + 4 + 1 + 0.25)
    v_c = sum(wi**2 * (ri - r_w) ** 2 for wi, ri in zip(w, r)) / 64.0 * m_eff / (m_eff - 1)
    assert a.var == pytest.approx(np.var(d, ddof=1) / 5 + v_c)


def _confounded_trial(seed: int, n: int = 300):
    """A control arm whose week-4 value regresses to the mean (slope 0.5 on the baseline) and a
    treated cohort of patients with higher baselines (selection on the baseline) and NO effect."""
    from services.data.loading import load_trial_files
    from services.data.readers import RawFile

    rng = np.random.default_rng(seed)
    base = rng.normal(50, 10, 2 * n)
    treated = rng.random(2 * n) < 1 / (1 + np.exp(-(base - 55) / 5))       # high baselines treated more
    y = 25 + 0.5 * base + rng.normal(0, 4, 2 * n)                          # the same for both: no effect
    ids = [f"S-{i:04d}" for i in range(2 * n)]
    rows = [{"USUBJID": u, "PARAMCD": "SCORE", "PARAM": "Score", "AVAL": float(v), "AVISITN": a,
             "AVISIT": "Baseline" if a == 0 else "Week 4", "ADY": 1.0 + 28 * a, "ABLFL": "Y" if a == 0 else ""}
            for u, b, y_ in zip(ids, base, y) for a, v in ((0, b), (1, y_))]
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": np.where(treated, "Active", "Placebo"),
                         "AGE": rng.normal(60, 8, 2 * n).round()})
    files = [RawFile("adsl.csv", adsl.to_csv(index=False).encode()),
             RawFile("adqs.csv", pd.DataFrame(rows).to_csv(index=False).encode()),
             RawFile("trial.toml", b'control_arm = "Placebo"\n')]
    return load_trial_files(files, name="confounded")


def test_doubly_robust_corrects_a_wrong_twin_mean():
    """Known truth (no effect): twins that carry the baseline forward over-predict the
    high-baseline cohort (and no neighbourhood shift corrects them), so the twins-only estimate
    is biased; the doubly robust one takes the same twins' error on the controls who resemble
    the cohort and is not."""
    trial = _confounded_trial(11)
    treated = list(trial.subjects.loc[trial.subjects["ARM"] == "Active", "USUBJID"])
    gen = LocalGenerator(retriever_factory=ExactRetriever, mean_model="carry", center="none").fit(trial)
    run = gen.generate(trial.subset(treated).baseline_only(), target_arm="Placebo", twins_per_patient=5, seed=1)
    res = run_effects(trial, run, refits=0)
    by = {e["measure"]: e for e in res["effects"] if e["paramcd"] == "SCORE"}
    plain, robust = by["mean_difference"], by["mean_difference_dr"]
    assert plain["estimate"] < -2 and plain["ci_high"] < 0            # a spurious benefit
    assert robust["ci_low"] < 0 < robust["ci_high"]
    assert abs(robust["estimate"]) < abs(plain["estimate"]) / 3
    assert robust["n_control"] == int((trial.subjects["ARM"] == "Placebo").sum())
    assert robust["var_generator"] == 0 and robust["B"] == 0
    assert "doubly robust" in robust["method"] and "propensity" in robust["method"]


def test_effects_section_on_pbc_has_the_doubly_robust_difference(pbc, pbc_twins):
    res = run_effects(pbc, pbc_twins, refits=2)
    dr_rows = [e for e in res["effects"] if e["measure"] == "mean_difference_dr"]
    md_rows = {(e["paramcd"], e["avisitn"]) for e in res["effects"] if e["measure"] == "mean_difference"}
    assert dr_rows and {(e["paramcd"], e["avisitn"]) for e in dr_rows} <= md_rows
    placebo = int((pbc.subjects["ARM"] == "Placebo").sum())
    assert all(e["n_control"] <= placebo and e["n_patients"] <= 40 for e in dr_rows)
    assert all(e["ci_low"] <= e["estimate"] <= e["ci_high"] for e in dr_rows)
    measures = [e["measure"] for e in res["effects"]]
    assert measures.index("mean_difference") < measures.index("mean_difference_dr") \
        < measures.index("geometric_mean_ratio")


def test_no_doubly_robust_difference_for_twins_of_the_target_arm(pbc):
    """Placebo twins of placebo patients: the controls would be the cohort itself."""
    ids = list(pbc.subjects.loc[pbc.subjects["ARM"] == "Placebo", "USUBJID"][:30])
    run = LocalGenerator(retriever_factory=ExactRetriever).fit(pbc).generate(
        pbc.subset(ids).baseline_only(), target_arm="Placebo", twins_per_patient=2, seed=0)
    res = run_effects(pbc, run, refits=0)
    assert not [e for e in res["effects"] if e["measure"] == "mean_difference_dr"]
    assert "30 source patients are in the target arm 'Placebo'" in res["note"]
    assert [e for e in res["effects"] if e["measure"] == "mean_difference"]
