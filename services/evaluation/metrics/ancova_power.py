"""Power and true size of the ANCOVA a trial runs, from the noncentral t distribution.

The planning functions of `procova` size trials with these: one slope on the prognostic index,
one pooled residual variance, df N - 2 - q. Where the arms differ in SD or correlation, the
pooled standard error misstates the estimate's variance, which moves both power and the type I
error (`ancova_size`)."""

from __future__ import annotations

import math

from scipy import stats

__all__ = ["ancova_size", "pooled_ancova", "power_ancova"]


def power_ancova(n_treatment: int, n_control: int, effect: float, sd: float, rho: float = 0.0,
                 alpha: float = 0.05, two_sided: bool = True, n_covariates: int | None = None,
                 sd_treatment: float | None = None, rho_treatment: float | None = None) -> float:
    """Power of the ANCOVA (or t-test when q = 0) from the noncentral t distribution.

    df = N - 2 - q, ncp = |effect| / sqrt(V), V = [sd_c^2 (1 - rho_c^2) / n_c + sd_t^2
    (1 - rho_t^2) / n_t] x (N - 3) / (N - q - 3) (q >= 1). Two-sided power is
    P(T > t_crit) + P(T < -t_crit) with T ~ nct(df, ncp). ``n_covariates`` defaults to 1 when
    rho != 0, else 0. Worked value: 64 per arm, effect 0.5, sd 1, no covariate:
    df 126, ncp 2.828, power 0.8015 (the normal approximation says 0.8074).

    Where the arms differ (``sd_treatment``, ``rho_treatment``), the power is that of the
    analysis a trial runs (`procova_analysis`): one common slope and one pooled residual
    variance (`pooled_ancova`), not of a test that knew each arm's variance.
    """
    sd_t = sd if sd_treatment is None else float(sd_treatment)
    rho_t = rho if rho_treatment is None else float(rho_treatment)
    q = (1 if (rho != 0 or rho_t != 0) else 0) if n_covariates is None else int(n_covariates)
    n = int(n_treatment) + int(n_control)
    df = n - 2 - q
    if df < 1:
        return 0.0
    var, scale = pooled_ancova(int(n_treatment), int(n_control), sd, rho, sd_t, rho_t, q)
    if q >= 1:
        var *= (n - 3) / (n - q - 3) if n - q - 3 > 0 else float("inf")
    if var <= 0:
        return 1.0
    ncp = abs(effect) / math.sqrt(var)
    if two_sided:
        tc = float(stats.t.ppf(1 - alpha / 2, df)) * scale
        return float(stats.nct.sf(tc, df, ncp) + stats.nct.cdf(-tc, df, ncp))
    tc = float(stats.t.ppf(1 - alpha, df)) * scale
    return float(stats.nct.sf(tc, df, ncp))


def pooled_ancova(n_t: int, n_c: int, sd_c: float, rho_c: float, sd_t: float, rho_t: float,
                  q: int) -> tuple[float, float]:
    """(V, c): the variance of the ANCOVA's effect estimate and the factor by which its pooled
    standard error misstates it (critical value x c on the estimate's own scale). The analysis
    fits one slope on the prognostic index (standardised, equal in law in both arms by
    randomisation): beta* = (n_c rho_c sd_c + n_t rho_t sd_t) / N, so each arm's residual
    variance is sd_j^2 (1 - rho_j^2) + (rho_j sd_j - beta*)^2; V = s_c^2 / n_c + s_t^2 / n_t,
    while the pooled variance ((n_c - 1) s_c^2 + (n_t - 1) s_t^2) / (N - 2) x (1/n_c + 1/n_t)
    is what the test divides by. Equal arms: c = 1 and the noncentral t is exact; equal sizes
    with unequal variances: c = 1 too, the t only approximate; otherwise c > 1 costs power (the
    larger arm varies more) and c < 1 inflates the type I error (`ancova_size`)."""
    b_c, b_t = (rho_c * sd_c, rho_t * sd_t) if q >= 1 else (0.0, 0.0)
    beta = (n_c * b_c + n_t * b_t) / (n_c + n_t)
    s_c = sd_c**2 * (1 - rho_c**2) + (b_c - beta) ** 2 if q >= 1 else sd_c**2
    s_t = sd_t**2 * (1 - rho_t**2) + (b_t - beta) ** 2 if q >= 1 else sd_t**2
    var = s_c / n_c + s_t / n_t
    pooled = ((n_c - 1) * s_c + (n_t - 1) * s_t) / max(n_c + n_t - 2, 1) * (1 / n_c + 1 / n_t)
    return var, (math.sqrt(pooled / var) if var > 0 else 1.0)


def ancova_size(n_treatment: int, n_control: int, sd: float, rho: float = 0.0, alpha: float = 0.05,
                two_sided: bool = True, n_covariates: int | None = None, sd_treatment: float | None = None,
                rho_treatment: float | None = None) -> float:
    """The true type I error of the pooled ANCOVA at nominal ``alpha`` when the arms differ in SD
    or correlation (`pooled_ancova`): above ``alpha`` where the smaller arm varies more."""
    sd_t = sd if sd_treatment is None else float(sd_treatment)
    rho_t = rho if rho_treatment is None else float(rho_treatment)
    q = (1 if (rho != 0 or rho_t != 0) else 0) if n_covariates is None else int(n_covariates)
    df = int(n_treatment) + int(n_control) - 2 - q
    if df < 1:
        return float("nan")
    _, scale = pooled_ancova(int(n_treatment), int(n_control), sd, rho, sd_t, rho_t, q)
    tc = float(stats.t.ppf(1 - alpha / 2 if two_sided else 1 - alpha, df)) * scale
    return float(2 * stats.t.sf(tc, df) if two_sided else stats.t.sf(tc, df))
