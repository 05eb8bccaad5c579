"""The known-model ceiling of the backtest's RMSE ratio: known answers (statsmodels' leverages,
a doubled data set, the error variance under a known truth), the verdicts, and the card on the
PBC demo."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from services.evaluation.backtest import backtest
from services.evaluation.ceiling import (
    CLASSES,
    ceiling_ratios,
    designs,
    information_card,
    known_model_mse,
    learnt_ratios,
)
from services.evaluation.validation import bootstrap_card, information_verdict
from services.reporting.tables import validation_card_table


def _design(n=60, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.lognormal(size=n)
    return np.column_stack([x, rng.integers(0, 2, size=n)])


def test_known_model_mse_is_the_leverage_corrected_residual_mean_square():
    X = _design()
    y = 1.0 + 2.0 * X[:, 0] + 0.5 * X[:, 1] + np.random.default_rng(1).normal(scale=1.5, size=len(X))
    fit = sm.OLS(y, sm.add_constant(X)).fit()
    h = fit.get_influence().hat_matrix_diag
    assert known_model_mse(y, X) == pytest.approx(np.mean(fit.resid ** 2 / (1 - h)), rel=1e-10)


def test_estimate_is_the_mean_error_variance_under_a_known_truth():
    # fixed design, new noise each time; the error SD grows with the skewed baseline (a plain
    # SSE / (n - p) is ~10 % low here: the noisy high-leverage patients are fitted closely)
    n = 40
    X = _design(n=n, seed=5)
    sd = 0.5 * X[:, 0] / X[:, 0].mean()
    rng = np.random.default_rng(7)
    est = [known_model_mse(1 + 2 * X[:, 0] + sd * rng.normal(size=n), X) for _ in range(4000)]
    assert np.mean(est) == pytest.approx(np.mean(sd ** 2), rel=0.03)
    plain = [sm.OLS(1 + 2 * X[:, 0] + sd * rng.normal(size=n), sm.add_constant(X)).fit().mse_resid
             for _ in range(4000)]
    assert np.mean(plain) < 0.95 * np.mean(sd ** 2)
    assert known_model_mse(np.arange(3.0), np.arange(3.0)[:, None] ** [1, 2]) is None   # no dof left


def test_flexible_class_expresses_any_function_of_a_few_valued_baseline():
    base = np.array([1, 2, 3, 4, 5] * 6, float)
    y = np.array([0.0, 3.0, -1.0, 2.0, 5.0] * 6)          # not linear in the baseline, no noise
    X = designs(base, np.zeros((30, 0)), levels=np.unique(base))
    assert known_model_mse(y, X["flexible"]) == pytest.approx(0.0, abs=1e-12)
    assert known_model_mse(y, X["baseline"]) > 1.0


def test_information_verdicts():
    assert information_verdict(0.86, 0.80, 0.93) == ("more than the own baseline: the other baselines and "
                                                     "covariates could bring the error to 0.86 of its, at best")
    assert information_verdict(0.97, 0.92, 1.01).startswith("nothing clear beyond the own baseline")
    assert information_verdict(0.97, float("nan"), 1.01) == "not estimated"


@pytest.fixture(scope="module")
def result(pbc):
    return backtest(pbc, folds=2, twins_per_patient=10, seed=1)


def test_ceilings_on_pbc(pbc, result):
    tab = ceiling_ratios(pbc, result.pairs).set_index("PARAMCD")
    assert set(tab.index) == set(result.parameters.PARAMCD)
    # the twins' ratio on the values it uses (those with a baseline, at visits where every class
    # has degrees of freedom left) is the backtest's pooled ratio but for those few values
    par = result.parameters.set_index("PARAMCD")
    assert tab["twins"].to_numpy() == pytest.approx(par.loc[tab.index, "rmse_ratio"].to_numpy(), abs=0.02)
    assert ((tab[list(CLASSES)] > 0.3) & (tab[list(CLASSES)] < 1.2)).all().all()
    # the other labs' baselines inform prothrombin time; the liver enzyme's relation is log-shaped
    assert tab.loc["PT", "facts"] < tab.loc["PT", "baseline"] - 0.05
    assert tab.loc["ALP", "flexible"] < tab.loc["ALP", "facts"] - 0.05


def test_card_shows_the_information_gain_with_its_interval(pbc, result):
    card = bootstrap_card(result, n_boot=100, trial=pbc).set_index("PARAMCD")
    point = ceiling_ratios(pbc, result.pairs).set_index("PARAMCD")
    assert card["gain"].to_dict() == pytest.approx((point["facts"] / point["baseline"]).to_dict())
    assert (card.gain_lo < card.gain).all() and (card.gain < card.gain_hi).all()
    # alkaline phosphatase: the other labs' baselines hold clear information (0.88 [0.82, 0.97]);
    # bilirubin: none shown (1.04 [0.97, 1.14]); the verdicts say so
    assert card.loc["ALP", "gain_hi"] < 1 and card.loc["ALP", "information"].startswith("more than the own")
    assert card.loc["BILI", "gain_lo"] < 1 < card.loc["BILI", "gain_hi"]
    assert card.loc["BILI", "information"].startswith("nothing clear beyond the own baseline")
    shown = validation_card_table(card.reset_index())
    assert list(shown.columns[:4]) == ["parameter", "patients", "RMSE ratio [95 % CI]",
                                       "information beyond the own baseline [95 % CI]"]
    assert "baseline data" in shown.columns
    no_interval = card.reset_index().assign(gain_lo=np.nan, gain_hi=np.nan)   # too few patients to resample
    assert "nan" not in " ".join(validation_card_table(no_interval).iloc[:, 3])
    assert "gain" not in bootstrap_card(result, n_boot=50)           # without the trial: as before
    assert information_card(pbc, result.pairs.iloc[:0]).empty           # nothing to estimate


def test_a_sparse_parameter_left_out_of_a_resample_gives_no_error(pbc, result):
    # a parameter measured in a handful of patients is absent from many resamples: its interval
    # comes from the others (NaN draws are skipped), and nothing raises
    few = result.pairs[result.pairs.PARAMCD == "CHOL"]
    sparse = few[few.USUBJID.isin(few.USUBJID.unique()[:6])].assign(PARAMCD="SPARSE")
    card = information_card(pbc, pd.concat([result.pairs, sparse], ignore_index=True), n_boot=50)
    assert "PT" in set(card.PARAMCD)


def test_classes_learnt_from_the_knowledge_base_sit_above_their_ceiling(pbc, result):
    # the baseline class learnt from the other fold is the reference regression itself (up to the
    # ridge's small penalty), so its ratio is 1; every learnt class pays its estimation error
    learnt = learnt_ratios(pbc, result.pairs).set_index("PARAMCD")
    ceiling = ceiling_ratios(pbc, result.pairs).set_index("PARAMCD")
    assert learnt["baseline"].median() == pytest.approx(1.0, abs=0.02)
    assert learnt["baseline"].between(0.8, 1.1).all()    # CHOL 0.83: a penalty tames its outliers
    assert (learnt[list(CLASSES)] < 1.25).all().all()              # the cube does not explode
    assert (learnt.loc[ceiling.index, "flexible"] > ceiling["flexible"]).mean() >= 6 / 7
