"""How far below the baseline ANCOVA can a twin generator get on a trial? The known-model ceiling.

The backtest's accuracy figure is the RMSE of the twins' mean over that of a per-visit
`value ~ baseline` regression fitted on the knowledge base (`services/evaluation/backtest.py`).
A ratio below 1 needs information beyond the own baseline (the other parameters' baselines,
ADSL covariates, a non-linear baseline effect) or less estimation noise than the reference's
(which learns from part of one arm). How much there is to gain depends on the trial, not the
generator; this module estimates it on the very held-out patients and splits of a backtest.

For each parameter and visit, a model class is fitted by least squares to the held-out
patients themselves (every fold together) and the mean of e_i^2 / (1 - h_ii) over them (the
leverage-corrected residual mean square, as in the HC2 variance: unbiased for the average error
variance when the class holds the true conditional mean, the design taken as fixed and the
variance constant, and nearly so when the variance grows with the baseline, where a plain
SSE / (n - p) is 10-20 % low) estimates the mean squared error of the class's
*population-best* predictor: what a model of that class would reach with unlimited training
data. Pooled over visits and divided by the reference's realised squared error on the same
values, it gives the class's **ceiling ratio**. Classes, each holding the one before:

- ``baseline``: intercept + the parameter's own baseline (the reference's model with unlimited
  data: below 1 by the reference's own estimation error);
- ``facts``: + every other parameter's baseline and the ADSL covariates as the local generator
  encodes them (`BaselineFeatures`, skewed baselines on the log scale): its information;
- ``flexible``: + non-linear terms of the own baseline: one indicator per value when the
  parameter's baseline takes at most 10 values (a 1-5 score, a 0/1 status: any function of it),
  else its square, cube and log(1 + baseline) when never negative.

A ceiling bounds predictors of its class only (interactions or other relations can go below
it), and any result can by chance. Since no learner has unlimited data, the twins are compared
with the ceilings in the bench, with the same classes *learnt* from the knowledge base's arm
beside them (`learnt_ratios`): far above the ceiling is estimation error, below the twins a
relation the twins miss. The validation card shows the **information gain** instead, the
ratio of the ``facts`` ceiling to the ``baseline`` ceiling (both with unlimited data, so the
reference's estimation error cancels): how much the generator's information beyond the own
baseline could cut the error at best; near 1 the twins cannot do much better than the
baseline ANCOVA on that trial, whatever the generator.

`ceiling_ratios(trial, pairs)`: per parameter the twins' and the classes' ratios of one backtest
(bench/backtest.py prints their mean and range over its splits); `information_card`: the gain
with a 95 % patient bootstrap interval for the validation card (the Validate page, the report).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.generation.local import BaselineFeatures
from services.generation.local.features import choose_transform
from services.generation.local.ridge import choose_penalty, ridge_path

CLASSES = ("baseline", "facts", "flexible")
MAX_LEVELS = 10
_NEED = ("OBSERVED", "PREDICTED", "REFERENCE", "BASELINE")


def error_terms(y: np.ndarray, X: np.ndarray) -> np.ndarray | None:
    """Per value, e_i^2 / (1 - h_ii) of the least-squares fit of y on [1, X]: each has the
    expectation of the class's best predictor's squared error at that patient when the class
    holds the true conditional mean and the error variance is constant (the HC2 correction;
    nearly so when it is not); their mean estimates the class's expected squared error. A value
    fitted exactly (h_ii = 1) gets the mean of the others. None when fewer than one degree of
    freedom is left."""
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


def shape_terms(baseline: np.ndarray, levels: np.ndarray | None) -> np.ndarray:
    """Non-linear terms of an own baseline: indicators of all but the first of `levels` (the
    parameter's few baseline values), else its square and cube (standardised) and
    log(1 + baseline) when never negative."""
    base = np.asarray(baseline, float)[:, None]
    if levels is not None:
        return (base == np.asarray(levels)[None, 1:]).astype(float)
    z = (base - base.mean()) / (base.std() or 1.0)
    return np.column_stack([z ** 2, z ** 3] + ([np.log1p(base)] if base.min() >= 0 else []))


def designs(baseline: np.ndarray, facts: np.ndarray, levels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The classes' design matrices (no intercept) of one visit's patients; the own baseline
    comes first (`learnt_ratios` lets only it extrapolate)."""
    base = np.asarray(baseline, float)[:, None]
    return {"baseline": base, "facts": np.column_stack([base, facts]),
            "flexible": np.column_stack([base, facts, shape_terms(baseline, levels)])}


def baseline_facts(trial: Trial, ids) -> pd.DataFrame:
    """Every parameter's baseline and the ADSL covariates of `ids` as the local generator
    encodes them (skewed baselines on the log scale, standardised, missing values at the mean
    with indicators, categories seen at least 3 times), indexed by USUBJID, columns named."""
    ids = [str(u) for u in ids]
    base = trial.baseline.reindex(index=ids)
    transforms = {p: choose_transform(base[p].to_numpy(float)) for p in trial.parameters if p in base}
    feats = BaselineFeatures(list(trial.parameters), trial.covariates, transforms).fit(trial, ids)
    return pd.DataFrame(feats.transform(trial, ids), index=ids, columns=feats.columns)


def _visits(trial: Trial, pairs: pd.DataFrame, extra: tuple = ()) -> Iterator[tuple[str, pd.DataFrame, dict]]:
    """(PARAMCD, the visit's usable rows, the classes' designs) per parameter and visit of a
    backtest's pairs: rows with every figure and a baseline, visits with at least 3 of them;
    the facts leave out the parameter's own baseline (it is the first column already)."""
    need = ["USUBJID", "PARAMCD", "AVISITN", *extra, *_NEED]
    if not set(need) <= set(pairs.columns):           # a trial with events only
        return
    p = pairs.dropna(subset=list(_NEED))
    p = p[np.isfinite(p[list(_NEED)].to_numpy(float)).all(axis=1)]
    if not len(p):
        return
    facts = baseline_facts(trial, p["USUBJID"].astype(str).unique())
    for paramcd, par in p.groupby("PARAMCD", sort=False):
        levels = np.unique(par["BASELINE"].to_numpy(float))
        levels = levels if len(levels) <= MAX_LEVELS else None        # decided per parameter
        own = [c for c in facts.columns if c in (f"BL:{paramcd}", f"MISS:{paramcd}")]
        other = facts.drop(columns=own)
        for _, g in par.groupby("AVISITN", sort=False):
            if len(g) >= 3:
                X = designs(g["BASELINE"].to_numpy(float), other.loc[g["USUBJID"].astype(str)].to_numpy(float),
                            levels)
                yield paramcd, g, X


def _visit_terms(trial: Trial, pairs: pd.DataFrame, classes) -> tuple[np.ndarray, dict]:
    """(patients, PARAMCD -> one dict of arrays per visit): squared errors of the twins and the
    reference, the classes' error terms and the patients' positions; visits where a class has
    no degree of freedom left are left out."""
    visits = list(_visits(trial, pairs))
    # the patients in the order of the pairs (the bootstrap draws them by position)
    seen = {str(u) for _, g, _ in visits for u in g["USUBJID"]}
    ids = np.array([u for u in pairs["USUBJID"].astype(str).unique() if u in seen], dtype=object) \
        if seen else np.array([], dtype=object)
    pos = {u: i for i, u in enumerate(ids)}
    out: dict[str, list] = {}
    for paramcd, g, X in visits:
        y = g["OBSERVED"].to_numpy(float)
        terms = {c: error_terms(y, X[c]) for c in classes}
        if any(t is None for t in terms.values()):
            continue
        out.setdefault(paramcd, []).append({
            "twins": (g["PREDICTED"].to_numpy(float) - y) ** 2,
            "reference": (g["REFERENCE"].to_numpy(float) - y) ** 2,
            "at": np.array([pos[str(u)] for u in g["USUBJID"]]), **terms})
    return ids, out


def _ratios(groups: dict, classes, weights: np.ndarray | None = None) -> pd.DataFrame:
    """Per parameter, the twins' and the classes' RMSE ratios to the reference, pooled over
    visits; `weights`: each patient's count in a bootstrap resample (a parameter none of whose
    patients was drawn gets NaN)."""
    rows = []
    for paramcd, visits in groups.items():
        sums = {k: sum(float(v[k].sum() if weights is None else weights[v["at"]] @ v[k]) for v in visits)
                for k in ("twins", "reference", *classes)}
        ref = sums.pop("reference")
        rows.append({"PARAMCD": paramcd, **{k: float(np.sqrt(x / ref)) if ref > 0 else np.nan
                                            for k, x in sums.items()}})
    return pd.DataFrame(rows, columns=["PARAMCD", "twins", *classes]).set_index("PARAMCD")


def ceiling_ratios(trial: Trial, pairs: pd.DataFrame, classes=CLASSES) -> pd.DataFrame:
    """Per parameter of one backtest (`pairs`: one row per held-out patient x parameter x visit):
    the twins' RMSE ratio vs the reference regression and each class's ceiling ratio, on the
    values with a baseline at visits where every class has a degree of freedom left, pooled over
    visits by sums of squared errors (error terms) as the backtest pools them."""
    return _ratios(_visit_terms(trial, pairs, classes)[1], classes).reset_index()


def information_card(trial: Trial, pairs: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per parameter: the information gain, the `facts` ceiling over the `baseline` ceiling
    (how much the other baselines and the covariates could cut the own baseline model's error,
    both with unlimited data), with a 95 % percentile bootstrap interval over patients that
    re-weighs each patient's error terms of the one fit, as the card's RMSE ratio re-weighs its
    squared errors (refits on duplicated patients would get their leverages wrong). Columns
    PARAMCD, gain, gain_lo, gain_hi."""
    cols = ["PARAMCD", "gain", "gain_lo", "gain_hi"]
    ids, groups = _visit_terms(trial, pairs, ("baseline", "facts"))
    point = _ratios(groups, ("baseline", "facts"))
    if not len(point):
        return pd.DataFrame(columns=cols)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot)
    boots = pd.concat([(b["facts"] / b["baseline"]).rename(i) for i, b in
                       enumerate(_ratios(groups, ("baseline", "facts"), w) for w in draws)], axis=1)
    out = pd.DataFrame({"gain": point["facts"] / point["baseline"],
                        "gain_lo": boots.quantile(0.025, axis=1), "gain_hi": boots.quantile(0.975, axis=1)})
    return out.reindex(point.index).reset_index()[cols]


def _ridge(X: np.ndarray, y: np.ndarray, linear: int):
    """The local generator's ridge (`ridge_path`, penalty by GCV) on standardised columns; a
    predict function that holds the columns from `linear` on (a cube's powers, the facts) to
    their training range, so that a cube does not explode beyond it, while the first ones (the
    own baseline) extrapolate."""
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    lo, hi = X.min(axis=0), X.max(axis=0)
    held = np.arange(X.shape[1]) >= linear
    b0, beta, gcv = ridge_path((X - mu) / sd, y, np.ones(X.shape[1]))
    a = choose_penalty(gcv)

    def predict(Z: np.ndarray) -> np.ndarray:
        Z = np.where(held, np.clip(Z, lo, hi), Z)
        return b0[a] + ((Z - mu) / sd) @ beta[a]

    return predict


def learnt_ratios(trial: Trial, pairs: pd.DataFrame, classes=CLASSES) -> pd.DataFrame:
    """Per parameter of one k-fold backtest: the RMSE ratio of each class *learnt* the way a
    generator must, from the knowledge base's arm (the other folds' held-out patients: in a
    k-fold backtest of one arm they are that arm's knowledge base), by the generator's ridge
    with its GCV penalty (`_ridge`). Beside the ceiling it tells estimation error
    (learnt well above the ceiling) from a relation the twins miss (learnt below the twins)."""
    sse: dict[str, dict[str, float]] = {}
    for paramcd, g, X in _visits(trial, pairs, ("FOLD",)):
        fold, y = g["FOLD"].to_numpy(), g["OBSERVED"].to_numpy(float)
        acc = sse.setdefault(paramcd, dict.fromkeys(("reference", *classes), 0.0))
        for f in np.unique(fold):
            test, train = fold == f, fold != f
            if train.sum() < 5:
                continue
            acc["reference"] += float(np.sum((g["REFERENCE"].to_numpy(float)[test] - y[test]) ** 2))
            for c in classes:
                fit = _ridge(X[c][train], y[train], linear=1)
                acc[c] += float(np.sum((fit(X[c][test]) - y[test]) ** 2))
    rows = [{"PARAMCD": k, **{c: float(np.sqrt(v[c] / v["reference"])) for c in classes}}
            for k, v in sse.items() if v["reference"] > 0]
    return pd.DataFrame(rows, columns=["PARAMCD", *classes])
