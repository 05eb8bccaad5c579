"""Survival: time-to-event comparisons of twins and real patients (lifelines).

Times are non-negative durations; events are 1 (event observed) / 0 (censored), booleans
accepted. Rows with a missing time or event are dropped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError
from lifelines.statistics import logrank_test
from lifelines.utils import concordance_index

from .registry import ResultMixin

NAN = float("nan")


def _clean(times, events, name: str) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times, dtype=float).ravel()
    e = np.asarray(events, dtype=float).ravel()
    if t.shape != e.shape:
        raise ValueError(f"{name}: {t.size} times but {e.size} event flags")
    ok = ~(np.isnan(t) | np.isnan(e))
    t, e = t[ok], e[ok]
    if np.any(t < 0):
        raise ValueError(f"{name}: negative times")
    if not np.all(np.isin(e, (0.0, 1.0))):
        raise ValueError(f"{name}: events must be 0/1")
    return t, e.astype(int)


def km_curve(times, events) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate: (distinct event times, survival just after each).

    Plain numpy (no fitter object): the backtest calls it once per source patient. At a time
    with both events and censorings, the censored patients are still at risk, as usual."""
    t = np.asarray(times, dtype=float)
    e = np.asarray(events, dtype=bool)
    if len(t) == 0:
        return np.array([]), np.array([])
    order = np.lexsort((~e, t))
    t, e = t[order], e[order]
    uniq, first = np.unique(t, return_index=True)
    at_risk = len(t) - first
    deaths = np.add.reduceat(e.astype(int), first)
    surv = np.cumprod(1 - deaths / at_risk)
    keep = deaths > 0
    return uniq[keep], surv[keep]


def km_at(curve: tuple[np.ndarray, np.ndarray], grid) -> np.ndarray:
    """A :func:`km_curve` evaluated at ``grid`` (right-continuous step, 1 before the first
    event)."""
    t, s = curve
    grid = np.asarray(grid, dtype=float)
    if len(t) == 0:
        return np.ones(len(grid))
    idx = np.searchsorted(t, grid, side="right") - 1
    return np.where(idx >= 0, s[np.maximum(idx, 0)], 1.0)


@dataclass(frozen=True)
class KMDistance(ResultMixin):
    """Sup distance between two Kaplan-Meier curves: ``sup`` = max |S_a(t) - S_b(t)| over
    the grid up to ``horizon``, reached at time ``at_time``; the grid and both curves are
    kept for plots."""

    sup: float
    at_time: float
    horizon: float
    grid: np.ndarray = field(repr=False, compare=False, default=None)
    survival_a: np.ndarray = field(repr=False, compare=False, default=None)
    survival_b: np.ndarray = field(repr=False, compare=False, default=None)


def km_sup_distance(times_a, events_a, times_b, events_b,
                    horizon: float | None = None) -> KMDistance:
    """Largest absolute difference between the Kaplan-Meier curves of samples a and b.

    Both curves are step functions that change only at observed times, so evaluating them on
    the union of the two samples' observed times (plus 0) gives the exact supremum. By default
    the comparison stops at the common follow-up, ``min(max time of a, max time of b)``,
    because beyond a sample's last observation its curve is not estimated; pass ``horizon``
    to choose another end point.
    """
    ta, ea = _clean(times_a, events_a, "sample a")
    tb, eb = _clean(times_b, events_b, "sample b")
    if ta.size == 0 or tb.size == 0:
        raise ValueError("both samples need at least one observation")
    end = float(min(ta.max(), tb.max())) if horizon is None else float(horizon)
    grid = np.union1d(np.union1d(ta, tb), [0.0])
    grid = grid[grid <= end]
    sa, sb = km_at(km_curve(ta, ea), grid), km_at(km_curve(tb, eb), grid)
    gap = np.abs(sa - sb)
    i = int(np.argmax(gap))
    return KMDistance(sup=float(gap[i]), at_time=float(grid[i]), horizon=end,
                      grid=grid, survival_a=sa, survival_b=sb)


def concordance(pred_times, times, events) -> float:
    """Harrell's C-index of predicted survival times against observed (time, event) pairs.

    ``pred_times``: predicted survival times or any score where larger means longer survival
    (pass ``-risk`` for a risk score). Uses ``lifelines.utils.concordance_index`` (ties in
    predictions count 1/2). 1 = perfectly ordered, 0.5 = random, 0 = perfectly reversed.
    Rows with a missing value are dropped; NaN if no pair is comparable.
    """
    p = np.asarray(pred_times, dtype=float).ravel()
    t = np.asarray(times, dtype=float).ravel()
    e = np.asarray(events, dtype=float).ravel()
    if not (p.size == t.size == e.size):
        raise ValueError("pred_times, times and events must have the same length")
    ok = ~(np.isnan(p) | np.isnan(t) | np.isnan(e))
    try:
        return float(concordance_index(t[ok], p[ok], e[ok]))
    except ZeroDivisionError:
        return NAN


@dataclass(frozen=True)
class LogrankResult(ResultMixin):
    """Log-rank test of equal survival: chi-square ``statistic`` (1 df) and ``p_value``."""

    statistic: float
    p_value: float
    n_a: int
    n_b: int
    events_a: int
    events_b: int


def logrank(times_a, events_a, times_b, events_b, weights_a=None, clusters_a=None) -> LogrankResult:
    """Two-sample log-rank test (``lifelines.statistics.logrank_test``). With `weights_a` (e.g.
    1/K for a twin arm) and `clusters_a` (the source patient of each twin) it is the log-rank
    score with a cluster-robust variance (`robust_logrank`): a patient's K twins share its
    baseline but are separate draws, so they are neither K patients (unweighted, the test was
    K times too sure) nor one patient's copies (weighted 1/K with the plain variance, it rejected
    0.7-2.8 % of true nulls: a simulation in a review). n_a and events_a are then weighted sums."""
    ta, ea = _clean(times_a, events_a, "sample a")
    tb, eb = _clean(times_b, events_b, "sample b")
    if ta.size == 0 or tb.size == 0:
        raise ValueError("both samples need at least one observation")
    raw_t = np.asarray(times_a, dtype=float).ravel()
    keep = ~(np.isnan(raw_t) | np.isnan(np.asarray(events_a, dtype=float).ravel()))      # as `_clean`
    wa = np.ones(raw_t.size) if weights_a is None else np.asarray(weights_a, dtype=float).ravel()
    ca = np.arange(raw_t.size) if clusters_a is None else np.asarray(clusters_a, dtype=object).ravel()
    if wa.size != raw_t.size or ca.size != raw_t.size:
        raise ValueError("weights_a and clusters_a must have one value per observation of sample a")
    wa, ca = wa[keep], ca[keep]
    if weights_a is None and clusters_a is None:
        res = logrank_test(ta, tb, event_observed_A=ea, event_observed_B=eb)
        stat, p = float(res.test_statistic), float(res.p_value)
    else:
        clusters = [f"a:{c}" for c in ca] + [f"b:{i}" for i in range(tb.size)]   # each of b its own
        stat, p = robust_logrank(np.r_[ta, tb], np.r_[ea, eb], np.r_[np.ones(ta.size), np.zeros(tb.size)],
                                 np.r_[wa, np.ones(tb.size)], clusters)
    return LogrankResult(statistic=stat, p_value=p,
                         n_a=round(float(wa.sum())), n_b=int(tb.size),
                         events_a=round(float(wa[ea.astype(bool)].sum())), events_b=int(eb.sum()))


def robust_logrank(time_, event, x, w, clusters) -> tuple[float, float]:
    """(chi-square, p) of the weighted log-rank score U = sum_i w_i r_i for the 0/1 group `x`, with
    the cluster-robust variance sum_c (sum_{i in c} w_i r_i)^2 of its score residuals r_i at
    beta 0 (Lin & Wei 1989; Breslow ties): r_i = d_i (x_i - xbar(t_i)) - sum over the event
    times s <= t_i of (x_i - xbar(s)) dLambda(s), with xbar and dLambda weighted by w."""
    from scipy import stats as st

    t, d = np.asarray(time_, float), np.asarray(event, float)
    x, w = np.asarray(x, float), np.asarray(w, float)
    times = np.unique(t[d > 0])
    if not len(times):
        return float("nan"), float("nan")
    order = np.argsort(t, kind="stable")
    ts, ws, xs = t[order], w[order], x[order]
    # weighted at risk (t_i >= s) and its group-1 part at each event time
    tail_w = np.cumsum(ws[::-1])[::-1]
    tail_wx = np.cumsum((ws * xs)[::-1])[::-1]
    first = np.searchsorted(ts, times, side="left")
    risk, risk1 = tail_w[first], tail_wx[first]
    deaths = np.bincount(np.searchsorted(times, t[d > 0]), weights=w[d > 0], minlength=len(times))
    xbar = risk1 / risk
    dlam = deaths / risk
    cum_a = np.cumsum(dlam)                        # sum of dLambda(s) over s <= t
    cum_b = np.cumsum(xbar * dlam)                 # sum of xbar(s) dLambda(s) over s <= t
    k = np.searchsorted(times, t, side="right") - 1
    A = np.where(k >= 0, cum_a[np.maximum(k, 0)], 0.0)
    B = np.where(k >= 0, cum_b[np.maximum(k, 0)], 0.0)
    at_own = np.searchsorted(times, t)
    xbar_own = np.where(d > 0, xbar[np.minimum(at_own, len(times) - 1)], 0.0)
    r = d * (x - xbar_own) - (x * A - B)
    score = pd.Series(w * r).groupby(np.asarray(clusters, dtype=object)).sum().to_numpy()
    var = float(np.sum(score ** 2))
    U = float(np.sum(w * r))
    if not var > 0:
        return float("nan"), float("nan")
    chi2 = U * U / var
    return chi2, float(st.chi2.sf(chi2, 1))


@dataclass(frozen=True)
class HazardRatio(ResultMixin):
    """Cox model hazard ratio of ``group_level`` versus ``reference_level`` with 95% CI and
    Wald p-value; NaN with a ``reason`` when the model cannot be fitted."""

    hazard_ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    group_level: str
    reference_level: str
    n: int
    events: int
    reason: str = ""


def cox_hazard_ratio(times, events, group) -> HazardRatio:
    """Hazard ratio between two groups from a Cox proportional-hazards model.

    ``group``: two levels (0/1, booleans, or labels such as "real"/"twin"); the larger level
    in sort order is compared with the smaller (for 0/1: group 1 vs group 0). Fitted with
    ``lifelines.CoxPHFitter`` (Efron ties, no penalty), the group indicator as the only
    covariate; 95% Wald interval exp(beta +/- 1.96 se). Returns NaN values with a reason when
    a group or all events are missing or the fit fails (e.g. no events in one group, which
    makes the estimate infinite).
    """
    t = np.asarray(times, dtype=float).ravel()
    e = np.asarray(events, dtype=float).ravel()
    g = pd.Series(np.asarray(group).ravel())
    if not (t.size == e.size == g.size):
        raise ValueError("times, events and group must have the same length")
    ok = ~(np.isnan(t) | np.isnan(e) | g.isna().to_numpy())
    t, e, g = t[ok], e[ok], g[ok].reset_index(drop=True)
    t, e = _clean(t, e, "data")
    levels = sorted(g.unique().tolist())
    if len(levels) != 2:
        return HazardRatio(NAN, NAN, NAN, NAN, "", "", int(t.size), int(e.sum()),
                           f"group must have exactly 2 levels, found {len(levels)}")
    ref, lvl = levels
    base = {"group_level": str(lvl), "reference_level": str(ref), "n": int(t.size),
            "events": int(e.sum())}
    if e.sum() == 0:
        return HazardRatio(NAN, NAN, NAN, NAN, reason="no events", **base)
    x = (g == lvl).astype(float).to_numpy()
    for level_mask, name in ((x == 1, lvl), (x == 0, ref)):
        if e[level_mask].sum() == 0:
            return HazardRatio(NAN, NAN, NAN, NAN,
                               reason=f"no events in group {name!r} (hazard ratio not finite)",
                               **base)
    df = pd.DataFrame({"T": t, "E": e, "group": x})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cph = CoxPHFitter().fit(df, duration_col="T", event_col="E")
    except (ConvergenceError, ValueError, ZeroDivisionError, np.linalg.LinAlgError) as exc:
        return HazardRatio(NAN, NAN, NAN, NAN, reason=f"Cox fit failed: {exc}", **base)
    row = cph.summary.loc["group"]
    return HazardRatio(
        hazard_ratio=float(row["exp(coef)"]),
        ci_low=float(row["exp(coef) lower 95%"]),
        ci_high=float(row["exp(coef) upper 95%"]),
        p_value=float(row["p"]),
        **base,
    )


def clustered_km(time_, event, w, clusters, z: float = 1.959963984540054, donors=None) -> pd.DataFrame:
    """Weighted Kaplan-Meier curve (time, survival, lo, hi: 0 and each event time) whose 95 %
    band has a cluster-robust variance: sum over clusters of their summed influence,
    S(t)^2 sum_c (sum_{s <= t} (E_c(s) - W_c(s) dLambda(s)) / R(s))^2, with E_c and W_c the
    cluster's weighted events and weight at risk, R the total at risk; the band on the
    log(-log) scale, as lifelines' default. For a twin arm (weights 1/K, clusters = source
    patients): K twins are neither K patients (Greenwood on N x K was ~sqrt(K) too narrow)
    nor one patient's copies (1/K weights with Greenwood, 1.35-1.9 x too wide in a review's
    simulation). `donors`: a second clustering (twins whose data copy the same real donor); the
    variance is then two-way, sources + donors - their (source, donor) cells (Cameron, Gelbach &
    Miller 2011), as the AE incidences' (`services.evaluation.safety.donor_factor`): the twins'
    time to a first AE copies the donors' histories, whose sampling error the source clusters
    alone left out (a twin band of width 0.08 beside its donors' arm's 0.25, an outside review)."""
    t, d = np.asarray(time_, float), np.asarray(event, float) > 0
    w = np.asarray(w, float)
    keep = np.isfinite(t) & np.isfinite(w)
    t, d, w = t[keep], d[keep], w[keep]
    clusters = np.asarray(clusters, dtype=object)[keep]
    donors = None if donors is None else np.asarray(donors, dtype=object)[keep]
    times = np.unique(t[d])
    if not len(times):
        return pd.DataFrame({"time": [0.0], "survival": [1.0], "lo": [1.0], "hi": [1.0]})
    T = len(times)
    at = np.searchsorted(times, t, side="right") - 1            # last event time <= t_i
    event_at = np.searchsorted(times, t)                          # an event's own event time
    W_all = np.zeros(T + 1)
    np.add.at(W_all, at + 1, w)
    R = np.cumsum(W_all[::-1])[::-1][1:]                          # total weight at risk at each event time
    D = np.zeros(T)
    np.add.at(D, event_at[d], w[d])
    dlam = D / R
    surv = np.cumprod(1.0 - dlam)

    def spread(labels, block: int = 2000) -> np.ndarray:
        """sum over the clusters `labels` of their squared summed influence, at each event time
        (clusters taken `block` at a time: one per observation must not need n x T memory)."""
        _, cl = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)
        out = np.zeros(T)
        for start in range(0, cl.max() + 1, block):
            rows = np.flatnonzero((cl >= start) & (cl < start + block))
            c = cl[rows] - start
            W = np.zeros((block, T + 1))
            np.add.at(W, (c, at[rows] + 1), w[rows])                      # column 0: before the first event
            W = np.cumsum(W[:, ::-1], axis=1)[:, ::-1][:, 1:]             # weight at risk (t_i >= s) per cluster
            E = np.zeros((block, T))
            hit = d[rows]
            np.add.at(E, (c[hit], event_at[rows][hit]), w[rows][hit])
            out += np.sum(np.cumsum((E - W * dlam) / R, axis=1) ** 2, axis=0)
        return out

    total = spread(clusters)
    if donors is not None:         # less each (source, donor) cell, which both terms hold
        cells = np.char.add(np.char.add(np.asarray(clusters).astype(str), "|"), np.asarray(donors).astype(str))
        total = total + spread(donors) - spread(cells)
    var = surv ** 2 * np.maximum(total, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        se_ll = np.sqrt(var) / np.abs(surv * np.log(surv))
        lo = surv ** np.exp(z * se_ll)
        hi = surv ** np.exp(-z * se_ll)
    lo = np.where(np.isfinite(lo), lo, np.where(surv > 0, surv, 0.0))
    hi = np.where(np.isfinite(hi), hi, np.where(surv > 0, surv, 0.0))
    out = pd.DataFrame({"time": np.r_[0.0, times], "survival": np.r_[1.0, surv], "lo": np.r_[1.0, lo],
                        "hi": np.r_[1.0, hi]})
    if t.max() > times[-1]:          # the curve goes on, flat, to the last follow-up (as lifelines')
        out = pd.concat([out, out.iloc[[-1]].assign(time=float(t.max()))], ignore_index=True)
    return out
