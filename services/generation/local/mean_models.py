"""Candidate mean models of one parameter's visits, all linear in the baseline design matrix so
that the rest of the local generator (cross-fitted residuals, donors, draws) is the same
whichever wins. The winner is chosen per parameter by its out-of-fold error in the target
arm (`ArmFitting._fit_scale`); inner penalties are tuned inside each training fold, so the
choice is a nested cross-validation.

- `ridge`: penalised regression on every baseline fact, the parameter's own baseline
  (practically) unpenalised, slopes shared by the visits (`ridge.fit_parameter`);
- `ancova`: per visit, ordinary least squares on the parameter's own baseline only (the
  standard covariate adjustment a trial statistician would fit);
- `carry`: the baseline carried forward (slope 1 on the own baseline, on the outcome scale);
  its residuals hold the arm's drift (placebo response, a marker rising on placebo), which
  the twins keep whole (`model._carry_drift`: the residuals' mean per visit, cross-fitted;
  missed visits are completed around it; the neighbourhood's shift is the deviation from it).
  Before, balancing a source's twins re-centred those residuals and dropped part of the drift
  (all of it without centring): a synthetic control then credited the placebo response to the
  treatment (null simulations of `bench/inference.py`, replicates that chose `carry`: btheb's
  mean difference -2.6 BDI points, now -1.8; pbc's +0.19 mg/dL, -0.13 after the first fix).
  On the identity scale the choice scores the bare carried baseline, without its drift (on a
  log scale the per-visit smearing factor holds it): scoring the drift there too (a
  change-from-baseline model) made `carry` win more often and cost the development backtest
  (SEIZ 0.927 -> 0.954, BDI 0.974 -> 0.997, WEIGHT 0.996 -> 1.001). So on btheb `carry` wins
  more often where the knowledge base's drift happens to be small (a selection bias); with the
  floor at 0 that clips a score's twins (24 % of btheb's twins at 0 by month 8 vs 16 % of its
  patients) it leaves those replicates' -1.8;
- `borrow`: the ridge fitted on every arm of the knowledge base with per-visit arm offsets:
  the prognostic relation is shared by the arms, so a small target arm borrows strength from
  the others (as PROCOVA's prognostic models learn from historical patients); a source that is
  itself in the knowledge base (any arm) is predicted by the fold model that excludes it.

Each returns `(b0, beta)`: intercepts (folds + 1, J) and slopes (folds + 1, J, F) of the fold
models (row f excludes fold f) and, last, of the model fitted on everyone.
"""

from __future__ import annotations

import numpy as np

from services.generation.local.ridge import fit_parameter

CANDIDATES = ("ridge", "ancova", "carry", "borrow")
ARM_PENALTY = 1e-4       # arm offsets are (practically) unpenalised, like the own baseline


def fold_rows(fold: np.ndarray, folds: int):
    """(f, rows) for each fold model f (rows outside fold f), then the full model (every row)."""
    for f in range(folds + 1):
        yield f, (fold != f) if f < folds else np.ones(len(fold), dtype=bool)


def ridge_models(X, Yt, fold, folds, pen, alphas, pool, group=None):
    J, F = Yt.shape[1], X.shape[1]
    b0, beta = np.zeros((folds + 1, J)), np.zeros((folds + 1, J, F))
    for f, rows in fold_rows(fold, folds):
        b0[f], beta[f] = fit_parameter(X[rows], Yt[rows], pen, alphas, pool,
                                       None if group is None else group[rows])
    return b0, beta


def ancova_models(X, Yt, fold, folds, own: int):
    """Per visit and fold: OLS of the visit's value on the own baseline (column `own`);
    the visit mean when fewer than 3 patients or no spread."""
    J, F = Yt.shape[1], X.shape[1]
    b0, beta = np.zeros((folds + 1, J)), np.zeros((folds + 1, J, F))
    x_all = X[:, own]
    for f, rows in fold_rows(fold, folds):
        for j in range(J):
            ok = rows & np.isfinite(Yt[:, j])
            if not ok.any():
                continue
            x, y = x_all[ok], Yt[ok, j]
            if ok.sum() >= 3 and np.std(x) > 0:
                slope = float(np.cov(x, y, bias=True)[0, 1] / np.var(x))
                b0[f, j], beta[f, j, own] = float(y.mean() - slope * x.mean()), slope
            else:
                b0[f, j] = float(y.mean())
    return b0, beta


def carry_models(J, F, folds, own: int, mean: float, sd: float):
    """The own baseline carried forward: X[:, own] is (baseline - mean) / sd on the outcome's
    scale, so value = mean + sd * X[:, own]; a missing baseline carries the arm's mean."""
    b0, beta = np.full((folds + 1, J), float(mean)), np.zeros((folds + 1, J, F))
    beta[:, :, own] = float(sd)
    return b0, beta


def borrow_models(X_all, Yt_all, fold_all, folds, arms, pen, alphas, pool, group_all=None):
    """Ridge on every arm's patients with per-visit arm offsets (one indicator column per
    other arm, penalised like the own baseline: shared by the visits, then per-visit
    deviations); the intercept is the target arm's (its indicators are all 0)."""
    J, F = Yt_all.shape[1], X_all.shape[1]
    A = arms.shape[1]
    Xa = np.hstack([X_all, arms])
    pen_a = np.concatenate([pen, np.full(A, ARM_PENALTY)])
    b0, beta = np.zeros((folds + 1, J)), np.zeros((folds + 1, J, F))
    for f, rows in fold_rows(fold_all, folds):
        bf, betaf = fit_parameter(Xa[rows], Yt_all[rows], pen_a, alphas, pool,
                                  None if group_all is None else group_all[rows])
        b0[f], beta[f] = bf, betaf[:, :F]
    return b0, beta


def out_of_fold(X, b0, beta, fold, folds, lo, hi) -> np.ndarray:
    """Predictions of the target arm's patients by the fold models that exclude them."""
    pred = np.full((len(X), b0.shape[1]), np.nan)
    for f in range(folds):
        rows = fold == f
        pred[rows] = np.clip(b0[f] + X[rows] @ beta[f].T, lo, hi)
    return pred
