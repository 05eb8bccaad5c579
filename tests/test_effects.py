"""Known-answer tests of services.evaluation.effects: Cox HR vs lifelines, RMST vs lifelines and the
Greenwood-type hand formula, ANCOVA vs statsmodels OLS, and the synthetic-control effect vs
a hand computation on a real twin run (patients as the unit; generator term independent of K)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.utils import restricted_mean_survival_time

from services.data.demo import load_demo
from services.evaluation import effect_stats as ES
from services.evaluation import effects as E
from services.evaluation import estimators as est
from services.evaluation import generator_term as GT
from services.evaluation import procova_analysis as PA
from services.evaluation.resampling import resample_knowledge_base, subsample_knowledge_base
from services.generation import get_generator
from services.retrieval.retriever import ExactRetriever

sm = pytest.importorskip("statsmodels.api")


def _surv_data(seed=0, n=120):
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    t_ev = rng.exponential(10 * np.exp(-0.5 * group))
    t_c = rng.uniform(2, 25, n)
    time_ = np.round(np.minimum(t_ev, t_c), 6) + rng.uniform(0, 1e-4, n)  # no ties
    event = (t_ev <= t_c).astype(int)
    return time_, event, group


def test_cox_binary_matches_lifelines_unweighted():
    t, e, g = _surv_data()
    df = pd.DataFrame({"T": t, "E": e, "G": g})
    cph = CoxPHFitter().fit(df, "T", "E")
    fit = est.cox_binary(t, e, g)
    assert fit.log_hr == pytest.approx(cph.params_["G"], abs=1e-6)
    assert fit.se_model == pytest.approx(cph.standard_errors_["G"], rel=1e-5)
    rob = CoxPHFitter().fit(df, "T", "E", robust=True)
    assert fit.se_robust == pytest.approx(rob.standard_errors_["G"], rel=1e-4)


def test_cox_binary_matches_lifelines_weighted_clustered():
    # real patients (weight 1) and their K = 4 "twins" (weight 1/4), clusters = patients
    rng = np.random.default_rng(3)
    n, k = 60, 4
    base = rng.normal(size=n)
    t_real = rng.exponential(np.exp(-0.7 * base)) * 1.3
    t_tw = rng.exponential(np.exp(-0.7 * np.repeat(base, k)))
    c_real, c_tw = rng.uniform(0.5, 3, n), rng.uniform(0.5, 3, n * k)
    time_ = np.concatenate([np.minimum(t_real, c_real), np.minimum(t_tw, c_tw)])
    event = np.concatenate([t_real <= c_real, t_tw <= c_tw]).astype(int)
    group = np.concatenate([np.ones(n), np.zeros(n * k)])
    w = np.concatenate([np.ones(n), np.full(n * k, 1 / k)])
    cl = np.concatenate([np.arange(n), np.repeat(np.arange(n), k)])
    df = pd.DataFrame({"T": time_, "E": event, "G": group, "W": w, "C": cl})
    cph = CoxPHFitter().fit(df, "T", "E", weights_col="W", cluster_col="C", robust=True)
    fit = est.cox_binary(time_, event, group, w, cl)
    assert fit.log_hr == pytest.approx(cph.params_["G"], abs=1e-6)
    assert fit.se_robust == pytest.approx(cph.standard_errors_["G"], rel=1e-4)


def _greenwood_rmst_var(t, e, tau):
    """Hand loop: Var = sum_j A(u_j)^2 d_j / (Y_j (Y_j - d_j)), A(u) = int_u^tau S."""
    times = sorted(set(t[(e == 1) & (t <= tau)]))
    s, surv = 1.0, []
    for u in times:
        y = np.sum(t >= u)
        d = np.sum((t == u) & (e == 1))
        s *= 1 - d / y
        surv.append((u, s, y, d))
    grid = [0.0] + [u for u, *_ in surv] + [tau]
    svals = [1.0] + [s for _, s, _, _ in surv]
    areas = [svals[i] * (grid[i + 1] - grid[i]) for i in range(len(svals))]
    var = 0.0
    for j, (u, s, y, d) in enumerate(surv):
        a = sum(areas[j + 1:])
        if y > d:
            var += a * a * d / (y * (y - d))
    return sum(areas), var


def test_rmst_matches_lifelines_and_greenwood_hand_formula():
    t, e, _ = _surv_data(1)
    tau = 12.0
    fit = est.rmst_km(t, e, tau)
    kmf = KaplanMeierFitter().fit(t, e)
    assert fit.rmst == pytest.approx(restricted_mean_survival_time(kmf, t=tau), rel=1e-9)
    r_hand, v_hand = _greenwood_rmst_var(t, e, tau)
    assert fit.rmst == pytest.approx(r_hand, rel=1e-12)
    assert fit.var == pytest.approx(v_hand, rel=1e-9)
    assert np.sum(fit.influence) == pytest.approx(0.0, abs=1e-8)  # influence functions centre


def test_weighted_rmst_matches_lifelines_weighted_km():
    t, e, _ = _surv_data(2)
    w = np.random.default_rng(2).choice([0.25, 0.5, 1.0], t.size)
    kmf = KaplanMeierFitter().fit(t, e, weights=w)
    assert est.rmst_km(t, e, 10.0, weights=w).rmst == pytest.approx(
        restricted_mean_survival_time(kmf, t=10.0), rel=1e-9)


def test_rmst_variance_is_honest_by_simulation():
    # the influence-function variance matches the spread of the estimate over samples
    rng = np.random.default_rng(5)
    ests, vars_ = [], []
    for _ in range(400):
        tt = rng.exponential(5, 80)
        cc = rng.uniform(1, 12, 80)
        f = est.rmst_km(np.minimum(tt, cc), (tt <= cc).astype(int), 6.0)
        ests.append(f.rmst)
        vars_.append(f.var)
    assert np.mean(vars_) == pytest.approx(np.var(ests, ddof=1), rel=0.15)


def test_ols_matches_statsmodels():
    rng = np.random.default_rng(0)
    X = np.column_stack([np.ones(50), rng.integers(0, 2, 50), rng.normal(size=50)])
    y = X @ [1.0, 0.5, 2.0] + rng.normal(size=50)
    fit = est.ols(y, X)
    ref = sm.OLS(y, X).fit()
    np.testing.assert_allclose(fit.coef, ref.params, rtol=1e-10)
    np.testing.assert_allclose(fit.se, ref.bse, rtol=1e-10)
    assert fit.df == ref.df_resid


def test_procova_effects_match_statsmodels_on_btheb():
    trial = load_demo("btheb")
    ctrl = trial.control_arm
    trt = next(a for a in trial.arms if a != ctrl)
    kb_ids = trial.subjects["USUBJID"]
    gen = get_generator("local", retriever_factory=ExactRetriever).fit(trial)
    # twins under control of every trial patient; a patient is never its own neighbour/donor
    run = gen.generate(trial.baseline_only(), target_arm=ctrl, twins_per_patient=10, seed=3)
    prog = PA.prognostic_scores(run, "BDI", 2.0)
    assert set(prog.index) <= set(kb_ids)
    res = {e.analysis: e for e in PA.procova_effects(trial, run, "BDI", 2.0, trt, ctrl)}
    assert set(res) == set(PA.ANALYSES)
    vv = trial.visit_values
    y = vv[(vv["PARAMCD"] == "BDI") & (vv["AVISITN"] == 2.0)].set_index("USUBJID")["AVAL"]
    d = pd.DataFrame({"Y": y})
    d["TRT"] = (trial.subjects.set_index("USUBJID")["ARM"].reindex(d.index) == trt).astype(float)
    d["BASE"] = trial.baseline["BDI"].reindex(d.index)
    d["PROG"] = prog.reindex(d.index)
    for name, cols in PA.ANALYSES.items():
        dd = d.dropna(subset=["Y", *cols])
        ref = sm.OLS(dd["Y"], sm.add_constant(dd[["TRT", *cols]])).fit()
        ci = ref.conf_int().loc["TRT"]
        eff = res[name]
        assert eff.estimate == pytest.approx(ref.params["TRT"], rel=1e-9)
        assert eff.se == pytest.approx(ref.bse["TRT"], rel=1e-9)
        assert (eff.ci_low, eff.ci_high) == pytest.approx((ci[0], ci[1]), rel=1e-9)
        assert eff.p_value == pytest.approx(ref.pvalues["TRT"], rel=1e-6)
        assert eff.n_patients == len(dd) and eff.unit == "patients"
    # the twins predict: PROCOVA + baseline is no less precise than the baseline ANCOVA here
    assert res["procova_baseline"].se < res["unadjusted"].se


def test_resample_knowledge_base_keeps_sources_once():
    trial = load_demo("btheb")
    ctrl = trial.control_arm
    sources = list(trial.subjects.loc[trial.subjects["ARM"] == ctrl, "USUBJID"][:5])
    kb = resample_knowledge_base(trial, ctrl, np.random.default_rng(1), keep=sources)
    assert kb.subjects["USUBJID"].is_unique
    assert kb.arm_counts() == trial.arm_counts()
    for s in sources:  # never duplicated
        assert not kb.subjects["USUBJID"].str.startswith(s + "#").any()
    copies = kb.subjects["USUBJID"].str.contains("#")
    assert copies.any()
    orig = kb.subjects.loc[copies, "USUBJID"].str.split("#").str[0].iloc[0]
    new = kb.subjects.loc[copies, "USUBJID"].iloc[0]
    a = trial.bds["adqs"].loc[trial.bds["adqs"]["USUBJID"] == orig, "AVAL"].to_numpy()
    b = kb.bds["adqs"].loc[kb.bds["adqs"]["USUBJID"] == new, "AVAL"].to_numpy()
    np.testing.assert_array_equal(a, b)


def test_subsample_knowledge_base_draws_without_replacement():
    trial = load_demo("btheb")
    ctrl = trial.control_arm
    sources = list(trial.subjects.loc[trial.subjects["ARM"] == ctrl, "USUBJID"][:5])
    n = trial.arm_counts()[ctrl] - len(sources)
    kb, r, d = subsample_knowledge_base(trial, ctrl, np.random.default_rng(1), keep=sources, fraction=0.5)
    assert r + d == n and r == round(n / 2)
    ids = kb.subjects["USUBJID"]
    assert ids.is_unique and not ids.str.contains("#").any()          # nobody duplicated
    assert set(sources) <= set(ids) and kb.arm_counts()[ctrl] == r + len(sources)
    assert all(kb.arm_counts()[a] == c for a, c in trial.arm_counts().items() if a != ctrl)
    kept = next(u for u in ids if u not in sources and kb.subjects.set_index("USUBJID").at[u, "ARM"] == ctrl)
    pd.testing.assert_frame_equal(
        kb.bds["adqs"].loc[kb.bds["adqs"]["USUBJID"] == kept].reset_index(drop=True),
        trial.bds["adqs"].loc[trial.bds["adqs"]["USUBJID"] == kept].reset_index(drop=True))


def test_subsampled_term_is_the_delete_d_jackknife_of_a_mean():
    """For the mean of n values, (r / d) x the variance of subsample means (without
    replacement) is S^2 / n exactly in expectation: checked against all subsets."""
    from itertools import combinations

    from services.evaluation.generator_term import GeneratorBootstrap

    y = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0])
    n = len(y)
    for r in (2, 4):                                   # r / d = 0.5 and 2
        subsets = [list(c) for c in combinations(range(n), r)]
        means = np.array([y[c].mean() for c in subsets])
        # patient a's pseudo-value is the subsample mean; b's adds noise that the interaction
        # mean square takes out again, so the term is the scaled between-subset variance of a
        noise = np.random.default_rng(r).normal(0, 0.3, len(subsets))
        refits = [{"k": pd.Series([m, m + 1.0 + e], index=["a", "b"])} for m, e in zip(means, noise)]
        term = GeneratorBootstrap(len(refits), 1, refits, scale=r / (n - r)).variance("k")
        expected = np.var(y, ddof=1) / n * len(subsets) / (len(subsets) - 1)
        between = np.var((2 * means + 1.0 + noise) / 2, ddof=1)
        inter = np.var(noise, ddof=1) / 4          # MS_int / n: residuals -+(e - mean e) / 2, n = 2
        assert term.variance == pytest.approx(r / (n - r) * (between - inter))
        assert r / (n - r) * np.var(means, ddof=1) == pytest.approx(expected)


@pytest.fixture(scope="module")
def btheb_sc():
    trial = load_demo("btheb")
    ctrl = trial.control_arm
    trt = next(a for a in trial.arms if a != ctrl)
    real = trial.subset(trial.subjects.loc[trial.subjects["ARM"] == trt, "USUBJID"])
    gen = get_generator("local", retriever_factory=ExactRetriever).fit(trial)
    run = gen.generate(real.baseline_only(), target_arm=ctrl, twins_per_patient=20, seed=1)
    return trial, real, run


def test_synthetic_control_mean_difference_by_hand(btheb_sc):
    trial, real, run = btheb_sc
    eff = E.synthetic_control_effects(real, run, trial, refits=0)
    e = next(x for x in eff if x.paramcd == "BDI" and x.avisitn == 2.0)
    vals = run.values()
    tw = vals[(vals["PARAMCD"] == "BDI") & (vals["AVISITN"] == 2.0)].groupby("SRCSUBJID")["AVAL"].mean()
    vv = real.visit_values
    y = vv[(vv["PARAMCD"] == "BDI") & (vv["AVISITN"] == 2.0)].set_index("USUBJID")["AVAL"]
    d = (y - tw.reindex(y.index)).dropna()
    assert e.estimate == pytest.approx(d.mean(), rel=1e-12)
    assert e.se == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)), rel=1e-12)
    assert e.n_patients == len(d) and e.K == 20 and e.unit == "patients"
    q = E.stats.t.ppf(0.975, len(d) - 1)
    assert e.ci_high - e.estimate == pytest.approx(q * e.se, rel=1e-9)
    assert "NOT included" in e.method


def test_geometric_mean_ratio_is_a_one_sample_t_on_the_log_scale(btheb_sc):
    """Known answer: without refits the ratio of geometric means is scipy's one-sample t test of
    log real - mean log twins, back-transformed; a parameter with a value <= 0 gets none."""
    trial = load_demo("pbc")
    ctrl = trial.control_arm
    real = trial.subset(trial.subjects.loc[trial.subjects["ARM"] != ctrl, "USUBJID"].iloc[:30])
    gen = get_generator("local", retriever_factory=ExactRetriever).fit(trial)
    run = gen.generate(real.baseline_only(), target_arm=ctrl, twins_per_patient=3, seed=5)
    eff = E.synthetic_control_effects(real, run, trial, refits=0, params=["BILI"], tte_params=[])
    gmr = [e for e in eff if e.measure == "geometric_mean_ratio"]
    assert len(gmr) == sum(e.measure == "mean_difference" for e in eff) >= 3
    e = gmr[-1]
    vals = run.values()
    t = vals[(vals["PARAMCD"] == "BILI") & (vals["AVISITN"] == e.avisitn)]
    t = np.log(t["AVAL"]).groupby(t["SRCSUBJID"]).mean()
    vv = real.visit_values
    y = np.log(vv[(vv["PARAMCD"] == "BILI") & (vv["AVISITN"] == e.avisitn)].set_index("USUBJID")["AVAL"])
    d = (y - t.reindex(y.index)).dropna()
    ref = E.stats.ttest_1samp(d, 0.0)
    ci = ref.confidence_interval(0.95)
    assert e.estimate == pytest.approx(math.exp(d.mean()), rel=1e-12)
    assert (e.ci_low, e.ci_high) == pytest.approx((math.exp(ci.low), math.exp(ci.high)), rel=1e-9)
    assert e.p_value == pytest.approx(ref.pvalue, rel=1e-9) and e.n_patients == len(d)
    assert "ratio of geometric means" in e.method
    # btheb's BDI scores reach 0: no ratio there, the mean differences stay
    bt, bt_real, bt_run = btheb_sc
    assert bt_real.visit_values.loc[bt_real.visit_values["PARAMCD"] == "BDI", "AVAL"].min() <= 0
    measures = {e.measure for e in E.synthetic_control_effects(bt_real, bt_run, bt, refits=0)}
    assert "mean_difference" in measures and "geometric_mean_ratio" not in measures


def test_the_ratio_gets_its_generator_term_from_the_refits_log_differences(monkeypatch):
    """Each refit's ratio pseudo-values are its own twins' log differences (by hand), and the
    ratio's interval carries the generator term of those refits."""
    trial = load_demo("pbc")
    ctrl = trial.control_arm
    real = trial.subset(trial.subjects.loc[trial.subjects["ARM"] != ctrl, "USUBJID"].iloc[:30])
    seen, stats_ = [], GT.statistics
    monkeypatch.setattr(GT, "statistics", lambda r, tv, *a: seen.append(tv) or stats_(r, tv, *a))
    boot = GT.generator_bootstrap(real, trial, ctrl, "local", {}, refits=3, boot_twins=2, run_twins=2,
                                  seed=1, params=["BILI"], log_params={"BILI"})
    assert len(seen) == 3 and boot.draws == 1
    vv = real.visit_values
    keys = [k for k in boot.refits[0] if k[0] == "geometric_mean_ratio" and all(k in f for f in boot.refits)]
    assert len(keys) >= 3
    for refit, tw in zip(boot.refits, seen, strict=True):
        for key in keys:
            v = key[2]
            t = tw[(tw["PARAMCD"] == "BILI") & (tw["AVISITN"] == v)]
            t = np.log(t["AVAL"]).groupby(t["SRCSUBJID"]).mean()
            y = np.log(vv[(vv["PARAMCD"] == "BILI") & (vv["AVISITN"] == v)].set_index("USUBJID")["AVAL"])
            d = (y - t.reindex(y.index)).dropna()
            assert refit[key].sort_index().to_dict() == pytest.approx(d.sort_index().to_dict(), rel=1e-12)
    gen = get_generator("local", retriever_factory=ExactRetriever).fit(trial)
    run = gen.generate(real.baseline_only(), target_arm=ctrl, twins_per_patient=2, seed=5)
    eff = E.synthetic_control_effects(real, run, trial, bootstrap=boot, params=["BILI"], tte_params=[])
    term = boot.variance(keys[-1])
    e = next(x for x in eff if x.measure == "geometric_mean_ratio" and x.avisitn == keys[-1][2])
    assert term.refits == 3 and math.isfinite(term.between) and e.var_generator == term.variance
    assert e.se == pytest.approx(math.sqrt(e.var_patients + term.variance), rel=1e-12)


def test_generator_term_does_not_shrink_with_k(btheb_sc):
    trial, real, run20 = btheb_sc
    boot = E.generator_bootstrap(real, trial, run20.target_arm, refits=6, boot_twins=10, seed=2)
    keep = run20.adsl["TWINIDX"] <= 1
    ids1 = set(run20.adsl.loc[keep, "USUBJID"])
    run1 = E.TwinRun(run20.adsl[keep], {k: v[v["USUBJID"].isin(ids1)] for k, v in run20.bds.items()},
                     None, run20.manifest)
    e1 = {(x.paramcd, x.avisitn): x for x in E.synthetic_control_effects(real, run1, trial, bootstrap=boot)}
    e20 = {(x.paramcd, x.avisitn): x for x in E.synthetic_control_effects(real, run20, trial, bootstrap=boot)}
    for key, a in e20.items():
        b = e1[key]
        assert a.B == b.B == 6 and a.K == 20 and b.K == 1
        assert a.var_generator == b.var_generator  # given the same refits, the run's K does not enter
        assert a.var_patients <= b.var_patients * 1.2  # the patient term falls (noise) with K
        assert a.se**2 >= a.var_generator  # ... but never below the generator term
        assert "refits" in a.method
    # by hand: generator term = between-refit variance - interaction mean square / n of the
    # refits' d_i = Y_i - mean of i's twins (patients x refits); Satterthwaite df counts both
    a, key = e20[("BDI", 2.0)], ("mean_difference", "BDI", 2.0)
    vv = real.visit_values
    y = vv[(vv["PARAMCD"] == "BDI") & (vv["AVISITN"] == 2.0)].set_index("USUBJID")["AVAL"]
    th, cols = [], []
    for f in boot.refits:
        d = f[key]
        assert set(d.index) == set(y.dropna().index)
        th.append(d.mean())
        cols.append(d)
    P = pd.concat(cols, axis=1, join="inner").to_numpy()
    n, b = P.shape
    assert n == a.n_patients and b == 6
    between = np.var(th, ddof=1)
    r = P - P.mean(0) - P.mean(1)[:, None] + P.mean()
    inter = (r**2).sum() / ((n - 1) * (b - 1)) / n
    assert 0 < inter < between and a.var_generator == pytest.approx(between - inter, rel=1e-12)
    den = a.var_patients**2 / (n - 1) + between**2 / 5 + inter**2 / ((n - 1) * 5)
    assert a.df == pytest.approx((a.var_patients + a.var_generator) ** 2 / den, rel=1e-12)


def test_refits_generate_the_runs_k(btheb_sc, monkeypatch):
    """A K = 1 run's refits generate one twin per source (its twin is one donor's residual, not a
    balanced set); several counts from the same refits give what separate bootstraps give."""
    trial, real, run20 = btheb_sc
    keep = run20.adsl["TWINIDX"] <= 1
    ids1 = set(run20.adsl.loc[keep, "USUBJID"])
    run1 = E.TwinRun(run20.adsl[keep], {k: v[v["USUBJID"].isin(ids1)] for k, v in run20.bds.items()},
                     None, run20.manifest)
    eff = E.synthetic_control_effects(real, run1, trial, refits=3, boot_twins=10, seed=4, params=["BDI"])
    assert eff and all("(1 twin each, mean of 10 independent draws" in e.method and e.K == 1 and e.B == 3
                       for e in eff)
    st = E.bootstrap_settings(run1, "local", dict(run1.manifest["settings"]))
    fits, make = [], GT.make_generator
    monkeypatch.setattr(GT, "make_generator", lambda g, s: fits.append(g) or make(g, s))
    boots = GT.generator_bootstrap_by_twins(real, trial, run1.target_arm, "local", st, refits=3,
                                            twin_counts=(10, 1), seed=4, params=["BDI"], twins_per_refit=10)
    assert len(fits) == 3                                  # one fit per refit, both counts from it
    assert sorted(boots) == [1, 10] and boots[1].boot_twins == 1 and len(boots[10].refits) == 3
    assert (boots[1].draws, boots[10].draws) == (10, 1)
    again = E.synthetic_control_effects(real, run1, trial, bootstrap=boots[1], params=["BDI"])
    assert [e.var_generator for e in again] == [e.var_generator for e in eff]
    key = ("mean_difference", "BDI", 2.0)
    for count in (1, 10):                                  # each count = its own bootstrap, refit by refit
        alone = GT.generator_bootstrap(real, trial, run1.target_arm, "local", st, refits=3, boot_twins=10,
                                       run_twins=count, seed=4, params=["BDI"])
        for mine, theirs in zip(boots[count].refits, alone.refits, strict=True):
            pd.testing.assert_series_equal(mine[key], theirs[key], check_names=False)
    assert not boots[10].refits[0][key].equals(boots[1].refits[0][key])


def test_subsampled_refits_scale_by_r_over_d_with_the_visit_rule_at_their_size(btheb_sc, monkeypatch):
    trial, real, run20 = btheb_sc
    st = E.bootstrap_settings(run20, "local", dict(run20.manifest["settings"]))
    seen, make = [], GT.make_generator
    monkeypatch.setattr(GT, "make_generator", lambda g, s: seen.append(s) or make(g, s))
    boot = GT.generator_bootstrap_by_twins(real, trial, run20.target_arm, "local", st, refits=3, twin_counts=(5,),
                                           seed=2, params=["BDI"], subsample=0.5)[5]
    n = trial.arm_counts()[run20.target_arm]          # the sources are treated: the whole arm is the pool
    r = round(n / 2)
    assert boot.scale == pytest.approx(r / (n - r)) and boot.subsample == 0.5
    assert [s["min_visit_subjects"] for s in seen] == [math.ceil(10 * r / n)] * 3
    assert all(s["structure"] == st["structure"] for s in seen)      # the structure is still held
    eff = E.synthetic_control_effects(real, run20, trial, bootstrap=boot, params=["BDI"])
    assert eff and all("subsampled without replacement (0.5 of the target arm" in e.method for e in eff)
    assert any(math.isfinite(e.var_generator) and e.var_generator > 0 for e in eff)


def test_a_small_k_refit_averages_independent_draws(btheb_sc, monkeypatch):
    """A K = 1 run's refit averages 10 independent single-twin draws, each a `generate` call of
    1 twin with its own seed (the first the seed a refit without averaging uses, none shared
    with another refit): the refit's pseudo-values are the mean of its draws', recomputed here
    from the refit's own fitted generator; the same knowledge bases as without averaging; the
    twins' noise in the interaction mean square cut about tenfold."""
    trial, real, run20 = btheb_sc
    st = E.bootstrap_settings(run20, "local", dict(run20.manifest["settings"]))
    kw = {"refits": 4, "twin_counts": (1,), "seed": 3, "params": ["BDI"]}
    one = GT.generator_bootstrap_by_twins(real, trial, run20.target_arm, "local", st, **kw)[1]
    gens, calls, make = [], [], GT.make_generator

    def recording(g, s):
        gen = make(g, s)
        generate = gen.generate

        def gen_and_record(*a, **k):
            calls.append((len(gens) - 1, k["seed"], k["twins_per_patient"]))
            return generate(*a, **k)
        gen.generate = gen_and_record
        gens.append(gen)
        return gen
    monkeypatch.setattr(GT, "make_generator", recording)
    ten = GT.generator_bootstrap_by_twins(real, trial, run20.target_arm, "local", st, twins_per_refit=10, **kw)[1]
    assert (one.draws, ten.draws) == (1, 10) and len(gens) == 4 and len(calls) == 40
    assert all(c == 1 for _, _, c in calls) and len({s for _, s, _ in calls}) == 40
    assert [s for b, s, _ in calls if s == 3 * 7919 + b + 1] == [3 * 7919 + b + 1 for b in range(4)]
    key = ("mean_difference", "BDI", 2.0)
    draws = [ES.statistics(real, ES.twin_values(gens[0].generate(real.baseline_only(), target_arm=run20.target_arm,
                                                                  twins_per_patient=1, seed=s)), None, {}, ["BDI"])
             for b, s, _ in calls[:10] if b == 0]
    by_hand = pd.concat([d[key].pseudo for d in draws], axis=1).mean(axis=1)
    pd.testing.assert_series_equal(ten.refits[0][key].sort_index(), by_hand.sort_index(), check_names=False)
    pd.testing.assert_series_equal(one.refits[0][key], draws[0][key].pseudo, check_names=False)
    for a, b in zip(one.refits, ten.refits, strict=True):
        assert set(a[key].index) == set(b[key].index)
        assert not np.allclose(a[key].to_numpy(), b[key].reindex(a[key].index).to_numpy())
    assert ten.variance(key).interaction < 0.4 * one.variance(key).interaction
    assert GT.draws_for(1, 10) == 10 and GT.draws_for(5, 10) == 2 and GT.draws_for(10, 10) == 1
    assert GT.draws_for(3, None) == 1


def test_two_way_generator_term_matches_statsmodels_and_removes_the_joint_part():
    """MS_int is the residual mean square of the additive two-way OLS (statsmodels); on tables
    built with a known refit variance and a large patient x refit part, v_g finds the refit
    variance where the between-refit variance alone also counts the joint part / n."""
    rng = np.random.default_rng(5)
    n, b = 30, 12
    P = rng.normal(size=(n, 1)) + rng.normal(size=(1, b)) * 0.5 + rng.normal(size=(n, b)) * 2.0
    df = pd.DataFrame({"y": P.ravel(), "i": np.repeat(np.arange(n), b), "b": np.tile(np.arange(b), n)})
    fit = sm.OLS.from_formula("y ~ C(i) + C(b)", df).fit()
    term = GT.two_way_term(pd.DataFrame(P))
    assert term.interaction * n == pytest.approx(fit.mse_resid, rel=1e-10)
    assert term.between == pytest.approx(np.var(P.mean(axis=0), ddof=1), rel=1e-12)
    assert term.patients == n and term.refits == b
    v, between = [], []
    for _ in range(2000):
        P = rng.normal(size=(n, 1)) + rng.normal(size=(1, b)) * 0.5 + rng.normal(size=(n, b)) * 2.0
        t = GT.two_way_term(pd.DataFrame(P))
        v.append(t.between - t.interaction)             # unfloored: the estimator's mean
        between.append(t.between)
    assert np.mean(v) == pytest.approx(0.25, abs=0.015)             # Var(g) = 0.5^2
    assert np.mean(between) == pytest.approx(0.25 + 4.0 / n, abs=0.02)


def test_generator_refits_hold_the_runs_structure(btheb_sc, monkeypatch):
    """The bootstrap refits re-estimate the run's model (scales and mean models as its fit chose
    them) instead of re-choosing it on every resampled knowledge base, also from the run's own
    settings (which record `structure=None`); other generators and an explicit structure are
    left alone; the method says which."""
    trial, real, run = btheb_sc
    held = run.manifest["model_details"]["structure"]
    assert run.manifest["settings"]["structure"] is None
    assert E.bootstrap_settings(run, "local", run.manifest["settings"])["structure"] == held
    assert E.bootstrap_settings(run, "local", {"neighbors": 10}) == {"neighbors": 10, "structure": held}
    assert "structure" not in E.bootstrap_settings(run, "llm", {})
    mine = {"BDI": {"scale": "identity", "mean_model": "ancova"}}
    assert E.bootstrap_settings(run, "local", {"structure": mine})["structure"] == mine
    seen = []
    make = GT.make_generator
    monkeypatch.setattr(GT, "make_generator", lambda g, s: seen.append(s.get("structure")) or make(g, s))
    eff = E.synthetic_control_effects(real, run, trial, refits=2, boot_twins=2, params=["BDI"])
    assert seen == [held, held]
    assert eff and all("structure held" in e.method and e.B == 2 for e in eff)
    boot = E.generator_bootstrap(real, trial, run.target_arm, refits=2, boot_twins=2, params=["BDI"])
    free = E.synthetic_control_effects(real, run, trial, bootstrap=boot, params=["BDI"])
    assert not boot.structure_held and all("structure held" not in e.method for e in free)


def test_a_backtest_of_a_run_chooses_its_own_structure_per_fold(btheb_sc):
    # the run's structure was chosen on the whole knowledge base, held-out folds included
    from services.evaluation.validation import run_generator

    _, _, run = btheb_sc
    man = dict(run.manifest, settings=dict(run.manifest["settings"], structure={"BDI": {"scale": "identity",
                                                                                        "mean_model": "carry"}}))
    name, settings, k = run_generator(E.TwinRun(run.adsl, run.bds, run.tte, man))
    assert name == "local" and k == 20 and "structure" not in settings

