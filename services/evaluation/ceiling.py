"""How far below the baseline ANCOVA can a twin generator get on a trial? The known-model ceiling.

The backtest's accuracy figure is the RMSE of the twins' mean over that of a per-visit
`value ~ baseline` regression fitted on the knowledge base (`services/evaluation/backtest.py`).
A ratio well below 1 needs information beyond the own baseline (the other parameters'
baselines, ADSL covariates, a non-linear baseline effect) or much less estimation noise than
the reference's. How much there is to gain depends on the trial, not the generator; this
module estimates it on the very held-out patients and splits of a backtest.

For each parameter and visit, a model class is fitted by least squares to the held-out
patients themselves (every fold together) and the mean of e_i^2 / (1 - h_ii) over them (the
leverage-corrected residual mean square, as in the HC2 variance: unbiased for the average error
variance when the class holds the true conditional mean, the design taken as fixed and the
variance constant, and nearly so when the variance grows with the baseline, where a plain
SSE / (n - p) is 10-20 % low)
estimates the mean squared error of the class's *population-best* predictor: what a generator
that knew the best coefficients from unlimited training data would reach in expectation; a
real one learns from a finite knowledge base and does worse. Divided by the reference's squared
error on the same values and pooled over visits as the backtest pools them, it gives the
**ceiling ratio**. Classes, each holding the one before:

- ``baseline``: intercept + the parameter's own baseline (the reference's model, here with
  unlimited data);
- ``facts``: + every parameter's baseline and the ADSL covariates as the local generator
  encodes them (`BaselineFeatures`): the generator's own information;
- ``flexible``: + any function of an own baseline that takes at most 10 values (a 1-5 score,
  a 0/1 status: one indicator per value), else its square, cube and log(1 + baseline) when it
  is never negative (a log-scale relation such as a liver enzyme's).

A ceiling is a bound for predictors in its class only: a generator using interactions or
relations the class cannot express can go below it, and any result can by chance; when the
class misses the true conditional mean the estimate is that of the class's best fit plus a
part of the misfit. `learnt_ratios` fits the same classes on the knowledge base's arm instead
(what a simple learner achieves): far above the ceiling means estimation error, below the
twins a relation the twins miss.

`ceiling_ratios(trial, pairs)`: per parameter the classes' ratios of one backtest
(bench/backtest.py prints their mean and 2.5-97.5 % range over its splits beside the twins');
`ceiling_card`: the lowest class ceiling with a 95 % bootstrap interval over patients and the
paired interval of the twins' ratio minus it, for the validation card (the Validate page and the
report), so a user sees how much room the trial leaves above the baseline ANCOVA, not only
where the twins stand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.generation.local import BaselineFeatures

CLASSES = ("baseline", "facts", "flexible")
MAX_LEVELS = 10


def error_terms(y: np.ndarray, X: np.ndarray) -> np.ndarray | None:
    """Per value, e_i^2 / (1 - h_ii) of the least-squares fit of y on [1, X]: each has the
    expectation of the class's best predictor's squared error at that patient when the class
    holds the true conditional mean and the error variance is constant (the HC2 correction;
    nearly so when it is not); their mean estimates the class's expected squared error. A value fitted exactly (h_ii = 1) gets
    the mean of the others. None when fewer than one degree of freedom is left."""
    X = np.column_stack([np.ones(len(y)), X if X.size else np.zeros((len(y), 0))])
    X = X[:, (np.ptp(X, axis=0) > 0) | (np.arange(X.shape[1]) == 0)]
    M = np.linalg.pinv(X.T @ X)
    h = np.einsum("ij,jk,ik->i", X, M, X)
    if len(y) - float(h.sum()) < 1 - 1e-9:
        return None
    e = y - X @ (M @ (X.T @ y))
    ok = h < 1 - 1e-9
    terms = np.full(len(y), np.nan)
    terms[ok] = e[ok] ** 2 / (1 - h[ok])
    return np.where(ok, terms, np.nanmean(terms) if ok.any() else 0.0)


def known_model_mse(y: np.ndarray, X: np.ndarray) -> float | None:
    """The class's expected squared error estimated from these values' own fit: the mean of
    `error_terms` (= statsmodels' mean of resid^2 / (1 - hat))."""
    terms = error_terms(y, X)
    return None if terms is None else float(terms.mean())


def shape_terms(baseline: np.ndarray) -> np.ndarray:
    """Non-linear terms of an own baseline: indicators of its values when it takes at most 10,
    else its square and cube (standardised) and log(1 + baseline) when never negative."""
    base = np.asarray(baseline, float)[:, None]
    levels = np.unique(base[:, 0])
    if len(levels) <= MAX_LEVELS:
        return (base == levels[None, 1:]).astype(float)
    z = (base - base.mean()) / (base.std() or 1.0)
    return np.column_stack([z ** 2, z ** 3] + ([np.log1p(base)] if base.min() >= 0 else []))


def designs(baseline: np.ndarray, facts: np.ndarray) -> dict[str, np.ndarray]:
    """The classes' design matrices (no intercept) of one visit's patients; the own baseline
    comes first (`learnt_ratios` lets only it extrapolate)."""
    base = np.asarray(baseline, float)[:, None]
    return {"baseline": base, "facts": np.column_stack([base, facts]),
            "flexible": np.column_stack([base, facts, shape_terms(baseline)])}


def _usable(pairs: pd.DataFrame, extra: tuple = ()) -> pd.DataFrame:
    need = ["USUBJID", "PARAMCD", "AVISITN", *extra, "OBSERVED", "PREDICTED", "REFERENCE", "BASELINE"]
    if not set(need) <= set(pairs.columns):           # a trial with events only
        return pd.DataFrame(columns=need)
    num = need[3 + len(extra):]
    p = pairs.dropna(subset=num)
    return p[np.isfinite(p[num].to_numpy(float)).all(axis=1)]


def baseline_facts(trial: Trial, ids) -> pd.DataFrame:
    """Every parameter's baseline and the ADSL covariates of `ids` as the local generator
    encodes them (standardised, missing values at the mean with indicators, categories seen at
    least 3 times), indexed by USUBJID."""
    ids = [str(u) for u in ids]
    feats = BaselineFeatures(list(trial.parameters), trial.covariates).fit(trial, ids)
    return pd.DataFrame(feats.transform(trial, ids), index=ids)


def _visit_groups(trial: Trial, pairs: pd.DataFrame, classes) -> tuple[np.ndarray, dict]:
    """(patients, PARAMCD -> list of one dict of arrays per visit): each visit's squared errors
    of the twins and the reference, the classes' error terms and its patients' positions;
    visits where a class has no degree of freedom left are left out."""
    p = _usable(pairs)
    ids = p["USUBJID"].astype(str).unique()
    if not len(p):
        return ids, {}
    facts = baseline_facts(trial, ids)
    pos = {u: i for i, u in enumerate(ids)}
    out: dict[str, list] = {}
    for (paramcd, _), g in p.groupby(["PARAMCD", "AVISITN"], sort=False):
        if len(g) < 3:
            continue
        who = g["USUBJID"].astype(str)
        y = g["OBSERVED"].to_numpy(float)
        X = designs(g["BASELINE"].to_numpy(float), facts.loc[who].to_numpy(float))
        terms = {c: error_terms(y, X[c]) for c in classes}
        if any(t is None for t in terms.values()):
            continue
        out.setdefault(paramcd, []).append({
            "twins": (g["PREDICTED"].to_numpy(float) - y) ** 2,
            "reference": (g["REFERENCE"].to_numpy(float) - y) ** 2,
            "at": np.array([pos[u] for u in who]), **terms})
    return ids, out


def _ratios(groups: dict, classes, weights: np.ndarray | None = None) -> pd.DataFrame:
    """Per parameter, the twins' and the classes' RMSE ratios to the reference, pooled over
    visits; `weights`: each patient's count in a bootstrap resample."""
    rows = []
    for paramcd, visits in groups.items():
        sums = {k: sum(float(v[k].sum() if weights is None else weights[v["at"]] @ v[k]) for v in visits)
                for k in ("twins", "reference", *classes)}
        if sums["reference"] > 0:
            rows.append({"PARAMCD": paramcd, **{k: float(np.sqrt(x / sums["reference"]))
                                                for k, x in sums.items() if k != "reference"}})
    return pd.DataFrame(rows, columns=["PARAMCD", "twins", *classes])


def ceiling_ratios(trial: Trial, pairs: pd.DataFrame, classes=CLASSES) -> pd.DataFrame:
    """Per parameter of one backtest (`pairs`: one row per held-out patient x parameter x visit):
    the twins' RMSE ratio vs the reference regression and each class's ceiling ratio, on the
    values with a baseline at visits where every class has a degree of freedom left, pooled over
    visits by sums of squared errors (error terms) as the backtest pools them."""
    return _ratios(_visit_groups(trial, pairs, classes)[1], classes)


def ceiling_card(trial: Trial, pairs: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per parameter: the lowest class ceiling (the classes nest, but their estimates need not:
    a large class on few patients pays its leverages) with a 95 % percentile bootstrap interval
    over patients and, from the same resamples, the interval of the twins' ratio minus it
    (columns PARAMCD, ceiling_class, ceiling, ceiling_lo, ceiling_hi, gap, gap_lo, gap_hi), for
    the validation card. The resamples re-weigh each patient's error terms of the one fit, as
    the card's RMSE ratio re-weighs its squared errors (the class is not refitted: duplicated
    patients would make a refit's leverages wrong)."""
    cols = ["PARAMCD", "ceiling_class", "ceiling", "ceiling_lo", "ceiling_hi", "gap", "gap_lo", "gap_hi"]
    ids, groups = _visit_groups(trial, pairs, CLASSES)
    point = _ratios(groups, CLASSES).set_index("PARAMCD")
    if not len(point):
        return pd.DataFrame(columns=cols)
    best = point[list(CLASSES)].idxmin(axis=1)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot)
    boots = [_ratios(groups, CLASSES, w).set_index("PARAMCD") for w in draws]
    chosen = [pd.Series([b.loc[p, best[p]] for p in point.index], index=point.index) for b in boots]
    ceil = pd.concat(chosen, axis=1)
    gap = pd.concat([b.loc[point.index, "twins"] - c for b, c in zip(boots, chosen)], axis=1)
    value = pd.Series([point.loc[p, best[p]] for p in point.index], index=point.index)
    out = pd.DataFrame({"ceiling_class": best, "ceiling": value, "gap": point["twins"] - value,
                        "ceiling_lo": ceil.quantile(0.025, axis=1), "ceiling_hi": ceil.quantile(0.975, axis=1),
                        "gap_lo": gap.quantile(0.025, axis=1), "gap_hi": gap.quantile(0.975, axis=1)})
    return out.reset_index()[cols]


def _ridge_loo(X: np.ndarray, y: np.ndarray, linear: int | None = None,
               penalties=(0.1, 1.0, 10.0, 100.0, 1000.0)):
    """Ridge on standardised columns (intercept free), the penalty chosen by its closed-form
    leave-one-out error; returns a predict function. Columns from `linear` on (a cubic's
    higher powers, covariates) are held to their training range when predicting, so that a
    cubic does not explode beyond it; the first ones (the baseline itself) extrapolate."""
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    lo, hi = X.min(axis=0), X.max(axis=0)
    held = np.arange(X.shape[1]) >= (X.shape[1] if linear is None else linear)
    A = np.column_stack([np.ones(len(y)), (X - mu) / sd])
    best = None
    for lam in penalties:
        P = lam * np.eye(A.shape[1])
        P[0, 0] = 0.0
        M = np.linalg.pinv(A.T @ A + P)
        beta = M @ A.T @ y
        h = np.einsum("ij,jk,ik->i", A, M, A)
        loo = np.mean(((y - A @ beta) / np.maximum(1 - h, 1e-6)) ** 2)
        if best is None or loo < best[0]:
            best = (loo, beta)
    beta = best[1]

    def predict(Z: np.ndarray) -> np.ndarray:
        Z = np.where(held, np.clip(Z, lo, hi), Z)
        return np.column_stack([np.ones(len(Z)), (Z - mu) / sd]) @ beta

    return predict


def learnt_ratios(trial: Trial, pairs: pd.DataFrame, classes=CLASSES) -> pd.DataFrame:
    """Per parameter of one k-fold backtest: the RMSE ratio of each class *learnt* the way a
    generator must, from the knowledge base's arm (the other folds' held-out patients: in a
    k-fold backtest of one arm they are that arm's knowledge base), by ridge with a
    leave-one-out penalty (every column but the own baseline held to its training range, so
    that a cube does not explode beyond it). Beside the ceiling it tells estimation error
    (learnt well above the ceiling) from a relation the twins miss (learnt below the twins)."""
    p = _usable(pairs, ("FOLD",))
    if not len(p):
        return pd.DataFrame(columns=["PARAMCD", *classes])
    facts = baseline_facts(trial, p["USUBJID"].astype(str).unique())
    sse: dict[str, dict[str, float]] = {}
    for (paramcd, _), g in p.groupby(["PARAMCD", "AVISITN"], sort=False):
        X = designs(g["BASELINE"].to_numpy(float), facts.loc[g["USUBJID"].astype(str)].to_numpy(float))
        fold, y = g["FOLD"].to_numpy(), g["OBSERVED"].to_numpy(float)
        acc = sse.setdefault(paramcd, dict.fromkeys(("reference", *classes), 0.0))
        for f in np.unique(fold):
            test, train = fold == f, fold != f
            if train.sum() < 5:
                continue
            acc["reference"] += float(np.sum((g["REFERENCE"].to_numpy(float)[test] - y[test]) ** 2))
            for c in classes:
                fit = _ridge_loo(X[c][train], y[train], linear=1)
                acc[c] += float(np.sum((fit(X[c][test]) - y[test]) ** 2))
    rows = [{"PARAMCD": k, **{c: float(np.sqrt(v[c] / v["reference"])) for c in classes}}
            for k, v in sse.items() if v["reference"] > 0]
    return pd.DataFrame(rows, columns=["PARAMCD", *classes])
