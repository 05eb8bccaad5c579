"""The backtest protocol on real trials: cross-fitting, the tables it returns, the reference
models, and that the local generator meets sensible quality bounds."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from services.evaluation.backtest import (
    BacktestResult,
    _twin_scores,
    backtest,
    endpoint_visit,
)
from services.retrieval.retriever import ExactRetriever

FAST = {"retriever_factory": ExactRetriever}


@pytest.fixture(scope="module")
def pbc_result(pbc) -> BacktestResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return backtest(pbc, folds=2, twins_per_patient=10, seed=0, generator_settings=FAST)


def test_every_held_out_patient_is_predicted_once(pbc, pbc_result):
    placebo = set(pbc.subjects.loc[pbc.subjects["ARM"] == "Placebo", "USUBJID"])
    pairs = pbc_result.pairs
    assert set(pairs["USUBJID"]) <= placebo
    fold_of = pairs.groupby("USUBJID")["FOLD"].nunique()
    assert (fold_of == 1).all() and set(pairs["FOLD"]) == {1, 2}
    assert not pairs.duplicated(["USUBJID", "PARAMCD", "AVISITN"]).any()
    # observed = the real value at that visit
    real = pbc.visit_values.set_index(["USUBJID", "PARAMCD", "AVISITN"])["AVAL"]
    got = pairs.set_index(["USUBJID", "PARAMCD", "AVISITN"])["OBSERVED"]
    assert np.allclose(got.to_numpy(), real.loc[got.index].to_numpy())
    assert (pairs["N_TWINS"] == 10).all()
    assert (pairs["Q10"] <= pairs["PREDICTED"]).all() and (pairs["PREDICTED"] <= pairs["Q90"]).all()


def test_tables_and_summary(pbc_result):
    v, p, t, s = pbc_result.visits, pbc_result.parameters, pbc_result.tte, pbc_result.summary
    assert set(p["PARAMCD"]) == {"ALB", "ALP", "AST", "BILI", "CHOL", "PLAT", "PT"}
    assert {"rmse_ratio", "coverage", "sd_ratio", "n"} <= set(v.columns)
    assert v["coverage"].between(0, 1).all() and (v["rmse_ratio"] > 0).all()
    assert list(t["PARAMCD"]) == ["DEATH", "DTHTX"]
    assert t["cindex_twins"].between(0.5, 1).all() and t["cindex_cox"].between(0.5, 1).all()
    assert (t["km_sup_twins"] > 0).all() and (t["km_sup_reference"] > 0).all()
    for key in ("rmse_ratio_median", "coverage", "rho", "endpoint", "verdicts", "accuracy_met",
                "calibration_met", "tte_met"):
        assert key in s
    assert s["endpoint"]["paramcd"] == "BILI" and s["endpoint"]["avisitn"] == 24
    assert 0.3 < s["rho"] < 1
    assert any(line.startswith("Accuracy") for line in s["verdicts"])
    assert any(line.startswith("Calibration") for line in s["verdicts"])
    assert pbc_result.timings["twins"] == 154 * 10
    # the PROCOVA verdict says what the twins add beyond the baseline ANCOVA, the partial
    # correlation by hand (residuals of score and outcome on the baseline), not only rho^2
    pr = pbc_result.pairs
    g = pr[(pr["PARAMCD"] == "BILI") & (pr["AVISITN"] == 24)].dropna(subset=["PREDICTED", "OBSERVED", "BASELINE"])
    res = [np.polynomial.polynomial.polyfit(g["BASELINE"], g[c], 1) for c in ("PREDICTED", "OBSERVED")]
    e_p, e_o = (g[c] - np.polynomial.polynomial.polyval(g["BASELINE"], r) for c, r in zip(("PREDICTED", "OBSERVED"), res))
    assert s["rho_partial"] == pytest.approx(float(np.corrcoef(e_p, e_o)[0, 1]), abs=1e-9)
    line = next(v for v in s["verdicts"] if v.startswith("PROCOVA"))
    assert f"vs an unadjusted analysis ~ {s['rho'] ** 2:.0%}" in line
    assert f"beyond the baseline ANCOVA ~ {s['rho_partial'] ** 2:.0%}" in line


def test_local_generator_quality_on_pbc(pbc_result):
    """Loose bounds (2 folds, 10 twins, one split): the twins' mean predicts about as well as
    the baseline regression, intervals are roughly calibrated, the twins' survival curve is
    near the held-out one and ranks patients like a Cox model."""
    s, t = pbc_result.summary, pbc_result.tte
    assert s["rmse_ratio_median"] < 1.05
    assert 0.7 < s["coverage"] < 0.92
    assert (pbc_result.visits["sd_ratio"].median()) == pytest.approx(1.0, abs=0.25)
    assert (t["km_sup_twins"] < 0.25).all()
    assert (t["cindex_twins"] > t["cindex_cox"] - 0.08).all()


def test_reference_regression_is_the_per_visit_baseline_ols(pbc, pbc_result):
    pairs = pbc_result.pairs
    g = pairs[(pairs["PARAMCD"] == "ALB") & (pairs["AVISITN"] == 12) & (pairs["FOLD"] == 1)]
    held = set(pairs.loc[pairs["FOLD"] == 1, "USUBJID"])
    kb = pbc.subset([u for u in pbc.subjects["USUBJID"] if u not in held])
    vv = kb.visit_values
    y = vv[(vv["ARM"] == "Placebo") & (vv["PARAMCD"] == "ALB") & (vv["AVISITN"] == 12)].set_index("USUBJID")["AVAL"]
    x = kb.baseline.loc[y.index, "ALB"]
    slope, icpt = np.polyfit(x, y, 1)
    expected = icpt + slope * pbc.baseline.loc[g["USUBJID"], "ALB"].to_numpy()
    assert np.allclose(g["REFERENCE"].to_numpy(), expected)


def test_small_trials_and_cdisc_pilot(demo_trials, pilot):
    for trial in [t for t in demo_trials if t.name in ("btheb", "epilepsy")] + [pilot]:
        res = backtest(trial, folds=2, twins_per_patient=10, seed=1, generator_settings=FAST)
        assert res.tte.empty and res.summary["tte_met"] is None
        assert res.summary["rmse_ratio_median"] < 1.1, trial.name
        assert 0.6 < res.summary["coverage"] < 0.95, trial.name
        assert res.summary["rho"] is not None and res.summary["rho"] > 0.3, trial.name
        if trial.name == "cdiscpilot01":   # DIABP: the twins predict it no better than its baseline does
            line = next(v for v in res.summary["verdicts"] if v.startswith("PROCOVA"))
            assert res.summary["rho_partial"] < 0.1 and "beyond the baseline ANCOVA" in line


def test_folds_and_progress(demo_trials):
    btheb = next(t for t in demo_trials if t.name == "btheb")
    calls = []
    res = backtest(btheb, folds=3, twins_per_patient=5, seed=0, generator_settings=FAST,
                   progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 3), (2, 3), (3, 3)] and set(res.pairs["FOLD"]) == {1, 2, 3}
    with pytest.raises(ValueError, match="not an arm"):
        backtest(btheb, arm="Nope")
    with pytest.raises(ValueError, match="folds"):
        backtest(btheb, folds=1)


def test_endpoint_visit(pbc, pilot):
    assert endpoint_visit(pbc) == ("BILI", 24.0)
    # no endpoint in trial.toml: last visit of the first parameter seen in >= half its busiest
    p, v = endpoint_visit(pilot)
    sched = pilot.schedule(p)
    busiest = max(s.n_subjects for s in sched)
    assert p == pilot.longitudinal_parameters[0]
    assert v == max(s.avisitn for s in sched if s.n_subjects >= busiest / 2)


def test_twin_score_is_the_log_expected_over_observed_events_by_hand():
    # pooled twins at 1 (event), 2 (event), 3 (censored), 4 (event): Nelson-Aalen 1/4 at 1,
    # 1/4 + 1/3 at 2, unchanged at 3, + 1 at 4.
    # source a (2 and 4, both events): expected 7/12 + 19/12 = 13/6, observed 2
    # source b (3 censored, 1 event): expected 7/12 + 1/4 = 5/6, observed 1
    tw = pd.DataFrame({"SRCSUBJID": ["a", "a", "b", "b"], "AVAL": [2.0, 4.0, 3.0, 1.0], "CNSR": [0, 0, 1, 0]})
    got = _twin_scores(tw)
    assert got["a"] == pytest.approx(np.log((13 / 6 + 0.5) / 2.5))
    assert got["b"] == pytest.approx(np.log((5 / 6 + 0.5) / 1.5))
    # expected events sum to the observed ones (Nelson-Aalen's martingale identity), ties included
    tied = pd.DataFrame({"SRCSUBJID": list("aabbcc"), "AVAL": [1.0, 2, 2, 2, 5, 3], "CNSR": [0, 1, 0, 0, 1, 0]})
    e = tied["CNSR"].to_numpy() == 0
    expected = np.exp(_twin_scores(tied)) * (tied.groupby("SRCSUBJID")["CNSR"].apply(lambda c: (c == 0).sum()) + 0.5) - 0.5
    assert expected.sum() == pytest.approx(e.sum())
    # a source whose twins all die early ranks below one whose twins live long
    far = pd.DataFrame({"SRCSUBJID": list("aaabbb"), "AVAL": [1.0, 2, 3, 7, 8, 9], "CNSR": [0, 0, 0, 1, 0, 1]})
    s = _twin_scores(far)
    assert s["a"] < s["b"]


def test_backtest_leaves_nothing_in_the_patient_index(demo_trials):
    # fold knowledge bases are transient: no Chroma collection per fold and seed
    from services.retrieval.index import get_client

    epilepsy = next(t for t in demo_trials if t.name == "epilepsy")
    before = {c.name for c in get_client().list_collections()}
    res = backtest(epilepsy, folds=2, twins_per_patient=3, seed=11)
    assert res.visits["n"].sum() > 0
    assert {c.name for c in get_client().list_collections()} == before
