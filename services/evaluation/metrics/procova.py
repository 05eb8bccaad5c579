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
normal approximation ignores the t-distribution and the degrees of freedom spent on the
covariates, and overstates power at small n (rho 0.9: 3 per arm at 49 % real power).

``method="t"`` (recommended; :func:`procova_plan` with ``method="t"``) instead takes the
smallest n whose power, from the noncentral t distribution of the ANCOVA t statistic, reaches
the target (:func:`power_ancova`): df = N - 2 - q for q covariates, noncentrality
effect / sqrt(V) with V = [sd_c^2 (1 - rho_c^2) / n_c + sd_t^2 (1 - rho_t^2) / n_t] x
(N - 3) / (N - q - 3); the last factor is the expected variance inflation from estimating the
q slopes with normal covariates (E[(xbar_t - xbar_c)' S^-1 (xbar_t - xbar_c)]). ``sd_treatment``
and ``rho_treatment`` let the treated arm differ from the control arm (default: equal); the power
is then that of the pooled ANCOVA a trial runs (one slope, one residual variance), whose true
type I error (``alpha_actual``) exceeds alpha where the smaller arm varies more.

The saving that counts (Schuler et al. 2022; EMA qualification opinion 2022) is against the
baseline ANCOVA a trial would run anyway, not the unadjusted t-test: give ``rho_baseline``
(correlation of the baseline value with the outcome) and ``rho_partial`` (partial correlation
of the twins' prediction with the outcome given the baseline, :func:`estimate_adjustment`) to
:func:`procova_plan`; the PROCOVA variance factor is then (1 - rho_b^2)(1 - rho_partial^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .ancova_power import ancova_size, pooled_ancova, power_ancova
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
    method: str = "normal"
    power_achieved: float = float("nan")
    n_covariates: int = 0
    sd_treatment: float = float("nan")
    rho_treatment: float = float("nan")
    alpha_actual: float = float("nan")


def sample_size(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8,
                ratio: float = 1.0, rho: float = 0.0, two_sided: bool = True,
                min_per_arm: int = 2, method: str = "normal", n_covariates: int | None = None,
                sd_treatment: float | None = None, rho_treatment: float | None = None) -> SampleSize:
    """Two-sample normal-approximation sample size, optionally PROCOVA-adjusted.

    ``effect``: difference in means to detect (sign ignored); ``sd``: outcome standard
    deviation in each arm; ``ratio`` = n_treatment / n_control; ``rho``: correlation between
    prognostic score and outcome (0 = no adjustment; the variance is multiplied by
    1 - rho^2). Example: effect 0.5, sd 1, alpha 0.05 two-sided, power 0.8, 1:1 gives
    62.79 -> 63 per arm.

    ``method="t"``: the smallest n_control (n_treatment = ceil(ratio x n_control)) whose
    noncentral-t power (:func:`power_ancova`, q = ``n_covariates``, default 1 if rho != 0)
    reaches ``power``; the exact fields stay the normal-approximation values. Example: effect
    0.5, sd 1: 64 per arm (normal: 63). ``sd_treatment`` / ``rho_treatment``: the treated
    arm's SD and correlation when they differ from the control arm's.
    """
    _check(effect, sd, alpha, power, ratio, rho)
    if method not in ("normal", "t"):
        raise ValueError("method must be 'normal' or 't'")
    sd_t = sd if sd_treatment is None else float(sd_treatment)
    rho_t = rho if rho_treatment is None else float(rho_treatment)
    if not math.isfinite(sd_t) or sd_t <= 0:
        raise ValueError("sd_treatment must be positive")
    if not -1 <= rho_t <= 1:
        raise ValueError("rho_treatment must be in [-1, 1]")
    factor = 1.0 - rho**2
    q = (1 if (rho != 0 or rho_t != 0) else 0) if n_covariates is None else int(n_covariates)
    # the pooled ANCOVA's variance per control patient and the factor its standard error
    # misstates it by, both as n grows at this allocation (`pooled_ancova`; 1 for equal arms)
    big = 1_000_000
    var_big, scale = pooled_ancova(max(1, round(ratio * big)), big, sd, rho, sd_t, rho_t, q)
    var1 = var_big * big                                         # n_c x Var(effect estimate)
    n_c = var1 * (_z_alpha(alpha, two_sided) * scale + float(stats.norm.ppf(power))) ** 2 / effect**2
    n_t = ratio * n_c
    nc = max(int(min_per_arm), math.ceil(n_c - _EPS))
    nt = max(int(min_per_arm), math.ceil(n_t - _EPS))

    def pw(a: int, b: int) -> float:
        return power_ancova(a, b, effect, sd, rho, alpha, two_sided, q, sd_t, rho_t)

    def enough(c: int) -> bool:
        t = max(int(min_per_arm), math.ceil(ratio * c - _EPS))
        return t + c - 2 - q >= 1 and pw(t, c) >= power

    if method == "t":
        # the smallest n_control whose power reaches the target (power rises with n): bracket
        # from the normal n, then bisect
        lo, hi = max(int(min_per_arm), 2) - 1, max(int(min_per_arm), 2, math.ceil(n_c))
        while not enough(hi):
            lo, hi = hi, 2 * hi
            if hi > 10_000_000:
                raise ValueError("no sample size reaches the power")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if enough(mid) else (mid, hi)
        nc = hi
        nt = max(int(min_per_arm), math.ceil(ratio * nc - _EPS))
    return SampleSize(
        n_treatment=nt, n_control=nc, n_total=nt + nc,
        n_treatment_exact=float(n_t), n_control_exact=float(n_c),
        effect=float(effect), sd=float(sd), alpha=float(alpha), power=float(power),
        ratio=float(ratio), rho=float(rho), two_sided=bool(two_sided),
        variance_factor=float(factor), method=method, power_achieved=pw(nt, nc),
        n_covariates=q, sd_treatment=float(sd_t), rho_treatment=float(rho_t),
        alpha_actual=ancova_size(nt, nc, sd, rho, alpha, two_sided, q, sd_t, rho_t),
    )


def default_effect(sd: float, share: float = 0.4) -> float:
    """The planning default, ``share`` x SD (0.4: a moderate effect), to 3 significant digits:
    rounding in the endpoint's unit (e.g. to 0.001) moved it off 0.4 SD, or to 0, for small SDs."""
    v = share * float(sd)
    if not math.isfinite(v) or v <= 0:
        raise ValueError("the SD must be positive")
    return float(f"{v:.3g}")


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
    method: str = "normal"
    baseline_ancova: SampleSize | None = None
    rho_baseline: float = float("nan")
    rho_partial: float = float("nan")
    rho_partial_used: float = float("nan")
    saving_vs_baseline_total: int | None = None
    saving_vs_baseline_pct: float = float("nan")
    sd_treatment: float = float("nan")
    rho_treatment: float = float("nan")
    rho_treatment_used: float = float("nan")


@dataclass(frozen=True)
class AdjustmentEstimate(ResultMixin):
    """What the prognostic score adds over the baseline, on held-out pairs.

    ``rho_score`` = corr(score, outcome), ``rho_baseline`` = corr(baseline, outcome),
    ``rho_partial`` = partial correlation of score and outcome given the baseline, with its
    one-sided ``confidence`` Fisher-z lower bound ``partial_lower`` (se 1 / sqrt(n - 4));
    ``r2_baseline`` = rho_baseline^2 and ``r2_both`` = R^2 of outcome ~ baseline + score, so
    ``r2_added`` = r2_both - r2_baseline = rho_partial^2 (1 - r2_baseline).
    """

    rho_score: float
    rho_baseline: float
    rho_score_baseline: float
    rho_partial: float
    partial_lower: float
    r2_baseline: float
    r2_both: float
    r2_added: float
    n: int
    confidence: float


COLLINEAR = 1e-9   # 1 - corr(score, baseline)^2 below this: the score is the baseline's line


def estimate_adjustment(predicted, baseline, observed, confidence: float = 0.95) -> AdjustmentEstimate:
    """Correlations of a prognostic score and of the baseline value with the outcome, and the
    partial correlation the score adds given the baseline (complete triples only).
    Use held-out pairs (backtest), never the patients the generator learnt from."""
    p = np.asarray(predicted, dtype=float).ravel()
    b = np.asarray(baseline, dtype=float).ravel()
    o = np.asarray(observed, dtype=float).ravel()
    if not (p.size == b.size == o.size):
        raise ValueError("predicted, baseline and observed must have the same length")
    ok = ~(np.isnan(p) | np.isnan(b) | np.isnan(o))
    p, b, o = p[ok], b[ok], o[ok]
    n = int(p.size)
    nan = float("nan")
    if n < 5 or min(np.ptp(p), np.ptp(b), np.ptp(o)) == 0:
        return AdjustmentEstimate(nan, nan, nan, nan, nan, nan, nan, nan, n, float(confidence))
    c = np.corrcoef(np.vstack([p, b, o]))
    r_po, r_bo, r_pb = float(c[0, 2]), float(c[1, 2]), float(c[0, 1])
    if 1 - r_bo**2 < COLLINEAR:
        # the outcome is a line of the baseline (nobody changed): nothing is left to explain
        partial = float("nan")
    elif 1 - r_pb**2 < COLLINEAR:
        # the score is a linear function of the baseline (a mean model on the baseline alone,
        # twins balanced on it): it adds nothing, and the formula's 0/0 would read as +-1
        partial = 0.0
    else:
        den = math.sqrt(max((1 - r_pb**2) * (1 - r_bo**2), 1e-300))
        partial = min(max((r_po - r_pb * r_bo) / den, -1.0), 1.0)
    r2b = r_bo**2
    if math.isnan(partial):
        return AdjustmentEstimate(r_po, r_bo, r_pb, nan, nan, r2b, r2b, 0.0, n, float(confidence))
    r2_both = 1 - (1 - r2b) * (1 - partial**2)
    zc = float(stats.norm.ppf(confidence))
    lower = max(0.0, math.tanh(math.atanh(min(abs(partial), 1 - 1e-12)) - zc / math.sqrt(n - 4)))
    return AdjustmentEstimate(r_po, r_bo, r_pb, partial, lower, r2b, r2_both, r2_both - r2b, n,
                              float(confidence))


def procova_plan(effect: float, sd: float, rho: float, alpha: float = 0.05,
                 power: float = 0.8, ratio: float = 1.0, two_sided: bool = True,
                 conservative: bool = True, deflation: float = 0.9,
                 n_rho: int | None = None, confidence: float = 0.95,
                 min_per_arm: int = 2, method: str = "normal",
                 rho_baseline: float | None = None, rho_partial: float | None = None,
                 sd_treatment: float | None = None,
                 rho_treatment: float | None = None) -> ProcovaPlan:
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
    ``conservative=False`` the input |rho| is used as is. ``rho`` should be measured on
    held-out patients (the backtest's pairs), never on those the generator learnt from.

    Extensions (all optional; defaults keep the historical behaviour):

    - ``method="t"``: noncentral-t sample sizes (:func:`sample_size`); recommended.
    - ``rho_baseline`` (and ``rho_partial``, the score's partial correlation given the
      baseline, :func:`estimate_adjustment`): also plan the baseline ANCOVA
      (``baseline_ancova``, variance factor 1 - rho_b^2, 1 covariate) and make ``adjusted`` the
      ANCOVA on baseline + score (factor (1 - rho_b^2)(1 - rho_partial_used^2), 2 covariates);
      the conservative rule then applies to ``rho_partial`` (what the twins add), the baseline
      correlation is used as given (conservative: at its one-sided lower bound on ``n_rho``,
      without the drift deflation; both ANCOVA plans use it). ``saving_vs_baseline_*`` is the
      saving that counts. Without ``rho_partial`` the score is assumed to carry the baseline's
      information (rho_partial from rho and the unbounded rho_b, the score explaining its part:
      (1 - rho_b^2)(1 - rho_partial^2) = 1 - max(rho^2, rho_b^2)).
    - ``sd_treatment`` / ``rho_treatment``: the treated arm's SD and correlation when they
      differ from the control arm's (``rho_treatment`` is deflated like ``rho``). With
      ``rho_baseline`` it is the treated arm's correlation of the whole adjustment (multiple
      correlation of baseline and score), and the baseline ANCOVA's treated arm gets
      min(rho_baseline, it).
    """
    if not 0 < deflation <= 1:
        raise ValueError("deflation must be in (0, 1]")
    if not -1 <= rho <= 1:
        raise ValueError("rho must be in [-1, 1]")
    sd_t = None if sd_treatment is None else float(sd_treatment)
    unadj = sample_size(effect, sd, alpha, power, ratio, 0.0, two_sided, min_per_arm, method,
                        0, sd_t, 0.0)
    r = abs(float(rho))
    rho_lower = float("nan")

    def deflate(value: float, lower: float | None) -> float:
        return deflation * (value if lower is None else lower) if conservative else value

    if conservative:
        parts = []
        if n_rho is not None:
            parts.append(f"one-sided {confidence:.0%} Fisher-z lower bound on {int(n_rho)} pairs")
        parts.append(f"x {deflation:g} deflation")
        rule = "conservative: " + ", ".join(parts)
    else:
        deflation = 1.0
        rule = "as given (no deflation)"
    if conservative and n_rho is not None:
        rho_lower = fisher_lower_bound(r, int(n_rho), confidence)
    rho_used = deflate(r, rho_lower if n_rho is not None else None)
    rho_t_used = float("nan")
    base_plan = None
    rb = rp = rp_used = float("nan")
    rt = None
    if rho_treatment is not None:
        rtl = fisher_lower_bound(abs(rho_treatment), int(n_rho), confidence) \
            if (conservative and n_rho is not None) else None
        rt = rho_t_used = deflate(abs(float(rho_treatment)), rtl)
    if rho_baseline is None:
        adj = sample_size(effect, sd, alpha, power, ratio, rho_used, two_sided, min_per_arm,
                          method, None, sd_t, rt)
    else:
        rb = abs(float(rho_baseline))
        if not 0 <= rb <= 1:
            raise ValueError("rho_baseline must be in [-1, 1]")
        if 1 - rb**2 < COLLINEAR:
            raise ValueError("rho_baseline is 1: the outcome is a line of the baseline, so there is no "
                             "variance left to size a trial on")
        rb_raw = rb              # what the score's derived partial correlation is relative to
        if conservative and n_rho is not None:
            # estimated on the same pairs: its lower bound too (no drift deflation, which is the
            # score's), or both ANCOVA plans would rest on a raw estimate
            rb = fisher_lower_bound(rb, int(n_rho), confidence)
            rule += f"; the baseline correlation at its one-sided {confidence:.0%} lower bound"
        # the treated arm's correlation is that of the whole adjustment (baseline and score), so
        # the baseline alone explains no more of the treated outcome than it
        base_plan = sample_size(effect, sd, alpha, power, ratio, rb, two_sided, min_per_arm,
                                method, 1, sd_t, rb if rt is None else min(rb, rt))
        if rho_partial is not None and not math.isfinite(float(rho_partial)):
            raise ValueError("rho_partial is not a number: the score's partial correlation could not be "
                             "estimated (give None to derive it from rho and rho_baseline)")
        if rho_partial is None:
            rp = math.sqrt(max(0.0, 1 - (1 - max(r**2, rb_raw**2)) / (1 - rb_raw**2)))
        else:
            rp = abs(float(rho_partial))
        lower = None
        if conservative and n_rho is not None and int(n_rho) >= 5:
            zc = float(stats.norm.ppf(confidence))
            lower = max(0.0, math.tanh(math.atanh(min(rp, 1 - 1e-12)) - zc / math.sqrt(int(n_rho) - 4)))
        rp_used = deflate(rp, lower)
        factor = (1 - rb**2) * (1 - rp_used**2)
        rho_eff = math.sqrt(max(0.0, 1 - factor))
        rho_used = rho_eff
        adj = sample_size(effect, sd, alpha, power, ratio, rho_eff, two_sided, min_per_arm,
                          method, 2, sd_t, rho_eff if rt is None else rt) if rp_used > 0 else base_plan
        if adj.n_total >= base_plan.n_total:
            # a score that adds too little to pay for its degree of freedom is not put in the
            # model: PROCOVA is then the baseline ANCOVA, saving 0, not "-2 patients" beside "no
            # saving planned" (a browser review; a code review found the same for a partial of 0.05)
            adj = base_plan
            rule += "; the twins add too little beyond the baseline to pay for a covariate, so PROCOVA is the " \
                    "baseline ANCOVA"
        rule += "; applied to the partial correlation given the baseline"
    saving = unadj.n_total - adj.n_total
    saving_b = None if base_plan is None else base_plan.n_total - adj.n_total
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
        method=method,
        baseline_ancova=base_plan,
        rho_baseline=float(rb),
        rho_partial=float(rp),
        rho_partial_used=float(rp_used),
        saving_vs_baseline_total=saving_b,
        saving_vs_baseline_pct=float("nan") if base_plan is None
        else float(100.0 * saving_b / base_plan.n_total),
        sd_treatment=float("nan") if sd_t is None else sd_t,
        rho_treatment=float("nan") if rho_treatment is None else float(rho_treatment),
        rho_treatment_used=float(rho_t_used),
    )
