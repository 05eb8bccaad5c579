"""Metrics on constructed data with known answers (fidelity, privacy, utility, survival, registry)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
import pytest

from services.evaluation import metrics as M
from services.evaluation.metrics import fidelity, privacy, procova, registry, survival, utility

# --------------------------------------------------------------------------- fixtures


def _long(values: dict[tuple[str, int], np.ndarray], prefix: str) -> pd.DataFrame:
    rows = []
    for (param, visit), vals in values.items():
        for i, v in enumerate(vals):
            rows.append({"USUBJID": f"{prefix}{i:03d}", "PARAMCD": param, "AVISITN": visit,
                         "AVAL": float(v)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def real_values():
    rng = np.random.default_rng(11)
    base = rng.normal(50, 10, size=120)
    return {
        ("HBA1C", 4): base,
        ("HBA1C", 8): base + rng.normal(0, 3, size=120),
        ("WEIGHT", 4): rng.normal(80, 5, size=120),
    }


@pytest.fixture(scope="module")
def gauss():
    """Training, holdout and independent twin draws from one 4-D standard normal."""
    rng = np.random.default_rng(3)
    return {k: rng.normal(size=(150, 4)) for k in ("train", "holdout", "twin")}


# --------------------------------------------------------------------------- fidelity


def test_marginal_identical_sets(real_values):
    real = _long(real_values, "R")
    twin = _long(real_values, "T")
    out = M.marginal_fidelity(real, twin)
    assert list(out.columns) == fidelity.MARGINAL_COLUMNS
    assert len(out) == 3
    assert (out["n_real"] == 120).all() and (out["n_twin"] == 120).all()
    np.testing.assert_allclose(out["smd"], 0.0, atol=1e-12)
    np.testing.assert_allclose(out["ks"], 0.0, atol=1e-12)
    np.testing.assert_allclose(out["ks_pvalue"], 1.0)
    np.testing.assert_allclose(out["mean_real"], out["mean_twin"])


def test_marginal_shift_gives_shift_over_sd(real_values):
    real = _long(real_values, "R")
    shifted = {k: v + 2.5 for k, v in real_values.items()}
    out = M.marginal_fidelity(real, _long(shifted, "T")).set_index(["PARAMCD", "AVISITN"])
    for key, vals in real_values.items():
        sd = np.std(vals, ddof=1)
        assert out.loc[key, "smd"] == pytest.approx(2.5 / sd, rel=1e-9)
        assert out.loc[key, "sd_real"] == pytest.approx(out.loc[key, "sd_twin"])
        assert out.loc[key, "mean_twin"] - out.loc[key, "mean_real"] == pytest.approx(2.5)
    assert (out["ks"] > 0).all()


def test_marginal_handles_missing_cells_and_nan():
    real = pd.DataFrame({"USUBJID": ["a", "b", "c", "a"], "PARAMCD": ["X", "X", "X", "Y"],
                         "AVISITN": [1, 1, 1, 1], "AVAL": [1.0, 2.0, np.nan, 5.0]})
    twin = pd.DataFrame({"USUBJID": ["t1", "t2"], "PARAMCD": ["X", "X"], "AVISITN": [1, 1],
                         "AVAL": [1.0, 2.0]})
    out = M.marginal_fidelity(real, twin).set_index("PARAMCD")
    assert out.loc["X", "n_real"] == 2  # NaN dropped
    assert out.loc["X", "smd"] == pytest.approx(0.0)
    assert out.loc["Y", "n_twin"] == 0
    assert np.isnan(out.loc["Y", "ks"]) and np.isnan(out.loc["Y", "smd"])
    with pytest.raises(ValueError, match="AVAL"):
        M.marginal_fidelity(real.drop(columns="AVAL"), twin)


def test_smd_uses_average_variance_pooling():
    real = np.array([0.0, 2.0, 4.0])  # var 4
    twin = np.array([1.0, 7.0, 13.0])  # mean 7, var 36
    assert M.standardized_mean_difference(real, twin) == pytest.approx(5 / np.sqrt(20))
    assert M.standardized_mean_difference([1, 1], [1, 1]) == 0.0
    assert np.isnan(M.standardized_mean_difference([1, 1], [2, 2]))


def test_long_to_wide_and_correlation_identical(real_values):
    wide = M.long_to_wide(_long(real_values, "R"))
    assert list(wide.columns) == ["HBA1C@4", "HBA1C@8", "WEIGHT@4"]
    assert wide.shape == (120, 3)
    res = M.correlation_distance(wide, wide.copy())
    assert res.mean_abs_diff == pytest.approx(0.0, abs=1e-12)
    assert res.frobenius == pytest.approx(0.0, abs=1e-12)
    assert res.n_pairs == 3 and res.n_columns == 3
    dw = M.dimension_wise_mean_correlation(wide, wide.copy())
    assert dw.correlation == pytest.approx(1.0)
    assert dw.mean_abs_diff == pytest.approx(0.0)


def test_correlation_distance_known_value():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(4000, 2))
    correlated = np.c_[a[:, 0], a[:, 0]]  # correlation 1
    independent = a  # correlation ~0
    res = M.correlation_distance(correlated, independent)
    r = np.corrcoef(independent.T)[0, 1]
    assert res.mean_abs_diff == pytest.approx(1 - r)
    assert res.frobenius == pytest.approx(np.sqrt(2) * (1 - r))
    assert res.difference.shape == (2, 2)


def test_dimension_wise_shift_and_degenerate_cases():
    real = pd.DataFrame({"a": [1.0, 2.0], "b": [10.0, 12.0], "c": [5.0, 5.0]})
    twin = real * 2 + 3  # affine map of the means: correlation stays 1
    assert M.dimension_wise_mean_correlation(real, twin).correlation == pytest.approx(1.0)
    one_col = M.dimension_wise_mean_correlation(real[["a"]], twin[["a"]])
    assert np.isnan(one_col.correlation) and one_col.n_dimensions == 1


def test_detection_identical_is_half_and_shift_is_high(gauss):
    X = gauss["train"]
    same = M.detection_auroc(X, X.copy(), seed=0)
    assert same.auroc == pytest.approx(0.5)  # copies share a fold: no backwards learning
    assert same.ci_low <= 0.5 <= same.ci_high
    indep = M.detection_auroc(X, gauss["twin"], seed=0)
    assert 0.35 < indep.auroc < 0.65
    assert indep.ci_low <= indep.auroc <= indep.ci_high
    assert len(indep.fold_aurocs) == 5
    shifted = M.detection_auroc(X, gauss["twin"] + 2.0, seed=0)
    assert shifted.auroc > 0.95
    assert shifted.score < 0.1


def test_detection_sees_shrunken_variance_logistic_does_not(gauss):
    shrunk = gauss["twin"] * 0.3
    assert M.detection_auroc(gauss["train"], shrunk, seed=1).auroc > 0.8
    assert M.detection_auroc(gauss["train"], shrunk, seed=1, model="logistic").auroc < 0.7


def test_detection_unequal_sizes_and_nan(gauss):
    twin = gauss["twin"][:60].copy()
    twin[::7, 1] = np.nan
    res = M.detection_auroc(gauss["train"], twin, seed=2, folds=3, model="logistic")
    assert res.n_real == 150 and res.n_twin == 60 and res.folds == 3
    assert 0.3 < res.auroc < 0.7
    with pytest.raises(ValueError):
        M.detection_auroc(gauss["train"], gauss["twin"][:1])


def test_detection_deterministic(gauss):
    a = M.detection_auroc(gauss["train"], gauss["twin"], seed=4, model="logistic")
    b = M.detection_auroc(gauss["train"], gauss["twin"], seed=4, model="logistic")
    assert a == b


# --------------------------------------------------------------------------- privacy


def test_copies_of_training_rows(gauss):
    train, holdout = gauss["train"], gauss["holdout"]
    twins = train[:100].copy()
    dcr = M.distance_to_closest_record(twins, train, holdout)
    assert dcr.twin_median == pytest.approx(0.0, abs=1e-12)
    assert dcr.ratio_median == pytest.approx(0.0, abs=1e-12)
    assert dcr.holdout_median > 0.3
    copies = M.exact_copies(twins, train)
    assert copies.n_copies == 100 and copies.fraction == 1.0
    assert copies.twin_indices == tuple(range(100))
    mia = M.membership_inference(twins, train, holdout)
    assert mia.sensitivity >= 100 / 150  # the copied members sit at distance 0
    assert mia.sensitivity < 0.75
    mia_all = M.membership_inference(train.copy(), train, holdout)
    assert mia_all.sensitivity == 1.0
    assert mia_all.advantage > 0.8 and mia_all.precision > 0.9
    nnaa = M.nn_adversarial_accuracy(train, train.copy(), holdout_X=holdout)
    assert nnaa.nnaa == 0.0  # every point's nearest cross-set neighbour is its copy
    assert nnaa.privacy_loss > 0.3


def test_independent_draws(gauss):
    train, holdout, twin = gauss["train"], gauss["holdout"], gauss["twin"]
    dcr = M.distance_to_closest_record(twin, train, holdout)
    assert 0.8 < dcr.ratio_median < 1.25
    assert dcr.twin_distances.shape == (150,)
    assert M.exact_copies(twin, train).n_copies == 0
    nnaa = M.nn_adversarial_accuracy(train, twin, holdout_X=holdout)
    assert 0.4 < nnaa.nnaa < 0.6
    assert abs(nnaa.privacy_loss) < 0.12
    mia = M.membership_inference(twin, train, holdout)
    assert mia.threshold_rule.startswith("5th percentile")
    assert abs(mia.advantage) < 0.1
    assert mia.prevalence == 0.5


def test_nnaa_far_twins_is_one(gauss):
    res = M.nn_adversarial_accuracy(gauss["train"], gauss["twin"] + 10.0)
    assert res.nnaa == 1.0 and np.isnan(res.privacy_loss)


def test_nnaa_balances_sizes(gauss):
    res = M.nn_adversarial_accuracy(gauss["train"], gauss["twin"][:40], seed=1)
    assert res.n == 40


def test_membership_user_threshold_and_exact_copy_tolerance(gauss):
    train, holdout = gauss["train"], gauss["holdout"]
    twins = train[:10] + 1e-4
    assert M.exact_copies(twins, train).n_copies == 0
    assert M.exact_copies(twins, train, tol=1e-3).n_copies == 10
    mia = M.membership_inference(twins, train, holdout, threshold=0.0)
    assert mia.sensitivity == 0.0 and np.isnan(mia.precision)
    assert mia.threshold_rule == "user-supplied"


def test_privacy_nan_imputed_with_training_means():
    train = np.array([[0.0, 0.0], [2.0, 2.0], [4.0, 10.0]])
    twin = np.array([[np.nan, 4.0]])  # imputes to (2, 4)
    dcr = M.distance_to_closest_record(twin, train, train[:1])
    assert dcr.twin_median == pytest.approx(2.0)
    assert M.exact_copies(np.array([[2.0, np.nan]]), train).n_copies == 0
    train_nan = np.array([[1.0, np.nan], [3.0, 5.0]])
    assert M.exact_copies(np.array([[1.0, 5.0]]), train_nan).n_copies == 1


# --------------------------------------------------------------------------- utility


def _outcome_model(rng, n):
    X = rng.normal(size=(n, 5))
    logit = X @ np.array([1.5, -1.0, 0.5, 0.0, 0.0])
    return X, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)


@pytest.fixture(scope="module")
def outcome_sets():
    rng = np.random.default_rng(21)
    return {k: _outcome_model(rng, n) for k, n in (("twin", 400), ("train", 300), ("test", 600))}


def test_tstr_close_to_trtr_for_twins_from_the_real_model(outcome_sets):
    (tX, ty), (rX, ry), (sX, sy) = (outcome_sets[k] for k in ("twin", "train", "test"))
    res = M.tstr_auroc(tX, ty, rX, ry, sX, sy)
    assert res.trtr > 0.8
    assert abs(res.tstr - res.trtr) < 0.03
    assert res.ratio == pytest.approx(res.tstr / res.trtr)
    assert res.reason == ""
    gbm = M.tstr_auroc(tX, ty, rX, ry, sX, sy, model="gbm")
    assert gbm.tstr > 0.7


def test_tstr_label_shuffled_twins_near_half(outcome_sets):
    (tX, ty), (rX, ry), (sX, sy) = (outcome_sets[k] for k in ("twin", "train", "test"))
    rng = np.random.default_rng(0)
    # A single shuffle gives a random direction whose AUROC can land far from 0.5 (AUROC is
    # scale-free); over shuffles it centres on 0.5.
    values = [M.tstr_auroc(tX, rng.permutation(ty), rX, ry, sX, sy).tstr for _ in range(20)]
    assert 0.4 < np.mean(values) < 0.6
    assert max(values) < M.tstr_auroc(tX, ty, rX, ry, sX, sy).trtr


def test_utility_one_class_and_labels(outcome_sets):
    (tX, ty), (rX, ry), (sX, sy) = (outcome_sets[k] for k in ("twin", "train", "test"))
    res = M.tstr_auroc(tX, np.zeros_like(ty), rX, ry, sX, sy)
    assert np.isnan(res.tstr) and np.isnan(res.ratio) and "single class" in res.reason
    assert res.trtr > 0.8
    test_one = M.tstr_auroc(tX, ty, rX, ry, sX, np.ones_like(sy))
    assert np.isnan(test_one.tstr) and np.isnan(test_one.trtr) and "test" in test_one.reason
    aug = M.augmentation_auroc(tX, ty, rX, np.zeros_like(ry), sX, sy)
    assert np.isnan(aug.real_only) and aug.augmented > 0.8 and np.isnan(aug.gain)
    labels = np.where(ty == 1, "yes", "no")  # "yes" > "no": positive class
    as_text = M.tstr_auroc(tX, labels, rX, np.where(ry == 1, "yes", "no"), sX,
                           np.where(sy == 1, "yes", "no"))
    assert as_text.tstr == pytest.approx(M.tstr_auroc(tX, ty, rX, ry, sX, sy).tstr)
    with pytest.raises(ValueError, match="binary"):
        M.tstr_auroc(tX, ty + np.arange(ty.size) % 3, rX, ry, sX, sy)


def test_augmentation_with_good_twins_does_not_hurt(outcome_sets):
    (tX, ty), (rX, ry), (sX, sy) = (outcome_sets[k] for k in ("twin", "train", "test"))
    small = slice(0, 40)
    res = M.augmentation_auroc(tX, ty, rX[small], ry[small], sX, sy)
    assert res.gain > -0.01
    assert res.gain == pytest.approx(res.augmented - res.real_only)


def test_utility_nan_features(outcome_sets):
    (tX, ty), (rX, ry), (sX, sy) = (outcome_sets[k] for k in ("twin", "train", "test"))
    tX = tX.copy()
    tX[::5, 0] = np.nan
    res = M.tstr_auroc(tX, ty, rX, ry, sX, sy)
    assert 0.7 < res.tstr <= 1.0


# --------------------------------------------------------------------------- survival


@pytest.fixture(scope="module")
def surv():
    rng = np.random.default_rng(8)
    t = rng.exponential(10, size=120)
    c = rng.exponential(25, size=120)
    return np.minimum(t, c), (t <= c).astype(int)


def test_km_identical_is_zero_and_logrank_is_null(surv):
    t, e = surv
    res = M.km_sup_distance(t, e, t.copy(), e.copy())
    assert res.sup == 0.0
    lr = M.logrank(t, e, t, e)
    assert lr.statistic == pytest.approx(0.0, abs=1e-9) and lr.p_value == pytest.approx(1.0)


def test_km_known_gap():
    # a: all die at 1 -> S drops to 0 at t=1; b: half die at 1, half at 2 -> S = 0.5 on [1, 2)
    res = M.km_sup_distance([1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 2, 2], [1, 1, 1, 1])
    assert res.sup == pytest.approx(0.5) and res.at_time == 1.0
    # common follow-up stops at 1 here; a longer horizon keeps the same maximum
    assert M.km_sup_distance([1, 1], [1, 1], [1, 2], [1, 1], horizon=2).sup == pytest.approx(0.5)


def test_km_curve_matches_lifelines_with_ties(pbc, surv):
    from lifelines import KaplanMeierFitter

    tte = pbc.tte[pbc.tte["PARAMCD"] == "DEATH"]
    rounded = (np.ceil(surv[0]), surv[1])  # many ties of events and censorings
    for t_, e_ in ((tte["AVAL"], tte["CNSR"] == 0), rounded):
        t, s = survival.km_curve(t_, e_)
        ref = KaplanMeierFitter().fit(t_, e_).survival_function_at_times(t).to_numpy()
        assert len(t) == int(np.unique(np.asarray(t_)[np.asarray(e_, bool)]).size)
        assert np.allclose(s, ref)
    assert np.array_equal(survival.km_at((t, s), [0.0, t[0], t[-1] + 1]), [1.0, s[0], s[-1]])
    assert survival.km_at((np.array([]), np.array([])), [1.0, 2.0]).tolist() == [1.0, 1.0]


def test_concordance_perfect_reversed_and_nan(surv):
    t, e = surv
    assert M.concordance(t, t, e) == pytest.approx(1.0)
    assert M.concordance(-t, t, e) == pytest.approx(0.0)
    assert M.concordance(np.ones_like(t), t, e) == pytest.approx(0.5)
    p = t.copy()
    p[0] = np.nan
    assert M.concordance(p, t, e) == pytest.approx(1.0)


def test_cox_hazard_ratio_recovers_effect():
    rng = np.random.default_rng(2)
    n = 400
    g = np.r_[np.zeros(n), np.ones(n)]
    t = rng.exponential(1.0, size=2 * n) / np.where(g == 1, 2.0, 1.0)  # hazard x2 in group 1
    res = M.cox_hazard_ratio(t, np.ones(2 * n), g)
    assert res.ci_low < 2.0 < res.ci_high
    assert 1.6 < res.hazard_ratio < 2.5 and res.p_value < 1e-6
    assert res.group_level == "1.0" and res.reference_level == "0.0"
    lr = M.logrank(t[:n], np.ones(n), t[n:], np.ones(n))
    assert lr.p_value < 1e-6


def test_logrank_with_weights_and_clusters_is_the_robust_test_of_the_patients():
    # K copies of each patient of sample a, each weighted 1/K in one cluster, are one patient:
    # the clustered test equals the robust test of the unreplicated data exactly, and that is
    # the plain log-rank up to its variance estimate
    rng = np.random.default_rng(1)
    ta, ea = rng.exponential(1.0, 50), rng.random(50) < 0.8
    tb, eb = rng.exponential(1.3, 40), rng.random(40) < 0.8
    plain = M.logrank(ta, ea, tb, eb)
    own = M.robust_logrank(np.r_[ta, tb], np.r_[ea, eb], np.r_[np.ones(50), np.zeros(40)], np.ones(90),
                           [str(i) for i in range(90)])
    copies = M.logrank(np.repeat(ta, 5), np.repeat(ea, 5), tb, eb, weights_a=np.full(250, 0.2),
                       clusters_a=np.repeat(np.arange(50), 5))
    assert copies.statistic == pytest.approx(own[0], rel=1e-9) and copies.p_value == pytest.approx(own[1], rel=1e-9)
    assert own[0] == pytest.approx(plain.statistic, rel=0.05)
    assert (copies.n_a, copies.events_a) == (50, int(ea.sum()))
    with pytest.raises(ValueError, match="one value per observation"):
        M.logrank(ta, ea, tb, eb, weights_a=np.ones(3))


def test_clustered_logrank_and_band_hold_their_level_for_twins_sharing_a_baseline():
    # a perfect generator: each of 150 patients' 5 twins are separate draws from its own curve
    # (prognosis x shared), the real arm 150 new patients; 1/K weights with the plain variance
    # rejected 0.7-2.8 % of these true nulls, unweighted 6.5-8.5 % (a review's simulation)
    rng = np.random.default_rng(7)
    n, k, reps, beta = 150, 5, 300, 1.0
    truth = float(np.mean(np.exp(-np.exp(beta * rng.normal(size=200_000)))))      # S(1)
    reject = cover = 0
    for _ in range(reps):
        x = np.repeat(rng.normal(size=n), k)
        t, c = rng.exponential(np.exp(-beta * x)), rng.uniform(0, 3, n * k)
        xr = rng.normal(size=n)
        tr, cr = rng.exponential(np.exp(-beta * xr)), rng.uniform(0, 3, n)
        w, cl = np.full(n * k, 1 / k), np.repeat(np.arange(n), k)
        reject += M.logrank(np.minimum(t, c), t <= c, np.minimum(tr, cr), tr <= cr, weights_a=w,
                            clusters_a=cl).p_value < 0.05
        km = M.clustered_km(np.minimum(t, c), t <= c, w, cl)
        row = km[km["time"] <= 1.0].iloc[-1]
        cover += row["lo"] <= truth <= row["hi"]
    assert 0.025 <= reject / reps <= 0.085, reject / reps
    assert 0.92 <= cover / reps <= 0.98, cover / reps


def test_clustered_km_with_one_patient_per_cluster_is_greenwoods():
    from lifelines import KaplanMeierFitter

    rng = np.random.default_rng(2)
    t, c = rng.exponential(1, 200), rng.uniform(0, 2, 200)
    time_, event = np.minimum(t, c), t <= c
    km = M.clustered_km(time_, event, np.ones(200), np.arange(200))
    ref = KaplanMeierFitter().fit(time_, event)
    at = km["time"].iloc[len(km) // 2]
    assert km["survival"].iloc[len(km) // 2] == pytest.approx(float(ref.survival_function_.loc[:at].iloc[-1, 0]))
    lo, hi = ref.confidence_interval_.loc[:at].iloc[-1]
    assert km["lo"].iloc[len(km) // 2] == pytest.approx(lo, abs=0.003)
    assert km["hi"].iloc[len(km) // 2] == pytest.approx(hi, abs=0.003)


def test_cox_degenerate_cases_return_reason(surv):
    t, e = surv
    one = M.cox_hazard_ratio(t, e, np.zeros_like(t))
    assert np.isnan(one.hazard_ratio) and "2 levels" in one.reason
    g = np.array(["real"] * 60 + ["twin"] * 60)
    ev = e.copy()
    ev[60:] = 0
    none = M.cox_hazard_ratio(t, ev, g)
    assert np.isnan(none.hazard_ratio) and "twin" in none.reason


def test_survival_input_validation():
    with pytest.raises(ValueError, match="negative"):
        M.km_sup_distance([-1, 2], [1, 1], [1, 2], [1, 1])
    with pytest.raises(ValueError, match="0/1"):
        M.logrank([1, 2], [2, 1], [1, 2], [1, 1])


# --------------------------------------------------------------------------- registry


def test_registry_entries_are_complete():
    assert len(M.METRICS) >= 25
    for name, info in M.METRICS.items():
        assert info.name == name
        assert info.group in registry.GROUPS
        assert info.direction in registry.DIRECTIONS
        assert info.definition.endswith(".") and info.ideal and info.reference
        module, func = info.function.rsplit(".", 1)
        mod = {"services.evaluation.metrics.fidelity": fidelity, "services.evaluation.metrics.privacy": privacy,
               "services.evaluation.metrics.utility": utility, "services.evaluation.metrics.survival": survival,
               "services.evaluation.metrics.procova": procova}[module]
        assert inspect.getdoc(getattr(mod, func))
    assert {m.group for m in M.METRICS.values()} == set(registry.GROUPS)
    assert M.metric_info("nnaa").ideal == "0.5"
    assert M.metric_info("detection_auroc").direction == "closer to 0.5"
    with pytest.raises(KeyError, match="known"):
        M.metric_info("nope")
    table = M.metrics_table()
    assert list(table.columns[:6]) == ["name", "group", "definition", "ideal", "direction",
                                       "reference"]
    assert [m.name for m in M.metrics_in_group("procova")][:1] == ["procova_rho"]


def test_public_functions_documented_and_results_serialisable(gauss):
    for name in M.__all__:
        assert inspect.getdoc(getattr(M, name)), name
    res = M.distance_to_closest_record(gauss["twin"], gauss["train"], gauss["holdout"])
    d = res.as_dict()
    assert "twin_distances" not in d and isinstance(d["ratio_median"], float)
    json.dumps(d)
    json.dumps(M.procova_plan(0.5, 1.0, 0.6, n_rho=100).as_dict())


def test_metrics_package_does_not_import_streamlit():
    import pathlib
    import re

    for path in pathlib.Path(fidelity.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+streamlit", text, re.MULTILINE), path.name


def test_clustered_km_runs_flat_to_the_last_follow_up_and_drops_missing_times():
    km = M.clustered_km([1, 2, np.nan, 5], [1, 0, 1, 0], [1, 1, 1, 1], ["a", "b", "c", "d"])
    assert list(km["time"]) == [0.0, 1.0, 5.0]
    assert km["survival"].iloc[1] == pytest.approx(2 / 3) and km["survival"].iloc[2] == pytest.approx(2 / 3)
