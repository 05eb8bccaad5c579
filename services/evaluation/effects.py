"""Treatment effects from twin arms, with the patient as the unit of inference.

Two designs.

**1. Synthetic control for a treated cohort** (:func:`synthetic_control_effects`). The real
source cohort (e.g. the treated arm, with its real post-baseline outcomes) is compared with
its twins generated under the control arm by a generator fitted on a knowledge base.

- *Continuous endpoint, per PARAMCD and scheduled visit*: for every source patient i observed
  at the visit, d_i = Y_i - mean of the patient's K twins at that visit (the K twins are
  averaged first: the patient, not the twin, is the unit). The estimate is mean_i d_i
  (real minus counterfactual). For a parameter whose values are all positive in the real
  cohort and in the knowledge base's target arm (`effect_stats.ratio_parameters`, decided
  before any twin is drawn), also the *ratio of geometric means* (real / twins): the same on
  the log scale, d_i = log Y_i - mean of log of i's twins, exp of the mean and of its
  interval. Its null of 1 asks more of the twins than the mean difference's 0 (their
  distribution right on the log scale, not only their mean), and its interval is not yet
  calibrated: on ahd [test] (split design, 1,000 replicates) it rejected 6.8 / 7.7 / 7.9 % at
  K 1 / 5 / 20, variance 0.82-0.88 of the estimates' (the generator term falls short on the
  log scale), where the real-patient log ANCOVA rejects 4.9 %. It is the analysis a statistician
  makes primary for a skewed positive endpoint (a lab value such as bilirubin), where a t
  reference on the raw scale is conservative at small n: on ahd's week-4 bilirubin (20
  placebo patients at the visit, skewness 2.8) the real-patient baseline ANCOVA of the
  calibration bench's null cohorts rejects 2.3 % raw vs 4.65 % on the log scale (split
  design, 4,000 replicates; bootstrap design 3.9 vs 5.0 %).
- *Doubly robust mean difference* (``mean_difference_dr``, `run_effects` for a generator whose
  twins cost nothing; `doubly_robust_effects`): the estimate above minus the twins' own
  weighted mean error on the knowledge base's target-arm patients (cross-fitted), weights from
  the propensity of being in the cohort; right when either the twins' mean or the propensity
  is (`services.evaluation.doubly_robust` says how and why its interval needs no refits). For
  the ratio parameters the same on the log scale (``geometric_mean_ratio_dr``): a ratio of
  geometric means whose interval does not rest on the log-scale generator term that falls short
  above (on ahd 4.3 / 6.3 % in the split / bootstrap designs, bench/doubly_robust.py).
- *Time to event, per PARAMCD*: hazard ratio real vs twins from a Cox model (Breslow ties) in
  which each twin has weight 1/K, so each patient's twins together weigh one patient; and the
  difference in restricted mean survival time (RMST, real minus twins) up to ``tau``
  (default: when 90 % of the knowledge base's target arm had ended follow-up, capped at the
  arms' longest follow-up: `effect_stats.horizon`), from Kaplan-Meier curves with the
  same weights.

Variance: by the law of total variance, conditioning on the fitted generator g,

    Var(theta) = E[Var(theta | g)] + Var(E[theta | g])
               =  patient term      +  generator term.

- *Patient term*: given g, the clusters (real patient i, its K twins) are independent and
  identically distributed (twins of different patients use independent random numbers), so
  the cluster-robust (sandwich) variance with clusters = source patients is consistent: the
  sample variance of d_i / n for a mean difference, Lin & Wei (1989) robust variance of the
  weighted Cox score for log HR, and the influence functions of the Kaplan-Meier RMST
  (Greenwood form) summed per cluster for the RMST difference. This term includes the twins'
  Monte-Carlo noise, which falls with K.
- *Generator term*: the generator learnt from a finite knowledge base; another knowledge base
  would have given other twins for everybody at once. It is estimated by a bootstrap that
  refits the generator ``refits`` (B) times on knowledge bases whose target arm is resampled
  with replacement (patients duplicated under new ids; sources kept once, never duplicated, so
  a source can never borrow from a copy of itself) and regenerates min(K, ``boot_twins``) twins
  of the *same* sources, what the run generated (K = the most twins a source has). The count
  matters at K = 1: a lone twin's donor residual is not balanced, so the clipping to the
  scale, back-transforms and rounding move its expectation differently (respiratory, split
  design, 1,000 paired replicates: 0.00566 from 1-twin refits vs 0.00457 from 10; in 150
  replicates about a quarter of the gap was the floor at 0 below, which bound in 17 % of the
  1-twin refit sets and never at 10). A refit of a run of K < ``boot_twins`` twins averages
  ceil(boot_twins / K) independent draws of its K twins (`generator_term.draws_for`): the
  same expectation, with the Monte-Carlo noise of about ``boot_twins`` twins (a single draw
  of 1 twin estimated the term with so much noise that ahd's K 1 test, with Satterthwaite df
  near 8, rejected 1.4-1.5 % at 5 %). For the local generator the refits hold the structure
  the run's fit chose (per parameter its outcome scale, mean model and baseline scale:
  `bootstrap_settings`) and re-estimate everything else, so the term is the variance *given the chosen structure* (the
  uncertainty of the choice itself is not counted): a knowledge base with duplicated patients
  re-chooses far more often than a new real one would (epilepsy's half knowledge bases chose
  `carry` 30 of 30 times, their bootstrap copies 122 of 150; pbc `ridge` 24 of 30 vs 68 of
  150), and re-choosing doubled this term on epilepsy (1.33 vs 0.63 held, against a true
  generator share near 0; pbc 0.21 vs 0.22 against 0.18). Copies sharing their original's
  fold and penalties counting patients do not cure it (at 93ffc9a: epilepsy 20 of 20 half
  knowledge bases `carry` on log1p, 83 of 100 bootstrap copies; btheb two half knowledge
  bases disagree 18 % of the time, a bootstrap copy and its original 44 %), so neither
  holding nor re-choosing counts the choice's variability right (btheb's variance was 10-14 %
  short mostly because carried-forward twins dropped the drift, fixed in c36b6d6; a
  selection-variance term added 2-3 %). Then v_g = max(0, between - MS_int / n), between =
  Var_b(theta_b) (ddof 1) over the refits holding the statistic and MS_int the interaction
  mean square of the refits' pseudo-values (patients x refits): the part of a refit's twins
  that moves with patient and knowledge base jointly, and their Monte-Carlo noise, which the
  patient term already counts (`services.evaluation.generator_term` says how and why). This
  term does not fall with K (it depends on K only through the refits' twin count): more twins
  never buy more certainty than the knowledge base holds.

The interval is theta +- t_{df, 1-alpha/2} * sqrt(patient + generator) with Satterthwaite
degrees of freedom df = (v_p + v_g)^2 / (v_p^2 / (n - 1) + between^2 / (B - 1) +
(MS_int / n)^2 / ((n - 1)(B - 1))) (the generator term is a difference of two mean squares);
log scale for the hazard ratio. The patient term is the one of the run being analysed (its K);
the generator term is that of refits generating min(K, ``boot_twins``) twins, averaged over
ceil(boot_twins / K) draws when K is smaller.

Assumptions (write them in the report): the knowledge base's target arm and the source cohort
are different patients (true for a synthetic control of a treated arm; when sources are in the
target arm, the generator's cross-fitting keeps each source out of its own twin, but the
decomposition is then approximate); the twins' visits are compared where the real patient was
observed (a hypothetical "had they been observed" estimand under missing-at-random given
baseline). The LLM generator can be used (``generator="llm"``) but each refit regenerates
every twin: about B x n x ``boot_twins`` calls whatever K.

**2. Twin-adjusted randomized trial (PROCOVA)** (`services.evaluation.procova_analysis.procova_effects`): OLS of the outcome
at one visit on the arm indicator alone (unadjusted), plus the baseline value (baseline
ANCOVA), plus the prognostic score (mean of the patient's twins under control, generated from
the baseline by a generator that never saw the patient's outcome), and with both. Classical
(homoscedastic) OLS standard errors, t intervals with n - p degrees of freedom, as statsmodels
``OLS(...).fit()``. The prognostic score is a fixed baseline covariate, so these tests are exact
under the linear model whatever the quality of the twins (Schuler et al. 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from services.data.trial import Trial
from services.evaluation.effect_stats import (
    MIN_PATIENTS,
    horizon,
    ratio_parameters,
    statistics,
    twin_tte,
    twin_values,
    twins_per_source,
)
from services.evaluation.generator_term import (
    NO_GENERATOR_TERM,
    GeneratorBootstrap,
    GeneratorTerm,
    bootstrap_settings,
    generator_bootstrap,
)
from services.evaluation.run_store import cached_in_run
from services.generation.run import TwinRun

UNIT = "patients"
MEASURE_LABELS = {"mean_difference": "mean difference", "mean_difference_dr": "mean difference, doubly robust",
                  "geometric_mean_ratio": "ratio of geometric means",
                  "geometric_mean_ratio_dr": "ratio of geometric means, doubly robust",
                  "hazard_ratio": "hazard ratio", "rmst_difference": "RMST difference (days)"}   # screen, report, CLI
PER_VISIT_MEASURES = ("mean_difference", "mean_difference_dr", "geometric_mean_ratio",
                      "geometric_mean_ratio_dr")   # one per visit, in this order
RATIO_MEASURES = ("hazard_ratio", "geometric_mean_ratio", "geometric_mean_ratio_dr")   # on the log scale, shown exp'd
RATIO_CAVEAT = "too narrow on a test trial (ahd: 6.8-7.9 % rejections at nominal 5 %)"   # the ratio's interval: method, screen
EFFECTS_VERSION = 17   # bump when the figures change meaning (3: refits hold the run's structure; 4: their penalties count patients, not copies; 5: event times jittered over the gap; 6: event baselines fitted to the Kaplan-Meier; 7: carried-forward twins keep the drift; 8: Satterthwaite df of between - MC; 9: two-way generator term; 10: refits generate min(K, boot_twins) twins; 11: averaged over ceil(boot_twins / K) draws, boot_twins 10 by default; 12: ratio of geometric means added, other figures unchanged; 13: doubly robust mean difference added, other figures unchanged; 14: effective_controls and the doubly robust ratio of geometric means added, other figures unchanged; 15: balanced twins keep the donors' variance, so the refits' raw-scale means of log-scale twins move; 16: no hazard ratio where one side has no events; 17: the refits' event curves spread their last step no further than the last follow-up, and keep a scale's ceiling)


@dataclass(frozen=True)
class Effect:
    """One estimated effect. ``estimate``/``ci_low``/``ci_high`` are on the natural scale
    (a ratio for the `RATIO_MEASURES`, whose ``se`` is
    that of its log). ``var_patients`` / ``var_generator`` split the variance (log scale for a ratio)."""

    design: str            # "synthetic_control" | "randomized"
    measure: str           # "mean_difference" | "geometric_mean_ratio" | their "_dr" (doubly robust) | "hazard_ratio" | "rmst_difference"
    paramcd: str
    avisitn: float | None
    avisit: str
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    df: float
    method: str
    unit: str = UNIT
    n_patients: int = 0
    n_treatment: int = 0
    n_control: int = 0
    K: int | None = None
    B: int | None = None
    var_patients: float = float("nan")
    var_generator: float = float("nan")
    tau: float | None = None
    analysis: str = ""     # randomized: unadjusted | ancova_baseline | procova | procova_baseline
    alpha: float = 0.05
    effective_controls: float | None = None     # doubly robust: (sum w)^2 / sum w^2 of its weighted controls

    def as_dict(self) -> dict:
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, (np.floating, np.integer)):
                v = v.item()
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            out[k] = v
        return out


def effects_table(effects: Iterable[Effect]) -> pd.DataFrame:
    """The effects as a DataFrame (one row each)."""
    return pd.DataFrame([e.as_dict() for e in effects])


def effects_json(effects: Iterable[Effect]) -> list[dict]:
    """JSON-able list for `twinarm evaluate --json` (`effects` section): NaN becomes None."""
    return [e.as_dict() for e in effects]


# ==========================================================================================
# public: synthetic control


def _exp(x: float) -> float:
    """exp for a ratio's log-scale bound: infinite past float range (with 2 or 3 refits the
    Satterthwaite df of the generator term can be near 1, and the t quantile huge), not an
    OverflowError that lost every other effect (an outside review, `evaluate --refits 3`)."""
    return math.exp(x) if x < 709.0 else math.inf


def _combine(theta: float, v_p: float, gen: GeneratorTerm, n: int, alpha: float):
    var = v_p + (gen.variance if math.isfinite(gen.variance) else 0.0)
    if not (math.isfinite(var) and var > 0):
        return float("nan"), float("nan"), float("nan"), float("nan"), float("nan")
    se = math.sqrt(var)
    den = v_p**2 / max(n - 1, 1) + gen.df_term
    df = var**2 / den if den > 0 else float(n - 1)
    q = float(stats.t.ppf(1 - alpha / 2, df))
    p = float(2 * stats.t.sf(abs(theta) / se, df))
    return se, theta - q * se, theta + q * se, p, df


def synthetic_control_effects(real: Trial, run: TwinRun, knowledge_base: Trial,
                              generator: str | None = None, settings: dict | None = None,
                              refits: int = 20, boot_twins: int = 10, alpha: float = 0.05,
                              seed: int = 0, tau: float | dict[str, float] | None = None,
                              params: list[str] | None = None, tte_params: list[str] | None = None,
                              bootstrap: GeneratorBootstrap | None = None,
                              progress: Callable[[int, int], object] | None = None) -> list[Effect]:
    """Effects of the real source cohort against its twins (see the module docstring).

    ``real``: the source cohort with its real post-baseline outcomes (``trial.subset(ids)``);
    ``run``: its twin run; ``knowledge_base``: what the generator was fitted on;
    ``generator``/``settings``: default to the run's manifest. ``refits`` = B generator refits
    (0 = patient term only, which is NOT honest about the generator: method says so).
    ``boot_twins``: twins per source in each refit (10, what `bench/inference.py` calibrates;
    a run of K < 10 twins averages ceil(10 / K) draws of K).
    ``tau``: RMST horizon in days (number, or per PARAMCD; default `effect_stats.horizon`).
    ``params`` / ``tte_params`` restrict the endpoints. A precomputed ``bootstrap`` (same
    sources, same taus) may be passed to share refits between analyses: for runs of several K,
    ``generator_bootstrap_by_twins(..., twins_per_refit=boot_twins)[min(K, boot_twins)]`` (the
    caller picks the count; and ``log_params=effect_stats.ratio_parameters(real,
    knowledge_base, target_arm)``).

    Returns one :class:`Effect` per continuous PARAMCD x visit (``mean_difference``; and
    ``geometric_mean_ratio`` for the `ratio_parameters`) and two
    per time-to-event PARAMCD (``hazard_ratio``, ``rmst_difference``), with ``unit="patients"``,
    ``n_patients``, ``K`` (twins per patient of the run) and ``B``.
    """
    man = run.manifest or {}
    generator = generator or man.get("generator") or "local"
    settings = dict(man.get("settings") or {}) if settings is None else dict(settings)
    settings = bootstrap_settings(run, generator, settings)
    target_arm = run.target_arm or knowledge_base.control_arm
    src = set(run.adsl["SRCSUBJID"])
    real = real.subset([u for u in real.subjects["USUBJID"] if u in src], name=real.name)
    k = twins_per_source(run)
    tte_ps = [] if real.tte is None or run.tte is None else [
        p for p in (tte_params or real.tte_parameters) if p in set(run.tte["PARAMCD"])]
    if isinstance(tau, dict):
        rules = {p: (float(tau[p]), "given") for p in tte_ps if p in tau}
    else:
        rules = {p: ((float(tau), "given") if tau is not None else horizon(real, run, p, knowledge_base, target_arm))
                 for p in tte_ps}
    taus = {p: tr[0] for p, tr in rules.items()}
    taus = {p: t for p, t in taus.items() if math.isfinite(t)}
    logs = ratio_parameters(real, knowledge_base, target_arm)
    main = statistics(real, twin_values(run), twin_tte(run), taus, params, logs)
    if bootstrap is None and refits > 1 and main:
        bootstrap = generator_bootstrap(real, knowledge_base, target_arm, generator, settings, refits,
                                        boot_twins, seed, taus, params, progress, run_twins=k, log_params=logs)
    b = bootstrap.B if bootstrap is not None else 0
    labels = _visit_labels(real)
    out = []
    for key, (theta, v_p, n, _) in main.items():
        measure, p, v = key
        gen = bootstrap.variance(key) if bootstrap is not None else NO_GENERATOR_TERM
        se, lo, hi, pval, df = _combine(theta, v_p, gen, n, alpha)
        if bootstrap is not None and not math.isfinite(gen.variance):
            how = (f"patient-level cluster-robust variance only: fewer than 2 of the {b} refits (or "
                   "fewer than 2 patients in all of them) held this statistic, so the generator "
                   "uncertainty is NOT included")
        elif bootstrap is not None:
            held = (" with the run's model structure held (variance given that structure)"
                    if bootstrap.structure_held else "")
            twins = f"{bootstrap.boot_twins} twin" + ("s" if bootstrap.boot_twins != 1 else "") + " each"
            if bootstrap.draws > 1:
                twins += f", mean of {bootstrap.draws} independent draws"
            kbs = ("bootstrap knowledge bases" if not bootstrap.subsample else
                   f"knowledge bases subsampled without replacement ({bootstrap.subsample:g} of the target arm; "
                   "delete-d jackknife, x r / d)")
            how = (f"patient-level cluster-robust variance + generator variance from {b} refits on "
                   f"{kbs}{held} ({twins}; the patient x "
                   "knowledge-base interaction and Monte-Carlo noise taken out); Satterthwaite t")
        else:
            how = "patient-level cluster-robust variance only (generator uncertainty NOT included)"
        if measure == "mean_difference":
            method = "mean of (real - mean of own K twins) over patients; " + how
        elif measure == "geometric_mean_ratio":
            method = ("exp of the mean of (log real - mean of log of own K twins) over patients: ratio of "
                      "geometric means, real / twins (a parameter whose values are all positive); log scale; " + how
                      + "; NOT yet calibrated: " + RATIO_CAVEAT)
        elif measure == "hazard_ratio":
            method = "Cox (Breslow), real vs twins weighted 1/K, clusters = patients; log scale; " + how
        else:
            method = (f"Kaplan-Meier RMST to tau={taus[p]:g} d ({rules[p][1]}), real minus twins "
                      "weighted 1/K; " + how)
        est = theta
        if measure in RATIO_MEASURES:
            est, lo, hi = _exp(theta), _exp(lo), _exp(hi)
        out.append(Effect(
            design="synthetic_control", measure=measure, paramcd=p, avisitn=v,
            avisit=str(labels.get((p, v), "")) if v is not None else "",
            estimate=float(est), se=float(se), ci_low=float(lo), ci_high=float(hi), p_value=pval,
            df=float(df), method=method, n_patients=int(n), n_treatment=int(n), n_control=int(n),
            K=k, B=b, var_patients=float(v_p), var_generator=float(gen.variance),
            tau=taus.get(p) if measure == "rmst_difference" else None, alpha=alpha,
        ))
    out.sort(key=_display_order)
    return out


def _visit_labels(real: Trial) -> dict:
    """{(PARAMCD, AVISITN): AVISIT} of the real cohort's visits."""
    vv = real.visit_values
    if not len(vv):
        return {}
    return vv.drop_duplicates(["PARAMCD", "AVISITN"]).set_index(["PARAMCD", "AVISITN"])["AVISIT"].to_dict()


def _display_order(e: Effect) -> tuple:
    """Per-visit measures first, in `PER_VISIT_MEASURES` order, then by parameter and visit."""
    m = PER_VISIT_MEASURES.index(e.measure) if e.measure in PER_VISIT_MEASURES else len(PER_VISIT_MEASURES)
    return m, e.paramcd, e.avisitn or 0, e.measure


DR_METHOD = ("mean of (real - mean of own K twins) over patients minus the twins' weighted mean error on the "
             "knowledge base's own {arm} patients (cross-fitted twins; weights: {how}, fitted per "
             "visit on the patients seen there): doubly robust, consistent when either the twins' "
             "mean or the propensity is right; Welch t of the two samples' influence terms, the weights treated "
             "as known, no refits, right when "
             "the propensity is (the generator's own error is then balanced out; under strong selection "
             "somewhat short)")
DR_RATIO_METHOD = ("exp of the doubly robust mean difference on the log scale (log real, mean of log of own "
                   "K twins): ratio of geometric means, real / counterfactual, for a parameter whose values are all "
                   "positive; the same controls and weights as the mean difference: " + DR_METHOD)


def doubly_robust_effects(real: Trial, run: TwinRun, knowledge_base: Trial, generator: str | None = None,
                          settings: dict | None = None, alpha: float = 0.05, seed: int = 0,
                          params: list[str] | None = None) -> tuple[list[Effect], str]:
    """(effects, note): the doubly robust mean difference of every visit, and its ratio of
    geometric means where `ratio_parameters` allows one (`services.evaluation.doubly_robust`),
    with the knowledge base's target-arm patients that are not sources as the controls; no
    effects, and a note saying why, when the cohort is in the target arm itself, fewer than
    `MIN_PATIENTS` controls remain or the generator calls a model per twin (and a note naming
    the visits the weights left without 2 effective controls). One method text serves every visit (Compare and the report show one per
    measure), so it names no visit's counts."""
    from services.evaluation import doubly_robust as dr
    from services.generation import GENERATORS

    man = run.manifest or {}
    generator = generator or man.get("generator") or "local"
    cls = GENERATORS.get(generator)
    if cls is None or cls.capabilities.needs_network:
        return [], f"no doubly robust estimate for the {generator} generator (its control twins would cost a call each)"
    settings = bootstrap_settings(run, generator, dict(man.get("settings") or {}) if settings is None else settings)
    arm = run.target_arm or knowledge_base.control_arm
    sources = set(run.adsl["SRCSUBJID"]) & set(real.subjects["USUBJID"])
    subj = knowledge_base.subjects
    in_arm = set(subj.loc[subj["ARM"] == arm, "USUBJID"])
    controls = sorted(in_arm - sources)
    if sources & in_arm:
        return [], (f"no doubly robust estimate: {len(sources & in_arm)} source patients are in the target arm "
                    f"'{arm}' itself, whose patients it would use as controls")
    if len(controls) < MIN_PATIENTS:
        return [], f"no doubly robust estimate: {len(controls)} patients of '{arm}' in the knowledge base"
    real = real.subset(sorted(sources), name=real.name)
    ctl_trial = knowledge_base.subset(controls)
    ctl_run = dr.control_twins(knowledge_base, run, controls, generator, settings, seed)
    prop = dr.Propensity(real, ctl_trial)
    logs = ratio_parameters(real, knowledge_base, arm)
    dropped: list = []
    res = dr.augmented_effects(real, run, ctl_trial, ctl_run, prop, params, logs, dropped)
    labels = _visit_labels(real)
    k = twins_per_source(run)
    out = []
    for (measure, p, v), a in res.items():
        se, lo, hi, pval = dr.interval(a, alpha)
        est, method = a.theta, DR_METHOD
        if measure == "geometric_mean_ratio":
            est, lo, hi, method = _exp(a.theta), _exp(lo), _exp(hi), DR_RATIO_METHOD
        out.append(Effect(
            design="synthetic_control", measure=f"{measure}_dr", paramcd=p, avisitn=v,
            avisit=str(labels.get((p, v), "")), estimate=est, se=se, ci_low=lo, ci_high=hi, p_value=pval,
            df=a.df, method=method.format(arm=arm, how=prop.how), n_patients=a.n, n_treatment=a.n,
            n_control=a.m, K=k, B=0, var_patients=a.var, var_generator=0.0, analysis="doubly_robust", alpha=alpha,
            effective_controls=a.m_eff))
    note = ""
    if dropped:
        note = (f"no doubly robust estimate at {len(dropped)} parameter-visit(s) where the weights left fewer than 2 "
                "effective controls (the cohort unlike every control there): "
                + ", ".join(f"{p} {labels.get((p, v), v)}" for p, v in dict.fromkeys((p, v) for _, p, v in dropped)))
    return out, note


def _no_hazard_ratio_note(real: Trial, run: TwinRun, effects: list[Effect]) -> str:
    """Why an event type has an RMST difference but no hazard ratio: one side had no events."""
    shown = {e.paramcd for e in effects if e.measure == "hazard_ratio"}
    missing = [p for p in dict.fromkeys(e.paramcd for e in effects if e.measure == "rmst_difference")
               if p not in shown]
    parts = []
    for p in missing:
        n_real = int((real.tte.loc[real.tte["PARAMCD"] == p, "CNSR"] == 0).sum())
        n_twins = int((run.tte.loc[run.tte["PARAMCD"] == p, "CNSR"] == 0).sum())
        parts.append(f"no hazard ratio for {p}: {n_real} events among the real patients and {n_twins} among "
                     "their twins; with none on one side the hazard ratio is 0 or infinite (not estimable)")
    return "; ".join(parts)


def run_effects(knowledge_base: Trial, run: TwinRun, refits: int | None = None, seed: int = 0,
                progress: Callable[[int, int], object] | None = None) -> dict:
    """The effects section of a run (Compare, the report, `twinarm evaluate --json`): the real
    source patients that are in the knowledge base against their twins. `refits` defaults to
    20 for a generator whose twins cost nothing and to 0 (patient term only, and said so) for
    one that calls a model per twin, where B refits would cost about B x n x 10 calls."""
    from services.generation import GENERATORS

    sources = sorted(set(run.adsl["SRCSUBJID"]) & set(knowledge_base.subjects["USUBJID"]))
    out = {"design": "synthetic_control", "unit": UNIT, "n_patients": len(sources),
           "target_arm": run.target_arm, "effects": [], "note": ""}
    if len(sources) < MIN_PATIENTS:
        out["note"] = (f"{len(sources)} of the run's source patients have real outcomes in this "
                       f"trial: at least {MIN_PATIENTS} are needed to estimate an effect")
        return out
    name = (run.manifest or {}).get("generator") or "local"
    cls = GENERATORS.get(name)
    cheap = cls is not None and not cls.capabilities.needs_network
    b = (20 if refits is None else int(refits)) if cheap else 0
    if not cheap:
        out["note"] = (f"the {name} generator is not refitted (each refit would call the model per twin): "
                       "the intervals hold the patient-level variance only, and there is no doubly robust estimate (its "
                       "control patients' twins would cost a call each)")
    real = knowledge_base.subset(sources, name=f"{knowledge_base.name} sources")
    effects = synthetic_control_effects(real, run, knowledge_base, refits=b, seed=seed, progress=progress)
    if cheap:      # its control patients' twins cost one more fit (an LLM: a call per twin)
        dr_effects, dr_note = doubly_robust_effects(real, run, knowledge_base, seed=seed)
        effects = sorted(effects + dr_effects, key=_display_order)
        out["note"] = "; ".join(x for x in (out["note"], dr_note) if x)
    out["note"] = "; ".join(x for x in (out["note"], _no_hazard_ratio_note(real, run, effects)) if x)
    out["effects"] = effects_json(effects)
    out["refits"] = b
    arms = real.arm_counts()
    out["source_arms"] = {a: n for a, n in arms.items() if n}
    return out


def cached_run_effects(knowledge_base: Trial, run: TwinRun, run_dir=None, refits: int | None = None,
                       seed: int = 0, progress: Callable[[int, int], object] | None = None) -> dict:
    """`run_effects`, kept as `effects.json` in the run's folder (when it has one) for the app,
    the report and later sessions; recomputed when the knowledge base, the run or the
    settings differ from the stored ones."""
    key = {"knowledge_base": knowledge_base.content_hash, "run_id": run.run_id, "refits": refits,
           "seed": seed, "version": EFFECTS_VERSION}
    return cached_in_run(run_dir, "effects", key, lambda: run_effects(
        knowledge_base, run, refits=refits, seed=seed, progress=progress))
