"""The known-model ceiling of the backtest's RMSE ratio: known answers (statsmodels, a doubled
data set, an unbiased error under a known truth) and the card on the PBC demo."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

from services.evaluation.backtest import backtest
from services.evaluation.ceiling import (
    CLASSES,
    ceiling_card,
    ceiling_ratios,
    designs,
    known_model_mse,
)
from services.evaluation.validation import bootstrap_card
from services.reporting.tables import validation_card_table


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.normal(size=n), rng.integers(0, 2, size=n)])
    y = 1.0 + 2.0 * X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=1.5, size=n)
    return X, y


def test_known_model_mse_is_statsmodels_residual_mean_square():
    X, y = _data()
    fit = sm.OLS(y, sm.add_constant(X)).fit()
    assert known_model_mse(y, X) == pytest.approx(fit.mse_resid, rel=1e-10)


def test_a_doubled_data_set_gives_the_same_estimate():
    # a bootstrap draw counting every patient twice is the same data: the copies' residuals are
    # not independent, so the degrees of freedom are 2n - 2p, not 2n - p
    X, y = _data(n=25, seed=3)
    assert known_model_mse(y, X, np.full(len(y), 2.0)) == pytest.approx(known_model_mse(y, X), rel=1e-10)


def test_weighted_estimate_is_unbiased_under_a_known_truth():
    # fixed design and bootstrap counts, new noise each time: E[estimate] = sigma^2 = 2.25
    X, _ = _data(n=40, seed=5)
    w = np.random.default_rng(6).multinomial(40, np.full(40, 1 / 40)).astype(float)
    rng = np.random.default_rng(7)
    est = [known_model_mse(1 + 2 * X[:, 0] + rng.normal(scale=1.5, size=40), X, w) for _ in range(4000)]
    assert np.mean(est) == pytest.approx(2.25, rel=0.03)
    assert known_model_mse(np.arange(3.0), np.arange(3.0)[:, None] ** [1, 2]) is None   # no dof left


def test_flexible_class_expresses_any_function_of_a_few_valued_baseline():
    base = np.array([1, 2, 3, 4, 5] * 6, float)
    y = np.array([0.0, 3.0, -1.0, 2.0, 5.0] * 6)          # not linear in the baseline, no noise
    X = designs(base, np.zeros((30, 0)))
    assert known_model_mse(y, X["flexible"]) == pytest.approx(0.0, abs=1e-12)
    assert known_model_mse(y, X["baseline"]) > 1.0


@pytest.fixture(scope="module")
def result(pbc):
    return backtest(pbc, folds=2, twins_per_patient=10, seed=1)


def test_ceilings_on_pbc_are_ordered_by_class_and_reproduce_the_twins_ratio(pbc, result):
    tab = ceiling_ratios(pbc, result.pairs).set_index("PARAMCD")
    assert set(tab.index) == set(result.parameters.PARAMCD)
    # the twins' ratio on the values it uses (those with a baseline, at visits where every class
    # has degrees of freedom left) is the backtest's pooled ratio but for those few values
    par = result.parameters.set_index("PARAMCD")
    assert tab["twins"].to_numpy() == pytest.approx(par.loc[tab.index, "rmse_ratio"].to_numpy(), abs=0.01)
    assert ((tab[list(CLASSES)] > 0.3) & (tab[list(CLASSES)] < 1.2)).all().all()
    # the liver enzyme's log-shaped relation: the flexible class goes well below the linear ones
    assert tab.loc["ALP", "flexible"] < tab.loc["ALP", "covariates"] - 0.05


def test_card_shows_the_ceiling_with_an_interval(pbc, result):
    card = bootstrap_card(result, n_boot=100, trial=pbc)
    assert (card.ceiling_lo <= card.ceiling).all() and (card.ceiling <= card.ceiling_hi).all()
    alone = ceiling_card(pbc, result.pairs, n_boot=100).set_index("PARAMCD")
    assert card.set_index("PARAMCD")["ceiling"].to_dict() == pytest.approx(alone["ceiling"].to_dict())
    shown = validation_card_table(card)
    assert {"best achievable ratio [95 % CI]", "room"} <= set(shown.columns)
    assert all(r.startswith(("little to gain", "the twins are within", "room left")) for r in card["room"])
    # without the trial the card is as before (no covariates to use)
    assert "ceiling" not in bootstrap_card(result, n_boot=50)
