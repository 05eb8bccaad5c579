"""Estimators behind the effect estimates: a weighted, cluster-robust Cox model of a binary
group (Lin & Wei 1989), the Kaplan-Meier restricted mean survival time with its influence
function, and ordinary least squares with classical standard errors (as statsmodels OLS).
Known-answer tests against lifelines and statsmodels: tests/test_effects.py."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class CoxFit:
    """Cox model with one binary covariate (1 = group of interest), Breslow ties."""

    log_hr: float
    se_model: float        # 1 / sqrt(information)
    se_robust: float       # Lin-Wei sandwich, clustered when clusters are given
    scores: np.ndarray = field(repr=False)  # per-cluster score contributions x I^-1 (dfbeta)
    cluster_ids: np.ndarray = field(default_factory=lambda: np.array([]), repr=False)  # of `scores`


def cox_binary(time, event, group, weights=None, clusters=None, max_iter: int = 50) -> CoxFit:
    """Weighted Cox regression of ``time``/``event`` on a 0/1 ``group`` (Breslow ties).

    Newton-Raphson on the weighted partial likelihood; robust variance I^-1 (sum_c U_c^2) I^-1
    where U_c sums the weighted score residuals of cluster c (Lin & Wei 1989; every record is
    its own cluster when ``clusters`` is None). With no tied event times this equals
    lifelines' ``CoxPHFitter(weights_col=..., cluster_col=..., robust=True)``. NaN when a group
    has no events (the hazard ratio is 0 or infinite: not estimable).
    """
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    z = np.asarray(group, dtype=float)
    w = np.ones_like(t) if weights is None else np.asarray(weights, dtype=float)
    order = np.argsort(t, kind="stable")
    t, e, z, w = t[order], e[order], z[order], w[order]
    ev = e > 0
    ut = np.unique(t[ev])
    events_in = [float(np.sum(w[ev & (z == g)])) for g in (0.0, 1.0)]
    if ut.size == 0 or np.all(z == z[0]) or min(events_in) <= 0:
        # no events in one group: the likelihood is monotone, the MLE is -+infinity and Newton
        # would stop at an arbitrary huge |log HR| with a small robust SE (not estimable)
        nan = float("nan")
        return CoxFit(nan, nan, nan, np.array([]), np.array([]))
    pos = np.searchsorted(t, ut, side="left")           # first record at risk at each time
    idx_ev = np.searchsorted(ut, t[ev])
    d_w = np.bincount(idx_ev, weights=w[ev], minlength=ut.size)
    d_z = np.bincount(idx_ev, weights=(w * z)[ev], minlength=ut.size)
    beta = 0.0
    for _ in range(max_iter):
        r = w * np.exp(beta * z)
        s0 = np.cumsum(r[::-1])[::-1][pos]
        s1 = np.cumsum((r * z)[::-1])[::-1][pos]
        zbar = s1 / s0
        u = float(np.sum(d_z - d_w * zbar))
        info = float(np.sum(d_w * zbar * (1 - zbar)))
        if info <= 0:
            break
        step = u / info
        step = max(min(step, 5.0), -5.0)
        beta += step
        if abs(step) < 1e-10:
            break
    r = w * np.exp(beta * z)
    s0 = np.cumsum(r[::-1])[::-1][pos]
    s1 = np.cumsum((r * z)[::-1])[::-1][pos]
    zbar = s1 / s0
    info = float(np.sum(d_w * zbar * (1 - zbar)))
    # score residuals per record
    a_cum = np.cumsum(d_w / s0)
    b_cum = np.cumsum(d_w * zbar / s0)
    k = np.searchsorted(ut, t, side="right") - 1       # last event time <= t_l
    a_l = np.where(k >= 0, a_cum[np.clip(k, 0, None)], 0.0)
    b_l = np.where(k >= 0, b_cum[np.clip(k, 0, None)], 0.0)
    zbar_own = np.zeros_like(t)
    zbar_own[ev] = zbar[idx_ev]
    resid = e * (z - zbar_own) - np.exp(beta * z) * (z * a_l - b_l)
    contrib = w * resid
    if clusters is None:
        per, ids = contrib, order                       # every record its own cluster (input index)
    else:
        c = np.asarray(clusters)[order]
        codes, ids = pd.factorize(c)
        per = np.bincount(codes, weights=contrib)
    se_rob = math.sqrt(float(np.sum(per**2))) / info if info > 0 else float("nan")
    se_mod = 1 / math.sqrt(info) if info > 0 else float("nan")
    return CoxFit(float(beta), se_mod, se_rob, per / info if info > 0 else per, np.asarray(ids))


@dataclass(frozen=True)
class RMSTFit:
    rmst: float
    var: float                          # Greenwood-form variance (clusters = records)
    influence: np.ndarray = field(repr=False)  # w_l * psi_l per record (input order)


def rmst_km(time, event, tau: float, weights=None) -> RMSTFit:
    """Restricted mean survival time up to ``tau`` of a (weighted) Kaplan-Meier curve.

    Influence function of record l (rmst_hat - rmst ~ sum_l w_l psi_l):
    psi_l = -sum_{u <= tau} A(u) (dN_l(u) - Y_l(u) d(u) / Y(u)) / (Y(u) - d(u)),
    A(u) = int_u^tau S(t) dt, with weighted event counts d and numbers at risk Y. With unit
    weights sum_l psi_l^2 is the usual Greenwood-type variance sum A(u)^2 d / (Y (Y - d))
    (Klein & Moeschberger 4.5; survRM2). ``var`` is that sum; cluster it by summing
    ``influence`` per cluster.
    """
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float) > 0
    w = np.ones_like(t) if weights is None else np.asarray(weights, dtype=float)
    tau = float(tau)
    ut = np.unique(t[e & (t <= tau)])
    if ut.size == 0:
        return RMSTFit(tau, 0.0, np.zeros_like(t))
    d = np.bincount(np.searchsorted(ut, t[e & (t <= tau)]), weights=w[e & (t <= tau)], minlength=ut.size)
    order = np.argsort(t, kind="stable")
    ts, ws = t[order], w[order]
    y = np.cumsum(ws[::-1])[::-1][np.searchsorted(ts, ut, side="left")]
    surv = np.cumprod(1 - d / y)
    grid = np.concatenate([[0.0], ut, [tau]])
    s_steps = np.concatenate([[1.0], surv])             # S on [grid_j, grid_{j+1})
    areas = s_steps * np.diff(grid)
    rmst = float(areas.sum())
    a_u = np.cumsum(areas[::-1])[::-1][1:]               # int_{u_j}^tau S(t) dt for each u_j
    denom = np.where(y - d > 0, y - d, y)
    g = a_u / denom
    c_cum = np.cumsum(g * d / y)
    k = np.searchsorted(ut, np.minimum(t, tau), side="right") - 1
    at_risk_part = np.where(k >= 0, c_cum[np.clip(k, 0, None)], 0.0)
    own = np.zeros_like(t)
    is_ev = e & (t <= tau)
    own[is_ev] = g[np.searchsorted(ut, t[is_ev])]
    psi = -(own - at_risk_part)
    infl = w * psi
    return RMSTFit(rmst, float(np.sum(psi**2 * w**2) if weights is not None else np.sum(psi**2)), infl)


@dataclass(frozen=True)
class OLSFit:
    coef: np.ndarray
    se: np.ndarray
    df: int
    sigma: float


def ols(y, X) -> OLSFit:
    """Ordinary least squares with classical standard errors (as statsmodels OLS().fit())."""
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    n = X.shape[0]
    xtx_inv = np.linalg.pinv(X.T @ X)
    beta = xtx_inv @ X.T @ y
    resid = y - X @ beta
    df = n - np.linalg.matrix_rank(X)
    sigma2 = float(resid @ resid / df) if df > 0 else float("nan")
    return OLSFit(beta, np.sqrt(np.diag(xtx_inv) * sigma2), int(df), math.sqrt(sigma2))
