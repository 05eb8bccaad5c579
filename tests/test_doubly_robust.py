"""The doubly robust mean difference against a synthetic control: known answers (Welch's t, a
hand computation), a known-truth trial where the twins' mean is wrong, and the effects section
on the bundled PBC trial."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from services.evaluation import doubly_robust as dr
from services.evaluation.effect_stats import ratio_parameters
from services.evaluation.effects import run_effects
from services.evaluation.effects_table import real_controls
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


def confounded_trial(seed: int, n: int = 300):
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


def carry_effects(trial) -> dict:
    treated = list(trial.subjects.loc[trial.subjects["ARM"] == "Active", "USUBJID"])
    gen = LocalGenerator(retriever_factory=ExactRetriever, mean_model="carry", center="none").fit(trial)
    run = gen.generate(trial.subset(treated).baseline_only(), target_arm="Placebo", twins_per_patient=5, seed=1)
    res = run_effects(trial, run, refits=0)
    return {e["measure"]: e for e in res["effects"] if e["paramcd"] == "SCORE"}


def test_doubly_robust_corrects_a_wrong_twin_mean():
    """Known truth (no effect): twins that carry the baseline forward over-predict the
    high-baseline cohort (and no neighbourhood shift corrects them), so the twins-only estimate
    is biased, on the raw and the log scale; the doubly robust one takes the same twins' error
    on the controls who resemble the cohort and is nearly not: -0.30 on average over 60 trials
    with the logistic odds (the app's; SD 0.82 per trial, so the mean of 20 (SE ~0.18) stays within 0.6
    of zero; balancing weights +0.06; a correction shrunk by a fifth would leave about -1.2)."""
    runs = [carry_effects(confounded_trial(seed)) for seed in range(11, 31)]
    plain = np.array([r["mean_difference"]["estimate"] for r in runs])
    robust = np.array([r["mean_difference_dr"]["estimate"] for r in runs])
    assert plain.mean() < -4 and all(r["mean_difference"]["ci_high"] < 0 for r in runs)   # spurious benefit
    assert abs(robust.mean()) < 0.6
    assert sum(r["mean_difference_dr"]["ci_low"] < 0 < r["mean_difference_dr"]["ci_high"] for r in runs) >= 16
    log_plain = np.log([r["geometric_mean_ratio"]["estimate"] for r in runs])
    log_robust = np.log([r["geometric_mean_ratio_dr"]["estimate"] for r in runs])     # 60 trials: -0.097, -0.004
    assert log_plain.mean() < -0.07 and abs(log_robust.mean()) < 0.012                # (SD 0.014 per trial)
    ratio = runs[0]["geometric_mean_ratio_dr"]
    assert ratio["ci_low"] < ratio["estimate"] < ratio["ci_high"] and ratio["se"] > 0
    assert "ratio of geometric means" in ratio["method"] and "logistic propensity" in ratio["method"]
    first = runs[0]["mean_difference_dr"]
    assert first["n_control"] == int((confounded_trial(11).subjects["ARM"] == "Placebo").sum())
    assert 10 < first["effective_controls"] < 0.5 * first["n_control"]       # selection costs controls
    assert runs[0]["mean_difference"]["effective_controls"] is None
    assert first["var_generator"] == 0 and first["B"] == 0
    assert "doubly robust" in first["method"] and "cross-validated logistic propensity" in first["method"]


def test_a_control_patients_own_outcome_never_reaches_its_twins():
    """The correction term needs each control's twins made without its outcome: shifting three
    controls' week-4 values by 40 (10 SDs) leaves their own twins within 2 (a control that were
    its own donor or in its own fold model would move them by 8 or more at K 5). What does move
    them, by 0.7 at most here, is second order: the other donors' residuals come from fold
    models that held the shifted patients, and so do the arm's bounds and neighbourhood weight."""
    trial = confounded_trial(11)
    ctl = list(trial.subjects.loc[trial.subjects["ARM"] == "Placebo", "USUBJID"][:3])
    recs = trial.records.copy()
    hit = recs["USUBJID"].isin(ctl) & (recs["AVISITN"] == 1)
    shifted = dr_trial_with(trial, recs.assign(AVAL=np.where(hit, recs["AVAL"] + 40, recs["AVAL"])))
    means = []
    for t in (trial, shifted):
        gen = LocalGenerator(retriever_factory=ExactRetriever).fit(t)
        run = gen.generate(t.subset(list(t.subjects.loc[t.subjects["ARM"] == "Active", "USUBJID"][:5])).baseline_only(),
                           target_arm="Placebo", twins_per_patient=5, seed=0)
        tw = dr.control_twins(t, run, ctl, fitted=gen, seed=0).values()
        means.append(tw[tw["AVISITN"] == 1].groupby("SRCSUBJID")["AVAL"].mean())
    assert (means[1] - means[0]).abs().max() < 2


def dr_trial_with(trial, records):
    """The trial with its BDS records replaced (same patients)."""
    from services.data.loading import load_trial_files
    from services.data.readers import RawFile

    files = [RawFile("adsl.csv", trial.subjects.to_csv(index=False).encode()),
             RawFile("adqs.csv", records.to_csv(index=False).encode()),
             RawFile("trial.toml", b'control_arm = "Placebo"\n')]
    return load_trial_files(files, name="shifted")


def test_propensity_follows_the_selection_and_stays_flat_for_a_randomized_arm(pbc):
    trial = confounded_trial(11)
    subj = trial.subjects
    cohort, ctl = (trial.subset(list(subj.loc[subj["ARM"] == a, "USUBJID"])) for a in ("Active", "Placebo"))
    prop = dr.Propensity(cohort, ctl)
    w = prop.odds(prop.c_ids, prop.k_ids)
    assert stats.spearmanr(w.to_numpy(), ctl.baseline["SCORE"].reindex(w.index).to_numpy()).statistic > 0.9
    subj = pbc.subjects
    treated, placebo = (pbc.subset(list(subj.loc[subj["ARM"] == a, "USUBJID"])) for a in ("D-penicillamine", "Placebo"))
    prop = dr.Propensity(treated, placebo)
    w = prop.odds(prop.c_ids, prop.k_ids)
    assert w.sum() ** 2 / (w**2).sum() > 0.9 * len(w)      # randomized: nearly equal weights


def test_balancing_weights_match_the_cohorts_baseline_means():
    """Known answer: one binary baseline fact, no penalty to speak of: exact balance gives each
    control with the fact n p / m1 and each without it n (1 - p) / m0 (p the cohort's share);
    on the confounded trial the weighted controls' baseline meets the cohort's (within 0.03 SD)
    where the logistic odds leave a gap, and the weights sum to the cohort's size."""
    xc = np.r_[np.ones(30), np.zeros(10)][:, None]           # cohort: 75 % have it
    xk = np.r_[np.ones(20), np.zeros(60)][:, None]           # controls: 25 %
    w = dr.balancing_odds(xc, xk, C=1e6)
    assert w[:20] == pytest.approx(40 * 0.75 / 20, rel=1e-4) and w[20:] == pytest.approx(40 * 0.25 / 60, rel=1e-4)
    trial = confounded_trial(12)
    subj = trial.subjects
    cohort, ctl = (trial.subset(list(subj.loc[subj["ARM"] == a, "USUBJID"])) for a in ("Active", "Placebo"))
    gaps = {}
    for method in ("balancing", "logistic"):
        prop = dr.Propensity(cohort, ctl, method=method)
        w = prop.odds(prop.c_ids, prop.k_ids).to_numpy()
        gaps[method] = np.abs(w @ prop.Xk / w.sum() - prop.Xc.mean(axis=0)).max()
        if method == "balancing":
            assert w.sum() == pytest.approx(len(prop.c_ids), rel=1e-3)
    assert gaps["balancing"] < 0.03 < gaps["logistic"]
    with pytest.raises(ValueError, match="balancing"):
        dr.Propensity(cohort, ctl, method="probit")


def test_balancing_fit_meets_its_optimality_conditions_at_a_finite_penalty():
    """At C = 0.5 the balance is not exact: the weights sum to the cohort's size and the
    weighted controls' sums equal the cohort's minus beta / C, beta recovered from the weights
    by least squares of log w on the design (its gradient checked by finite differences); a
    cohort separable from the controls has no balancing weights worth the name (one control
    carries them: fewer than 2 effective, so no estimate)."""
    from scipy import optimize

    rng = np.random.default_rng(5)
    xc, xk = rng.normal(0.8, 1, (40, 3)), rng.normal(0, 1, (90, 3))
    w = dr.balancing_odds(xc, xk, C=0.5)
    fit = np.linalg.lstsq(np.c_[np.ones(90), xk], np.log(w), rcond=None)[0]
    assert np.allclose(np.c_[np.ones(90), xk] @ fit, np.log(w), atol=1e-8)         # w = exp(b0 + x beta)
    assert w.sum() == pytest.approx(40, rel=1e-4)
    assert xk.T @ w == pytest.approx(xc.sum(axis=0) - fit[1:] / 0.5, abs=0.02)
    assert np.abs(w @ xk / w.sum() - xc.mean(axis=0)).max() > 0.02                  # not exact at this C

    def loss(th):       # the objective balancing_odds minimises, and its gradient
        f = th[0] + xk @ th[1:]
        return 0.5 * (np.exp(f).sum() - 40 * th[0] - xc.sum(axis=0) @ th[1:]) + 0.5 * th[1:] @ th[1:]

    def grad(th):
        e = np.exp(th[0] + xk @ th[1:])
        return np.r_[0.5 * (e.sum() - 40), 0.5 * (xk.T @ e - xc.sum(axis=0)) + th[1:]]

    assert optimize.check_grad(loss, grad, np.r_[-0.5, 0.3, -0.2, 0.1]) < 1e-4
    assert loss(np.r_[fit]) <= loss(np.r_[fit] + 0.01)
    sep = dr.balancing_odds(np.full((20, 1), 3.0), np.linspace(-1, 1, 30)[:, None], C=100.0)
    assert sep is None or sep.sum() ** 2 / (sep**2).sum() < 2


def test_doubly_robust_ratio_by_hand():
    """The ratio of geometric means, doubly robust: exp of the augmented mean on the log scale
    (equal weights: exp of Welch's difference of the log-scale errors, its interval exp'd)."""
    d = pd.Series(np.log([1.2, 0.9, 1.5, 1.1, 1.3, 0.8]), index=list("abcdef"))
    r = pd.Series(np.log([1.0, 1.1, 0.9, 0.95, 1.05]), index=list("uvwxy"))
    a = dr.Augmented(d, r, pd.Series(1.0, index=r.index))
    se, lo, hi, _p = dr.interval(a)
    welch = stats.ttest_ind(d, r, equal_var=False)
    assert np.exp(a.theta) == pytest.approx(np.exp(d.mean() - r.mean()))
    q = stats.t.ppf(0.975, welch.df)
    assert (np.exp(lo), np.exp(hi)) == pytest.approx((np.exp(a.theta - q * se), np.exp(a.theta + q * se)))
    assert a.theta / se == pytest.approx(welch.statistic)


def test_effects_section_on_pbc_has_the_doubly_robust_difference(pbc, pbc_twins):
    res = run_effects(pbc, pbc_twins, refits=2)
    dr_rows = [e for e in res["effects"] if e["measure"] == "mean_difference_dr"]
    md_rows = {(e["paramcd"], e["avisitn"]) for e in res["effects"] if e["measure"] == "mean_difference"}
    assert dr_rows and {(e["paramcd"], e["avisitn"]) for e in dr_rows} <= md_rows
    placebo = int((pbc.subjects["ARM"] == "Placebo").sum())
    assert all(e["n_control"] <= placebo and e["n_patients"] <= 40 for e in dr_rows)
    assert all(0.8 * e["n_control"] < e["effective_controls"] <= e["n_control"] for e in dr_rows)   # randomized arms
    e = dr_rows[0]
    assert real_controls(e) == f"{e['n_control']} ({e['effective_controls']:.0f} effective)"
    assert {real_controls(e) for e in res["effects"] if e["analysis"] != "doubly_robust"} == {""}
    assert all(e["ci_low"] <= e["estimate"] <= e["ci_high"] for e in dr_rows)
    ratio_rows = {(e["paramcd"], e["avisitn"]): e for e in res["effects"] if e["measure"] == "geometric_mean_ratio_dr"}
    assert {p for p, _ in ratio_rows} == set(ratio_parameters(pbc)) & {e["paramcd"] for e in dr_rows}
    same = next(e for e in dr_rows if (e["paramcd"], e["avisitn"]) in ratio_rows)     # one set of weights a visit
    assert ratio_rows[(same["paramcd"], same["avisitn"])]["effective_controls"] == same["effective_controls"]
    measures = [e["measure"] for e in res["effects"]]
    assert measures.index("mean_difference") < measures.index("mean_difference_dr") \
        < measures.index("geometric_mean_ratio") < measures.index("geometric_mean_ratio_dr")


def test_no_doubly_robust_difference_for_twins_of_the_target_arm(pbc):
    """Placebo twins of placebo patients: the controls would be the cohort itself."""
    ids = list(pbc.subjects.loc[pbc.subjects["ARM"] == "Placebo", "USUBJID"][:30])
    run = LocalGenerator(retriever_factory=ExactRetriever).fit(pbc).generate(
        pbc.subset(ids).baseline_only(), target_arm="Placebo", twins_per_patient=2, seed=0)
    res = run_effects(pbc, run, refits=0)
    assert not [e for e in res["effects"] if e["measure"] == "mean_difference_dr"]
    assert "30 source patients are in the target arm 'Placebo'" in res["note"]
    assert [e for e in res["effects"] if e["measure"] == "mean_difference"]


def test_a_failed_balancing_fit_falls_back_to_the_logistic_odds_and_says_so(monkeypatch):
    trial = confounded_trial(13)
    subj = trial.subjects
    cohort, ctl = (trial.subset(list(subj.loc[subj["ARM"] == a, "USUBJID"])) for a in ("Active", "Placebo"))
    logistic = dr.Propensity(cohort, ctl, method="logistic")
    monkeypatch.setattr(dr, "balancing_odds", lambda *a, **k: None)       # as for a fit that did not converge
    prop = dr.Propensity(cohort, ctl, method="balancing")
    assert "stood in" not in prop.how
    w = prop.odds(prop.c_ids, prop.k_ids)
    assert np.allclose(w, logistic.odds(logistic.c_ids, logistic.k_ids))
    assert prop.fell_back == 1 and "at 1 visit(s) no weights balanced the cohort" in prop.how
