"""`local`: the default, offline twin generator (no network, no model download).

Method (fitted on the TARGET arm of the knowledge base, once per arm, cached). Every choice
below was measured with `bench/backtest.py` (see the report in its docstring).

1. **Prognostic mean.** For every longitudinal parameter p and scheduled visit v with at
   least `min_visit_subjects` observed patients in the target arm: a ridge regression of the
   value on the baseline: the baseline of p (practically unpenalised), the baselines of the
   other parameters and the ADSL covariates (continuous standardised, categorical one-hot,
   mean-imputed with missing indicators). The slopes are shared by the visits of p (fitted on
   the stacked, visit-centred data; penalty by 5-fold cross-validation over patients with the
   one-standard-error rule), each visit keeping its own intercept and its own slope on the
   baseline of p (regression to the mean changes with time; GCV-chosen shrinkage towards the
   shared slope). With little data the model falls back to "value ~ baseline of p".
   Clearly right-skewed positive baselines (bilirubin, counts) enter on the log (log1p with
   zeros) scale; the outcome of such a parameter is modelled on the log or the raw scale,
   whichever predicts the raw values better out of fold (smearing estimate on the log scale),
   unless the raw scale would put more than 1% of values below the parameter's plausible
   floor (bilirubin: 15% of twins were clipped) (`transform="auto"`; "log", "features"
   (log baselines, raw outcomes) and "none" force a choice). On the raw scale the ANCOVA and
   carry-forward of such a parameter read its raw baseline (the references as a statistician
   fits them; the structure records `own_baseline: "raw"`), the ridges its log baseline.
   The mean stays within the observed range +-25%.
2. **Cross-fitting.** The target arm is split into `cv_folds` folds; a patient's residuals
   come from the model fitted on the other folds (out-of-fold residuals keep the real spread:
   in-sample residuals are shrunk). A source that is itself in the target arm is predicted by
   the model (and clip range, residual covariance, Cox model) of the folds that exclude it, so
   none of its own follow-up is used.
3. **Residual trajectory from a neighbour.** Each twin borrows the whole residual vector of
   one donor (all visits and parameters at once, so correlations across visits and
   parameters are kept), a donor among the source's `neighbors` nearest patients of the target
   arm (the retriever's; the source itself is never one). Donors follow one weighted random
   order per source (weights decrease with retrieval distance): twin t takes donor t, so a
   source's twins have distinct donors while K <= neighbors (the neighbourhood grows to K
   patients when K is larger and the arm allows).
   - *Missed visits* of a donor are completed from its own observed residuals: a draw from the
     conditional normal given them (covariance: pairwise correlations of residuals winsorised
     at 3 robust SDs, shrunk 10% towards the identity, times each visit's SD; around a
     carried-forward baseline's drift, not around 0), seeded by (seed,
     donor). Each trajectory stays coherent (a donor doing badly early keeps doing badly)
     instead of splicing patients together; this measured better than borrowing the visit
     from the next neighbour who attended it (`fill="observed"`: coverage 70-78% vs 79-84%
     on pbc, RMSE ratio 0.94-1.02 vs 0.75-1.00).
   - *Re-centring*: the neighbourhood's residual vectors are re-centred on lam x their
     weighted mean (x sqrt(n_eff / (n_eff - 1)) to keep the variance, unless the twins are
     balanced below, which restores the donors' variance itself), lam per parameter =
     how much the neighbourhood mean residual predicts a patient's own residual in the arm
     (least squares, clipped to [0, 1]). So the twins' mean carries only the informative part
     of the neighbours' mean, not its sampling noise (`center`). For a carried-forward
     baseline the residuals' mean is the arm's drift, part of the model's mean: it is kept
     whole (also by the smoothing below) and lam shrinks only the neighbourhood's deviation
     from it. Dropping it would credit the placebo response to the treatment in a synthetic
     control.
   - `smoothing` h > 0: the residual is shrunk by sqrt(1 - h^2) and Gaussian noise with the
     residual covariance x h^2 is added (smoothed bootstrap: same variance and
     correlations). Applied with h >= 0.5 to a twin whose donor repeats (K > arm size - 1).
4. **Values.** mean + residual, back-transformed, clipped to the parameter's observed range
   in the target arm widened by `clip_margin` x range (never below half the smallest value
   for positive parameters, never below 0 for non-negative ones; not widened at an end where
   values pile up, at least 3 and 2 % of them: a scale's floor or ceiling); integer parameters (every
   observed value a whole number) are rounded at random: floor + a Bernoulli of the fraction,
   so a twin's expected value is the unrounded one (rounding to the nearest, `"nearest"`, made
   a 0/1 item's twins repeat their donors' values: simulated binary trials, RMSE ratio vs the
   baseline ANCOVA 1.012 nearest vs 0.991 random; `bench/discrete.py`). The default
   `rounding="matched"` first shrinks a score's unrounded values towards the source's twin
   mean so that the rounded twins keep the model's variance (random rounding adds the
   fraction's f(1 - f): a 1-5 score's twins were too wide, coverage 0.846 on arthritis, 0.805
   matched); `"random"` skips the shrinking; a 0/1 item is the same under both.
   `ADY` = the visit's nominal (median) study day.
5. **Visits generated** (`visits`): `"all"` (default): a value at every scheduled visit with
   at least `min_visit_subjects` patients in the target arm (a complete trajectory: the
   outcome had the patient stayed; the estimand of a hypothetical strategy);
   `"neighbour"`: only the visits the twin's donor attended (mimics drop-out).
6. **Time to event** (when the knowledge base has ADTTE). Neighbours *in prognosis*: the
   source's `tte_neighbors` nearest target-arm patients in the linear predictor of a ridge
   Cox model (`cox_penalizer` 0.1, cross-fitted like the means, same baseline features; a
   penalty chosen per event type by cross-validated partial likelihood was tried on the
   development trials on 12-07 and not kept: C-index gap to Cox at K 20 median +0.006 vs
   +0.005, min -0.031 vs -0.018, since more shrinkage leaves 20 twins less signal above
   their Monte-Carlo noise; at K 100 +0.013 vs +0.007) of the
   event type with the most events; Gaussian kernel weights on the predictor difference
   (`tte_space="prognostic"`; `"retrieval"` uses the retriever's neighbours: C-index 0.75 vs
   0.80 on pbc). `tte_draw="model"` (default): each event type's time drawn from the
   source's own survival curve under that Cox model (the baseline's step curve inverted at the
   step, spread from the midpoint with the previous event time to the midpoint with the
   next, monotone in the quantile; past the knowledge base's last event: no event), censoring
   from the arm's reverse Kaplan-Meier of the event type (past it: the last follow-up), spread
   alike (jittered +-10 % of the gap to the previous step, a quarter of an events-only pbc
   twin arm sat on a real patient's exact days and status; spread between midpoints: 4 %,
   against 2.6 % of real patients sharing a record by chance, and the development trials' KM
   distance ratio median 0.84 -> 0.81, max 0.94 -> 0.91, C-index gap +0.004 -> +0.005); the (event,
   censoring, other cause) quantiles of a source's twins are Roberts' R3 sequence from a
   random start (each twin uniform, twin t the same whatever K, any K twins spread over the
   curve); event types share the quantiles; a composite endpoint contains its parts, and
   when the knowledge base follows both on one clock (pbc: death censored at a transplant)
   death and the composite's other causes are competing risks, each from its own
   cause-specific model (pbc twins' event rates 0.402 / 0.461 vs real 0.401 / 0.462). Every
   twin gets every event type. Each model's baseline hazard H0 is fitted to the arm's
   Kaplan-Meier curve through that model's index of the arm's patients (the average of
   exp(-H0 exp(lp)) equals the curve; `ridge.marginal_baseline`), not Breslow's: the shrunk
   index's Breslow baseline left pbc twins' hazard of death ~8 % too high late (200 null
   splits of the control arm: log HR real vs twins bias -0.39 SD, RMST difference +0.34 SD;
   with it +0.03 / -0.08 SD, and -0.41 / +0.38 -> -0.03 / -0.00 SD when knowledge base and
   cohort are drawn with replacement); the risk order, hence the C-index, is the index's
   either way. Development trials: KM distance ratio median 0.95 (max 0.96) vs Breslow's
   0.81 (0.91), whose curve ran 0.02-0.03 low late in pbc where the sup distance forgives
   it. Limitation: competing causes are each fitted to a Kaplan-Meier that censors the
   other, so with correlated causes the composite's curve sits a little above its own
   Kaplan-Meier (pbc: up to 0.010; grows with common competing events). Development
   trials, 5 half splits, K 20, against `"history"` (same Cox index and baseline): KM
   distance ratio median 0.95 vs 0.86 (max 0.96 vs 0.95), C-index minus Cox median +0.005
   vs +0.006 (min -0.018 vs -0.019); with Breslow's baseline and the earlier restricted-mean
   score 0.84 vs 0.88. The default stays the model draw, the patient's own curve the issue
   asks for, whose null effect bias is measured (above); the history draw's is not.
   `tte_draw="history"`: twin t copies the event history of donor t
   of a weighted random order of these neighbours (every event type at once: time and
   censoring, so the censoring pattern is real and nested endpoints stay coherent, e.g. death
   censored at a transplant), moved to the source's risk under the Cox model (same survival
   quantile), times x exp(0.05 z) (one z per twin, capped at the neighbourhood's last
   follow-up). `tte_draw="km"`: per event type, an event time drawn from the
   neighbourhood's weighted Kaplan-Meier curve (inverse transform at the curve's step,
   spread between the midpoints with the neighbouring events; beyond the last event = no event) and a
   censoring time from its reverse Kaplan-Meier (beyond it: the neighbourhood's last
   follow-up, i.e. administrative censoring); AVAL = the earlier, CNSR = 1 when censored
   first; event types share random numbers.

7. **Adverse events** (when the knowledge base has ADAE): each twin copies the
   treatment-emergent AE history of its donor (event-history donor with
   `tte_draw="history"`, else trajectory donor, else a retrieved neighbour),
   cut at the twin's own end of follow-up (`local/adverse_events.py`).

Randomness is counter-based (`base.uniforms`): each draw is a pure function of (seed, source
or donor, twin index, purpose), so results do not depend on batch, order or concurrency.
Leakage: the sources' post-baseline data are never read (`prepare_sources`). Second-order
dependence remains in donors' out-of-fold residuals (their fold model may have been fitted
with the source) and in the per-parameter transform / integer detection.
"""

from services.generation.local.features import BaselineFeatures, choose_transform, forward, inverse
from services.generation.local.generator import LocalGenerator, default_retriever_factory

__all__ = ["BaselineFeatures", "LocalGenerator", "choose_transform", "default_retriever_factory",
           "forward", "inverse"]
