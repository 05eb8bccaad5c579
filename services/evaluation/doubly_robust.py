"""A doubly robust mean difference of a source cohort against its synthetic control: the twins'
prediction plus the knowledge base's own control patients, weighted by their odds of being
like the cohort.

The plain estimate (`effects`) trusts the twins: mean over the cohort of d_i = Y_i - mu(X_i),
mu(X_i) the mean of patient i's twins. If the generator's mean is wrong for patients like the
cohort, so is the estimate, and only the generator refits widen its interval. The augmented
estimate (the average treatment effect on the treated of Robins, Rotnitzky & Zhao 1994, in the
form of Kang & Schafer 2007 / Chernozhukov et al. 2018) subtracts what the same prediction gets
wrong on the real control patients of the knowledge base's target arm, re-weighted towards the
cohort:

    theta = mean_{i in cohort} d_i  -  sum_j w_j r_j / sum_j w_j,      j in the target arm,

r_j = Y_j - mu(X_j) from twins of the control patient j made by a generator fold that never saw
j (the local generator cross-fits its own knowledge base: neither j's fold model nor its residual
donors hold j's outcome), w_j = e(X_j) / (1 - e(X_j)), e the propensity of being in the cohort
rather than the target arm (`Propensity`: a cross-validated logistic fit by default, or weights
fitted to balance the baseline). It is consistent when either the twins' mean or the propensity
is right: where the cohort is a randomized arm of the same trial, the weights are nearly equal
and theta is the difference of the arms' mean prediction errors, unbiased whatever the twins.

Variance: the two independent samples' influence terms, var(d) / n + sum w_j^2 (r_j - r_w)^2 /
(sum w_j)^2 x m_eff / (m_eff - 1), m_eff = (sum w)^2 / sum w^2 the control side's effective
size; Welch-Satterthwaite degrees of freedom. With equal weights this is exactly Welch's t
test of the cohort's d against the controls' r. No generator refits: when the weighted controls
resemble the cohort, a knowledge base that moves the prediction moves both terms alike and its
variation cancels to first order, the control patients' own sampling variation being the
second term. The weights are treated as known. Measured (bench/doubly_robust.py, figures in
bench/results/inference.log and the README): in null trials resampled from real control arms
(constant propensity) the variance is 0.87-1.11 of the estimates'; in the known-truth trial of
tests/test_doubly_robust.py (a cohort selected on a high baseline, no effect, twins that carry
the baseline forward where the truth regresses to the mean) the twins alone are off by -5.8
points, this estimate by -0.30 with the logistic odds (their weighted controls' baseline 0.12 SD
short of the cohort's) and +0.06 with balancing weights (0.01 SD), whose variance is then 0.86 of
the estimates' [0.62, 1.27] (coverage 0.90 [0.79, 0.96], 60 trials); in control arms split by a
selection on the baseline with such twins, both weightings leave part of the bias (0.12-0.64 SD
of the twins-only estimate's spread) where the twins alone leave 1.5-1.9 SD (ahd, ~10
controls at the visit: 0.58, no better). Needs the cohort outside the target arm
(a placebo twin of a placebo patient has no control patients left to correct it), and the
cohort's own missing values and categories are not flagged unless the controls have them too
(the design is fitted on the controls).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from services.data.trial import Trial
from services.evaluation.effect_stats import MIN_PATIENTS, statistics, twin_values, twins_per_source
from services.generation.run import TwinRun

MAX_ODDS = 99.0     # logistic odds at most this (e 0.99): a saturated propensity cannot hand one control the estimate
_MAX_F = 300.0      # b0 + x beta capped inside the optimiser (exp overflows near 710; the loss is ~1e130 there)
_KKT_TOL = 1e-3     # a balancing fit whose optimality conditions miss by more (relative to the cohort) has failed
_CS = np.logspace(-4, 2, 13)
DR_MEASURES = ("mean_difference", "geometric_mean_ratio")     # what `augmented_effects` augments


class Propensity:
    """The control patients' weights w = e / (1 - e), e(X) = P(cohort | baseline) on the
    generator's baseline design (parameter baselines, covariates; missing values imputed and
    flagged, standardised on the controls), from an L2 logistic regression whose penalty C is
    chosen once by 5-fold cross-validated log loss on everybody, so that a cohort that differs
    from the controls in nothing (a randomized arm) gets nearly equal weights instead of fitted
    noise. Each visit's weights come from a fit on the patients seen there (different drop-out
    in the two groups would otherwise leave the weighted controls unlike the cohort seen there).
    Without usable baseline facts (or fewer than 5 patients a side) the weights are equal and
    ``how`` says so.

    ``method="balancing"``: the covariate-balancing loss of the effect on the treated instead
    (Zhao 2019's tailored loss; entropy balancing, Hainmueller 2012, with the same L2 penalty):
    minimise C [sum_cohort -f(x_i) + sum_controls exp f(x_j)] + |beta|^2 / 2, f = b0 + beta'x,
    w = exp f, whose optimum makes the weights sum to the cohort's size and the weighted
    controls' baseline means equal the cohort's up to beta / (C n), so that a twin error linear
    in the baseline cancels up to that remainder (Zhao & Percival 2017); the logistic odds
    balance the means only on average. The logistic CV's C is a heuristic there (curvatures
    about n Cov(x) vs nm / (n + m) Cov(x), and the CV scores membership, not balance). A visit
    whose balancing fit fails (`balancing_odds` None) takes the logistic odds and ``how`` says
    so. Not the default: the rule declared before its calibration (inference.log, stop 35) asked
    that in baseline-selected designs with wrong twins it leave no more bias than the logistic
    odds in 3 of 4 test trials with a type I error no further from 5 %; it left less bias in 3
    (respiratory, anorexia, arthritis: -0.25 / -0.26 / -0.12 SD against -0.50 / -0.50 / -0.28)
    and more on ahd (+0.64 vs +0.57, ~7 effective controls), but on anorexia its type I was 4.3 %
    against the logistic's 5.0 %, so the rule as worded was not met."""

    def __init__(self, cohort: Trial, controls: Trial, method: str = "logistic"):
        if method not in ("balancing", "logistic"):
            raise ValueError(f"method must be 'balancing' or 'logistic', not {method!r}")
        self.method = method
        from services.generation.local.features import BaselineFeatures

        self.c_ids, self.k_ids = list(cohort.subjects["USUBJID"]), list(controls.subjects["USUBJID"])
        self._c_pos = {u: i for i, u in enumerate(self.c_ids)}
        self._k_pos = {u: i for i, u in enumerate(self.k_ids)}
        feats = BaselineFeatures(list(controls.parameters), controls.covariates).fit(controls, self.k_ids)
        self.Xc, self.Xk = feats.transform(cohort, self.c_ids), feats.transform(controls, self.k_ids)
        X = np.vstack([self.Xc, self.Xk])
        self.C = None
        if X.shape[1] and not np.allclose(X.std(axis=0), 0) and min(len(self.c_ids), len(self.k_ids)) >= 5:
            from sklearn.linear_model import LogisticRegressionCV

            y = np.r_[np.ones(len(self.c_ids)), np.zeros(len(self.k_ids))]
            with warnings.catch_warnings():     # scikit-learn's notices about its future attributes
                warnings.simplefilter("ignore", FutureWarning)
                self.C = float(LogisticRegressionCV(Cs=_CS, cv=5, scoring="neg_log_loss",
                                                    max_iter=2000).fit(X, y).C_[0])
        fitted = {"balancing": "covariate-balancing weights (the propensity's odds fitted to match the cohort's "
                               "baseline means)",
                  "logistic": "e / (1 - e), e the cross-validated logistic propensity of being in the cohort"}[method]
        self._how = fitted if self.C is not None else "equal weights (no baseline facts to model them on)"
        self._odds: dict[tuple, pd.Series] = {}
        self.fell_back = 0      # visits whose balancing fit failed and took the logistic odds

    @property
    def how(self) -> str:
        """The weights in words, for the method text (after the visits' fits: it names fallbacks)."""
        if not self.fell_back:
            return self._how
        return (f"{self._how}; at {self.fell_back} visit(s) no weights balanced the cohort and the odds of the "
                "cross-validated logistic propensity stood in")

    def odds(self, cohort_ids, control_ids) -> pd.Series:
        """w of ``control_ids`` from a fit on these patients only (balancing and equal weights
        sum to the cohort's size; the logistic odds only roughly); one fit per set of patients,
        so both scales of a visit share it."""
        key = (tuple(cohort_ids), tuple(control_ids))
        if key not in self._odds:
            self._odds[key] = self._fit_odds(cohort_ids, control_ids)
        return self._odds[key]

    def _fit_odds(self, cohort_ids, control_ids) -> pd.Series:
        ci = [self._c_pos[u] for u in cohort_ids]
        ki = [self._k_pos[u] for u in control_ids]
        if self.C is None or min(len(ci), len(ki)) < 5:
            w = np.full(len(ki), len(ci) / max(len(ki), 1))
        else:
            w = balancing_odds(self.Xc[ci], self.Xk[ki], self.C) if self.method == "balancing" else None
            if w is None:
                from sklearn.linear_model import LogisticRegression

                self.fell_back += self.method == "balancing"
                X, y = np.vstack([self.Xc[ci], self.Xk[ki]]), np.r_[np.ones(len(ci)), np.zeros(len(ki))]
                e = LogisticRegression(C=self.C, max_iter=2000).fit(X, y).predict_proba(self.Xk[ki])[:, 1]
                w = np.clip(e, 1e-6, MAX_ODDS / (1 + MAX_ODDS))
                w = w / (1 - w)
        return pd.Series(w, index=list(control_ids))


def balancing_odds(Xc: np.ndarray, Xk: np.ndarray, C: float) -> np.ndarray | None:
    """exp(b0 + Xk beta) minimising the penalised tailored loss of `Propensity` (convex; at its
    optimum the weights sum to len(Xc) and Xk' w = sum of Xc's rows - beta / C), or None when
    the optimiser did not reach that optimum (e.g. a cohort separable from the controls, whose
    exact balance no weights achieve) to `_KKT_TOL` of the cohort's size."""
    from scipy import optimize

    n, m = len(Xc), len(Xk)
    xc_sum = Xc.sum(axis=0)

    def loss(th):
        w = np.exp(np.minimum(th[0] + Xk @ th[1:], _MAX_F))
        value = C * (w.sum() - n * th[0] - xc_sum @ th[1:]) + 0.5 * th[1:] @ th[1:]
        return value, np.r_[C * (w.sum() - n), C * (Xk.T @ w - xc_sum) + th[1:]]

    start = np.r_[math.log(n / m), np.zeros(Xk.shape[1])]
    res = optimize.minimize(loss, start, jac=True, method="L-BFGS-B",
                            options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-14})
    th = res.x
    w = np.exp(np.minimum(th[0] + Xk @ th[1:], _MAX_F))
    residual = np.abs(np.r_[w.sum() - n, Xk.T @ w - xc_sum + th[1:] / C]).max() / n
    return w if np.all(np.isfinite(w)) and residual < _KKT_TOL else None


class Augmented:
    """One doubly robust mean difference: estimate, its two variance parts, Welch df and the
    control side's effective size."""

    def __init__(self, d: pd.Series, r: pd.Series, w: pd.Series):
        w = w.reindex(r.index)
        self.n, self.m = len(d), len(r)
        self.plain = float(d.mean())
        self.correction = float((w * r).sum() / w.sum())
        self.theta = self.plain - self.correction
        self.var_cohort = float(d.var(ddof=1) / self.n)
        self.m_eff = float(w.sum() ** 2 / (w**2).sum())
        # x m_eff / (m_eff - 1): with equal weights the control side is s^2 / m, so that the
        # whole is Welch's unequal-variance t (a plug-in divisor would be ~10 % short at 10 controls)
        self.var_controls = float((w**2 * (r - self.correction) ** 2).sum() / w.sum() ** 2
                                  * self.m_eff / max(self.m_eff - 1, 1e-9))     # m_eff >= 2 where used
        var = self.var_cohort + self.var_controls
        den = self.var_cohort**2 / max(self.n - 1, 1) + self.var_controls**2 / (self.m_eff - 1)
        self.var = var
        self.df = var**2 / den if den > 0 else float(self.n - 1)


def control_twins(knowledge_base: Trial, run: TwinRun, controls: list[str], generator: str | None = None,
                  settings: dict | None = None, seed: int = 0, fitted=None) -> TwinRun:
    """Twins of the target arm's own patients, as many per patient as the run made (at most
    20), from a generator fitted on the whole knowledge base (``fitted``, or a fresh one of
    ``generator`` with ``settings``): it predicts each of them by a fold model that excludes
    them (the local generator's cross-fitting)."""
    from services.evaluation.generator_term import make_generator

    k = twins_per_source(run)
    gen = fitted if fitted is not None else make_generator(generator or "local", settings or {}).fit(knowledge_base)
    return gen.generate(knowledge_base.subset(controls).baseline_only(), target_arm=run.target_arm,
                        twins_per_patient=min(k, 20), seed=int(seed) + 4242)


def augmented_effects(real: Trial, run: TwinRun, controls: Trial, controls_run: TwinRun,
                      propensity: Propensity, params: list[str] | None = None,
                      log_params: set[str] | frozenset = frozenset(), dropped: list | None = None) -> dict:
    """{(measure, PARAMCD, AVISITN): Augmented}, measure "mean_difference" for every parameter
    and "geometric_mean_ratio" (the same on the log scale: exp(theta) is the ratio of geometric
    means, real / counterfactual) for ``log_params``, every visit with at least `MIN_PATIENTS`
    patients on both sides and an effective control size of 2 or more; ``controls`` are the
    target arm's patients with their outcomes, ``controls_run`` their own twins, the weights
    each visit's `Propensity.odds` (the same weights for both scales). Keys left out because
    the weights left fewer than 2 effective controls are appended to ``dropped``."""
    out = {}
    cohort = statistics(real, twin_values(run), None, {}, params, set(log_params))
    ctrl = statistics(controls, twin_values(controls_run), None, {}, params, set(log_params))
    for key, s in cohort.items():
        if key[0] not in DR_MEASURES or key not in ctrl or len(ctrl[key].pseudo) < MIN_PATIENTS:
            continue
        r = ctrl[key].pseudo
        a = Augmented(s.pseudo, r, propensity.odds(list(s.pseudo.index), list(r.index)))
        if a.m_eff >= 2:
            out[key] = a
        elif dropped is not None:
            dropped.append(key)
    return out


def interval(a: Augmented, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """(se, low, high, two-sided p) of a t interval with the Welch df."""
    se = math.sqrt(a.var) if a.var > 0 else float("nan")
    if not math.isfinite(se):
        return se, float("nan"), float("nan"), float("nan")
    q = float(stats.t.ppf(1 - alpha / 2, a.df))
    return se, a.theta - q * se, a.theta + q * se, float(2 * stats.t.sf(abs(a.theta) / se, a.df))
