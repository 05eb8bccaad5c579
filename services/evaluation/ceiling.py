"""How far below the baseline ANCOVA can any twin generator get on a trial? The known-model ceiling.

The backtest's accuracy figure is the RMSE of the twins' mean over that of a per-visit
`value ~ baseline` regression fitted on the knowledge base (`services/evaluation/backtest.py`).
A ratio well below 1 needs information beyond the own baseline (ADSL covariates, a non-linear
baseline effect) or much less estimation noise than the reference's. How much there is to gain
depends on the trial, not the generator; this module estimates it on the very held-out patients
and splits of a backtest.

For each split, parameter and visit, a model class is fitted to the held-out (control) patients
themselves, every fold together, and its residual mean square SSE / (n - p) estimates the
mean squared error of the class's *population-best* predictor (unbiased under the linear model:
a generator that knew the best coefficients from infinite data would reach it in expectation; a
real one learns from a finite knowledge base and does worse). Divided by the reference's mean
squared error on the same values and pooled over visits as the backtest pools them, it gives the
**ceiling ratio**: below it no generator in that class can go, in expectation. Classes:

- ``baseline``: intercept + own baseline (what the reference estimates, from fewer patients);
- ``covariates``: + the ADSL covariates (numbers as they are, missing set to the mean with an
  indicator; categories as indicators);
- ``flexible``: as ``covariates`` but any function of a baseline that takes at most 10 values
  (a 1-5 score, a 0/1 status: one indicator per value), else a cubic in the baseline plus
  log(1 + baseline) when it is never negative (a log-scale relation such as a liver enzyme's).

These are ceilings for predictors in the class only: a generator using an interaction, or a
relation the class cannot express, may go below them (each printed line says which class).

`ceiling_ratios(trial, pairs)` gives per parameter the three ratios of one backtest
(bench/backtest.py prints their mean and 2.5-97.5 % range over its splits beside the twins'
ratio); `ceiling_card` the flexible class's ceiling with a bootstrap interval over patients for
the validation card (the Validate page and the report), so a user sees how much room the trial
leaves above the baseline ANCOVA, not only where the twins stand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.data.trial import Trial

CLASSES = ("baseline", "covariates", "flexible")
MAX_LEVELS = 10


def covariate_frame(trial: Trial, ids) -> pd.DataFrame:
    """ADSL covariates of `ids` as a numeric design indexed by USUBJID (no intercept): numbers
    with missing values set to the mean plus an indicator; categories as indicators of all but
    the first level."""
    ids = list(ids)
    subj = trial.subjects.drop_duplicates("USUBJID").set_index("USUBJID").reindex(ids)
    cols = []
    for name, kind in trial.covariates.items():
        if name not in subj.columns:
            continue
        v = subj[name]
        if kind == "continuous":
            x = pd.to_numeric(v, errors="coerce").to_numpy(float)
            miss = ~np.isfinite(x)
            if miss.all():
                continue
            cols.append(np.where(miss, np.nanmean(x), x))
            if miss.any():
                cols.append(miss.astype(float))
        else:
            levels = pd.Series(v.astype("string").fillna("(missing)"))
            dummies = pd.get_dummies(levels, drop_first=True, dtype=float)
            cols += [dummies[c].to_numpy() for c in dummies.columns]
    return pd.DataFrame(np.column_stack(cols) if cols else np.zeros((len(ids), 0)), index=ids)


def known_model_mse(y: np.ndarray, X: np.ndarray, w: np.ndarray | None = None) -> float | None:
    """Residual mean square of the least-squares fit of y on [1, X]: the expected squared error
    of the class's best predictor, estimated from these values' own fit (statsmodels' OLS
    `mse_resid`); None when no degree of freedom is left. `w`: a bootstrap's patient counts
    (frequency weights); a patient drawn w times counts w times in the fit, so the degrees of
    freedom are sum(w) - sum(w_i^2 x_i' (X'WX)^+ x_i) (= n - p without weights): E[weighted SSE]
    = sigma^2 * dof, as the copies' residuals are not independent."""
    w = np.ones(len(y)) if w is None else np.asarray(w, float)
    on = w > 0
    y, w = y[on], w[on]
    X = np.column_stack([np.ones(len(y)), X[on] if X.size else np.zeros((len(y), 0))])
    keep = np.ptp(X, axis=0) > 0
    keep[0] = True
    X = X[:, keep]
    XtWX_inv = np.linalg.pinv(X.T @ (w[:, None] * X))
    beta = XtWX_inv @ (X.T @ (w * y))
    q = np.einsum("ij,jk,ik->i", X, XtWX_inv, X)          # x_i' (X'WX)^+ x_i
    dof = float(w.sum() - np.sum(w * w * q))
    if dof < 1 - 1e-9:
        return None
    return float(np.sum(w * (y - X @ beta) ** 2)) / dof


def designs(baseline: np.ndarray, cov: np.ndarray) -> dict[str, np.ndarray]:
    """The classes' design matrices (no intercept) of one visit's patients."""
    base = np.asarray(baseline, float)[:, None]
    levels = np.unique(base[:, 0])
    if len(levels) <= MAX_LEVELS:
        shape = (base == levels[None, 1:]).astype(float)
    else:
        z = (base - base.mean()) / (base.std() or 1.0)
        shape = np.column_stack([z, z ** 2, z ** 3] + ([np.log1p(base)] if base.min() >= 0 else []))
    return {"baseline": base, "covariates": np.column_stack([base, cov]),
            "flexible": np.column_stack([shape, cov])}


def _visit_groups(trial: Trial, pairs: pd.DataFrame, classes) -> tuple[np.ndarray, dict]:
    """(patients, PARAMCD -> list of one dict of arrays per visit): each visit's observed values,
    twins' and reference predictions, its patients' positions and the classes' designs."""
    need = ["USUBJID", "PARAMCD", "AVISITN", "OBSERVED", "PREDICTED", "REFERENCE", "BASELINE"]
    if not set(need) <= set(pairs.columns):           # a trial with events only
        return np.array([], dtype=object), {}
    p = pairs.dropna(subset=need[3:])
    p = p[np.isfinite(p[need[3:]].to_numpy(float)).all(axis=1)]
    ids = p["USUBJID"].unique()
    covs = covariate_frame(trial, ids)
    pos = {u: i for i, u in enumerate(ids)}
    out: dict[str, list] = {}
    for (paramcd, _), g in p.groupby(["PARAMCD", "AVISITN"], sort=False):
        if len(g) < 3:
            continue
        X = designs(g["BASELINE"].to_numpy(float), covs.loc[g["USUBJID"]].to_numpy(float))
        out.setdefault(paramcd, []).append({
            "y": g["OBSERVED"].to_numpy(float), "twins": g["PREDICTED"].to_numpy(float),
            "reference": g["REFERENCE"].to_numpy(float),
            "at": np.array([pos[u] for u in g["USUBJID"]]), "X": {c: X[c] for c in classes}})
    return ids, out


def _ratios(groups: dict, classes, weights: np.ndarray | None = None) -> pd.DataFrame:
    rows = []
    for paramcd, visits in groups.items():
        sse = dict.fromkeys(("twins", "reference", *classes), 0.0)
        for v in visits:
            y = v["y"]
            w = np.ones(len(y)) if weights is None else weights[v["at"]].astype(float)
            if w.sum() < 3:
                continue
            fits = {c: known_model_mse(y, v["X"][c], w) for c in classes}
            if any(f is None for f in fits.values()):
                continue
            n = float(w.sum())
            sse["twins"] += float(w @ (v["twins"] - y) ** 2)
            sse["reference"] += float(w @ (v["reference"] - y) ** 2)
            for c, f in fits.items():
                sse[c] += n * f
        if sse["reference"] > 0:
            rows.append({"PARAMCD": paramcd, **{k: float(np.sqrt(x / sse["reference"]))
                                                for k, x in sse.items() if k != "reference"}})
    return pd.DataFrame(rows, columns=["PARAMCD", "twins", *classes])


def ceiling_ratios(trial: Trial, pairs: pd.DataFrame, classes=CLASSES) -> pd.DataFrame:
    """Per parameter of one backtest (`pairs`: one row per held-out patient x parameter x visit):
    the twins' RMSE ratio vs the reference regression and each class's ceiling ratio, pooled over
    visits by sums of squared errors as the backtest pools them; visits where a class has no
    degree of freedom left are left out of every sum."""
    return _ratios(_visit_groups(trial, pairs, classes)[1], classes)


def ceiling_card(trial: Trial, pairs: pd.DataFrame, n_boot: int = 200, seed: int = 0,
                 cls: str = "flexible") -> pd.DataFrame:
    """Per parameter: the `cls` ceiling with a 95 % percentile bootstrap interval over patients
    (columns PARAMCD, ceiling, ceiling_lo, ceiling_hi), for the validation card."""
    ids, groups = _visit_groups(trial, pairs, (cls,))
    point = _ratios(groups, (cls,))
    out = point[["PARAMCD", cls]].rename(columns={cls: "ceiling"})
    if not len(point):
        return out.assign(ceiling_lo=[], ceiling_hi=[])
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot)
    boots = pd.concat([_ratios(groups, (cls,), w).set_index("PARAMCD")[cls] for w in draws], axis=1)
    out["ceiling_lo"] = out["PARAMCD"].map(boots.quantile(0.025, axis=1))
    out["ceiling_hi"] = out["PARAMCD"].map(boots.quantile(0.975, axis=1))
    return out
