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
rather than the target arm (`Propensity`). It is consistent when either the twins' mean or the
propensity is right: where the cohort is a randomized arm of the same trial, e is constant and
theta is the difference of the arms' mean prediction errors, unbiased whatever the twins.

Variance: the two independent samples' influence terms, var(d) / n + sum w_j^2 (r_j - r_w)^2 /
(sum w_j)^2 x m_eff / (m_eff - 1), m_eff = (sum w)^2 / sum w^2 the control side's effective
size; Welch-Satterthwaite degrees of freedom. With equal weights this is exactly Welch's t
test of the cohort's d against the controls' r. No generator refits: when the weighted controls
resemble the cohort (the propensity right), a knowledge base that moves the prediction moves
both terms alike and its variation cancels to first order, the control patients' own sampling
variation being the second term. So the interval is right when the propensity is right; when
only the twins are, the estimate stays consistent but the generator's own error (its slopes'
error times the remaining imbalance) is not in the interval, as it is in the twins-only
estimate's refits. The propensity is treated as known (for this estimand its estimation can
move the interval either way; Abadie & Imbens 2016). Known truth (tests/test_doubly_robust.py's
trial: a cohort selected on a high baseline, no effect, twins that carry the baseline forward
where the truth regresses to the mean, no neighbourhood shift): twins alone -5.8 points on
average, doubly robust -0.3 (SD 0.74, interval coverage 0.92, 60 simulated trials); the
remaining -0.3 is the logistic fit's incomplete balance of the odds-weighted controls (cohort
baseline 57.3 vs 56.2 weighted; a balancing-weights propensity would remove it). Needs the
cohort outside the target arm (a placebo twin of a placebo patient has no control patients left
to correct it), and the cohort's own missing values and categories are not flagged unless the
controls have them too (the design is fitted on the controls).
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

PROPENSITY_CLIP = 0.99    # e at most this (odds 99): a saturated propensity cannot hand one control the estimate
_CS = np.logspace(-4, 2, 13)


class Propensity:
    """e(X) = P(cohort | baseline): L2 logistic regression of cohort membership on the
    generator's baseline design (parameter baselines, covariates; missing values imputed and
    flagged, standardised on the controls). Its penalty is chosen once by 5-fold
    cross-validated log loss on everybody, so that a cohort that differs from the controls in
    nothing (a randomized arm) gets a nearly constant e instead of fitted noise; then each
    visit's weights come from a fit on the patients seen at that visit (different drop-out in
    the two groups would otherwise leave the weighted controls unlike the cohort seen there).
    Without usable baseline facts (or fewer than 5 patients a side), e is the share of the
    cohort and ``how`` says so."""

    def __init__(self, cohort: Trial, controls: Trial):
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
        self.how = ("the cross-validated logistic propensity of being in the cohort" if self.C is not None else
                    "a constant propensity (no baseline facts to model it on)")

    def odds(self, cohort_ids, control_ids) -> pd.Series:
        """w = e / (1 - e) of ``control_ids`` from a fit on these patients only."""
        ci = [self._c_pos[u] for u in cohort_ids]
        ki = [self._k_pos[u] for u in control_ids]
        if self.C is None or min(len(ci), len(ki)) < 5:
            e = np.full(len(ki), len(ci) / (len(ci) + len(ki)))
        else:
            from sklearn.linear_model import LogisticRegression

            X = np.vstack([self.Xc[ci], self.Xk[ki]])
            y = np.r_[np.ones(len(ci)), np.zeros(len(ki))]
            e = LogisticRegression(C=self.C, max_iter=2000).fit(X, y).predict_proba(self.Xk[ki])[:, 1]
        e = np.clip(e, 1e-6, PROPENSITY_CLIP)
        return pd.Series(e / (1 - e), index=list(control_ids))


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


def augmented_mean_differences(real: Trial, run: TwinRun, controls: Trial, controls_run: TwinRun,
                               propensity: Propensity, params: list[str] | None = None) -> dict:
    """{(PARAMCD, AVISITN): Augmented} for every visit with at least `MIN_PATIENTS` patients on
    both sides and an effective control size of 2 or more; ``controls`` are the target arm's
    patients with their outcomes, ``controls_run`` their own twins, the weights each visit's
    `Propensity.odds`."""
    out = {}
    cohort = statistics(real, twin_values(run), None, {}, params, set())
    ctrl = statistics(controls, twin_values(controls_run), None, {}, params, set())
    for key, s in cohort.items():
        if key[0] != "mean_difference" or key not in ctrl or len(ctrl[key].pseudo) < MIN_PATIENTS:
            continue
        r = ctrl[key].pseudo
        a = Augmented(s.pseudo, r, propensity.odds(list(s.pseudo.index), list(r.index)))
        if a.m_eff >= 2:
            out[key[1:]] = a
    return out


def interval(a: Augmented, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """(se, low, high, two-sided p) of a t interval with the Welch df."""
    se = math.sqrt(a.var) if a.var > 0 else float("nan")
    if not math.isfinite(se):
        return se, float("nan"), float("nan"), float("nan")
    q = float(stats.t.ppf(1 - alpha / 2, a.df))
    return se, a.theta - q * se, a.theta + q * se, float(2 * stats.t.sf(abs(a.theta) / se, a.df))
