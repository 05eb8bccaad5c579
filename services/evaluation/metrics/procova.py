"""PROCOVA sample sizes: how many patients a trial saves by adjusting for a twin-based
prognostic score.

PROCOVA (prognostic covariate adjustment; Schuler et al. 2021, qualified by the EMA in 2022)
analyses a continuous outcome with an ANCOVA that includes, as a covariate, each patient's
predicted control outcome (here: from their digital twin). If that prediction correlates
with the outcome with coefficient rho in the control population, the residual variance of
the outcome is sigma^2 * (1 - rho^2), so the sample size of a normal-approximation two-sample
comparison shrinks by that factor.

Formula (allocation ratio r = n_treatment / n_control, z_q the standard-normal q-quantile):

    n_control = (1 + 1/r) * sigma^2 * (1 - rho^2) * (z_{1-alpha/2} + z_{power})^2 / effect^2
    n_treatment = r * n_control

(one-sided tests use z_{1-alpha}). Each arm is rounded up separately, which keeps the
achieved power at or above the target, and is floored at ``min_per_arm`` (default 2). The
normal approximation ignores the t-distribution and the degree of freedom spent on the
covariate; for arms below ~30 patients add a few patients or check by simulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .registry import ResultMixin

_EPS = 1e-9  # rounding guard: 63.0000000001 is 63, not 64


def _z_alpha(alpha: float, two_sided: bool) -> float:
    return float(stats.norm.ppf(1 - alpha / 2 if two_sided else 1 - alpha))


def _check(effect: float, sd: float, alpha: float, power: float, ratio: float,
           rho: float) -> None:
    if not math.isfinite(effect) or effect == 0:
        raise ValueError("effect must be a finite non-zero difference in means")
    if not math.isfinite(sd) or sd <= 0:
        raise ValueError("sd must be positive")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    if not 0 < power < 1:
        raise ValueError("power must be in (0, 1)")
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError("ratio (n_treatment / n_control) must be positive")
    if not -1 <= rho <= 1:
        raise ValueError("rho must be in [-1, 1]")


@dataclass(frozen=True)
class SampleSize(ResultMixin):
    """Per-arm and total sample sizes with the inputs that produced them.

    ``n_control_exact`` / ``n_treatment_exact`` are the unrounded formula values;
    ``variance_factor`` = 1 - rho^2.
    """

    n_treatment: int
    n_control: int
    n_total: int
    n_treatment_exact: float
    n_control_exact: float
    effect: float
    sd: float
    alpha: float
    power: float
    ratio: float
    rho: float
    two_sided: bool
    variance_factor: float


def sample_size(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8,
                ratio: float = 1.0, rho: float = 0.0, two_sided: bool = True,
                min_per_arm: int = 2) -> SampleSize:
    """Two-sample normal-approximation sample size, optionally PROCOVA-adjusted.

    ``effect``: difference in means to detect (sign ignored); ``sd``: outcome standard
    deviation in each arm; ``ratio`` = n_treatment / n_control; ``rho``: correlation between
    prognostic score and outcome (0 = no adjustment; the variance is multiplied by
    1 - rho^2). Example: effect 0.5, sd 1, alpha 0.05 two-sided, power 0.8, 1:1 gives
    62.79 -> 63 per arm.
    """
    _check(effect, sd, alpha, power, ratio, rho)
    factor = 1.0 - rho**2
    z = _z_alpha(alpha, two_sided) + float(stats.norm.ppf(power))
    n_c = (1.0 + 1.0 / ratio) * sd**2 * factor * z**2 / effect**2
    n_t = ratio * n_c
    nc = max(int(min_per_arm), math.ceil(n_c - _EPS))
    nt = max(int(min_per_arm), math.ceil(n_t - _EPS))
    return SampleSize(
        n_treatment=nt, n_control=nc, n_total=nt + nc,
        n_treatment_exact=float(n_t), n_control_exact=float(n_c),
        effect=float(effect), sd=float(sd), alpha=float(alpha), power=float(power),
        ratio=float(ratio), rho=float(rho), two_sided=bool(two_sided),
        variance_factor=float(factor),
    )


def fisher_lower_bound(rho: float, n: int, confidence: float = 0.95) -> float:
    """One-sided lower confidence bound for |rho| estimated on ``n`` pairs (Fisher z).

    tanh(atanh(|rho|) - z_confidence / sqrt(n - 3)), floored at 0. Needs n >= 4.
    """
    if n < 4:
        raise ValueError("the Fisher-z bound needs at least 4 pairs")
    r = min(abs(float(rho)), 1 - 1e-12)
    lb = math.tanh(math.atanh(r) - float(stats.norm.ppf(confidence)) / math.sqrt(n - 3))
    return max(0.0, lb)


@dataclass(frozen=True)
class RhoEstimate(ResultMixin):
    """Pearson correlation of prognostic score and outcome with Fisher-z intervals:
    two-sided ``ci_low``/``ci_high`` at ``confidence``, the one-sided lower bound of |rho|
    ``lower_bound`` (used by conservative planning), ``p_value`` of rho = 0, ``n`` pairs."""

    rho: float
    ci_low: float
    ci_high: float
    lower_bound: float
    p_value: float
    n: int
    confidence: float


def estimate_rho(predicted, observed, confidence: float = 0.95) -> RhoEstimate:
    """Pearson correlation between predicted (twin) and observed control outcomes.

    Pairs with a missing value are dropped. Intervals use Fisher's z transform,
    z = atanh(r) with standard error 1 / sqrt(n - 3) (NaN when n < 4). NaN rho when fewer
    than 3 pairs or a constant vector.
    """
    p = np.asarray(predicted, dtype=float).ravel()
    o = np.asarray(observed, dtype=float).ravel()
    if p.size != o.size:
        raise ValueError("predicted and observed must have the same length")
    ok = ~(np.isnan(p) | np.isnan(o))
    p, o = p[ok], o[ok]
    n = int(p.size)
    nan = float("nan")
    if n < 3 or np.ptp(p) == 0 or np.ptp(o) == 0:
        return RhoEstimate(nan, nan, nan, nan, nan, n, float(confidence))
    res = stats.pearsonr(p, o)
    r = float(res.statistic)
    if n < 4:
        return RhoEstimate(r, nan, nan, nan, float(res.pvalue), n, float(confidence))
    zr = math.atanh(min(max(r, -1 + 1e-12), 1 - 1e-12))
    se = 1.0 / math.sqrt(n - 3)
    zc = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    return RhoEstimate(
        rho=r,
        ci_low=math.tanh(zr - zc * se),
        ci_high=math.tanh(zr + zc * se),
        lower_bound=fisher_lower_bound(r, n, confidence),
        p_value=float(res.pvalue),
        n=n,
        confidence=float(confidence),
    )


@dataclass(frozen=True)
class ProcovaPlan(ResultMixin):
    """Unadjusted versus PROCOVA-adjusted sample sizes and the saving.

    ``rho`` is the input correlation, ``rho_lower`` its Fisher-z one-sided lower bound (NaN
    when ``n_rho`` was not given or ``conservative`` is off), ``rho_used`` the value that
    entered the formula. ``saving_*`` are unadjusted minus adjusted patients;
    ``saving_pct`` is the total saving as a percentage of the unadjusted total.
    """

    unadjusted: SampleSize
    adjusted: SampleSize
    rho: float
    rho_lower: float
    rho_used: float
    deflation: float
    conservative: bool
    n_rho: int | None
    saving_total: int
    saving_control: int
    saving_treatment: int
    saving_pct: float
    rule: str


def procova_plan(effect: float, sd: float, rho: float, alpha: float = 0.05,
                 power: float = 0.8, ratio: float = 1.0, two_sided: bool = True,
                 conservative: bool = True, deflation: float = 0.9,
                 n_rho: int | None = None, confidence: float = 0.95,
                 min_per_arm: int = 2) -> ProcovaPlan:
    """Sample sizes without and with PROCOVA adjustment, and the patients saved.

    ``rho`` is the correlation between the twin-based prognostic score and the outcome,
    estimated on historical control patients (see :func:`estimate_rho`). An optimistic rho
    under-powers the trial, so by default (``conservative=True``) it is deflated in two steps:

    1. estimation uncertainty: if ``n_rho`` (the number of pairs rho was estimated on) is
       given, |rho| is replaced by the lower bound of a one-sided ``confidence`` (95%)
       Fisher-z interval, tanh(atanh|rho| - z_0.95 / sqrt(n_rho - 3));
    2. population drift between the historical data and the new trial: the result is
       multiplied by ``deflation`` (default 0.9).

    Both steps follow the guidance of Schuler et al. (2021) and the EMA qualification opinion
    (2022) to plan with a conservative (deflated) estimate of the prognostic correlation; the
    numbers (95%, 0.9) are TwinArm defaults, not values prescribed by those documents. With
    ``conservative=False`` the input |rho| is used as is.
    """
    if not 0 < deflation <= 1:
        raise ValueError("deflation must be in (0, 1]")
    if not -1 <= rho <= 1:
        raise ValueError("rho must be in [-1, 1]")
    unadj = sample_size(effect, sd, alpha, power, ratio, 0.0, two_sided, min_per_arm)
    r = abs(float(rho))
    rho_lower = float("nan")
    if conservative:
        parts = []
        base = r
        if n_rho is not None:
            rho_lower = fisher_lower_bound(r, int(n_rho), confidence)
            base = rho_lower
            parts.append(f"one-sided {confidence:.0%} Fisher-z lower bound on {int(n_rho)} pairs")
        rho_used = deflation * base
        parts.append(f"x {deflation:g} deflation")
        rule = "conservative: " + ", ".join(parts)
    else:
        rho_used = r
        deflation = 1.0
        rule = "as given (no deflation)"
    adj = sample_size(effect, sd, alpha, power, ratio, rho_used, two_sided, min_per_arm)
    saving = unadj.n_total - adj.n_total
    return ProcovaPlan(
        unadjusted=unadj,
        adjusted=adj,
        rho=float(rho),
        rho_lower=float(rho_lower),
        rho_used=float(rho_used),
        deflation=float(deflation),
        conservative=bool(conservative),
        n_rho=None if n_rho is None else int(n_rho),
        saving_total=int(saving),
        saving_control=int(unadj.n_control - adj.n_control),
        saving_treatment=int(unadj.n_treatment - adj.n_treatment),
        saving_pct=float(100.0 * saving / unadj.n_total),
        rule=rule,
    )
