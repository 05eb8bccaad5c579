"""Treatment effects from twin arms, with the patient as the unit of inference.

Two designs.

**1. Synthetic control for a treated cohort** (:func:`synthetic_control_effects`). The real
source cohort (e.g. the treated arm, with its real post-baseline outcomes) is compared with
its twins generated under the control arm by a generator fitted on a knowledge base.

- *Continuous endpoint, per PARAMCD and scheduled visit*: for every source patient i observed
  at the visit, d_i = Y_i - mean of the patient's K twins at that visit (the K twins are
  averaged first: the patient, not the twin, is the unit). The estimate is mean_i d_i
  (real minus counterfactual).
- *Time to event, per PARAMCD*: hazard ratio real vs twins from a Cox model (Breslow ties) in
  which each twin has weight 1/K, so each patient's twins together weigh one patient; and the
  difference in restricted mean survival time (RMST, real minus twins) up to ``tau``
  (default: the shorter of the two arms' longest follow-up), from Kaplan-Meier curves with the
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
  a source can never borrow from a copy of itself) and regenerates ``boot_twins`` twins of the
  *same* sources. For the local generator the refits hold the structure the run's fit chose
  (per parameter its outcome scale, mean model and baseline scale: `bootstrap_settings`) and
  re-estimate everything else, so the term is the variance *given the chosen structure* (the
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
  selection-variance term added 2-3 %). Then v_g = max(0, between - MC), between =
  Var_b(theta_b) (ddof 1) over the refits holding the statistic, and MC, the Monte-Carlo
  variance of theta_b given g_b, from the two halves of each refit's twins:
  MC = mean_b (theta_b(first half) - theta_b(second half))^2 / 4. This term
  does not fall with K: more twins never buy more certainty than the knowledge base holds.

The interval is theta +- t_{df, 1-alpha/2} * sqrt(patient + generator) with Satterthwaite
degrees of freedom df = (v_p + v_g)^2 / (v_p^2 / (n - 1) + between^2 / (B - 1) + MC^2 / B) (the
generator term is a difference of two variances from B refits); log scale for the hazard ratio.
The patient term is the one of the run being analysed (its K); the generator term does not
depend on K.

Assumptions (write them in the report): the knowledge base's target arm and the source cohort
are different patients (true for a synthetic control of a treated arm; when sources are in the
target arm, the generator's cross-fitting keeps each source out of its own twin, but the
decomposition is then approximate); the twins' visits are compared where the real patient was
observed (a hypothetical "had they been observed" estimand under missing-at-random given
baseline). The LLM generator can be used (``generator="llm"``) but each refit regenerates
every twin: B x n x boot_twins calls.

**2. Twin-adjusted randomized trial (PROCOVA)** (`services.evaluation.procova_analysis.procova_effects`): OLS of the outcome
at one visit on the arm indicator alone (unadjusted), plus the baseline value (baseline
ANCOVA), plus the prognostic score (mean of the patient's twins under control, generated from
the baseline by a generator that never saw the patient's outcome), and with both. Classical
(homoscedastic) OLS standard errors, t intervals with n - p degrees of freedom, as statsmodels
``OLS(...).fit()``. The prognostic score is a fixed baseline covariate, so these tests are exact
under the linear model whatever the quality of the twins (Schuler et al. 2022).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from services.data.trial import Trial
from services.evaluation.estimators import cox_binary, rmst_km
from services.evaluation.resampling import resample_knowledge_base
from services.evaluation.run_store import cached_in_run
from services.generation.run import TwinRun

UNIT = "patients"
EFFECTS_VERSION = 8   # bump when the figures change meaning (3: refits hold the run's structure; 4: their penalties count patients, not copies; 5: event times jittered over the gap; 6: event baselines fitted to the Kaplan-Meier; 7: carried-forward twins keep the drift; 8: Satterthwaite df of between - MC)
MIN_PATIENTS = 5


@dataclass(frozen=True)
class Effect:
    """One estimated effect. ``estimate``/``ci_low``/``ci_high`` are on the natural scale
    (hazard ratio for ``measure="hazard_ratio"``, whose ``se`` is that of log HR).
    ``var_patients`` / ``var_generator`` split the variance (log scale for HR)."""

    design: str            # "synthetic_control" | "randomized"
    measure: str           # "mean_difference" | "hazard_ratio" | "rmst_difference"
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
# building blocks: weighted Cox (one binary covariate), weighted KM RMST with influence functions




# ==========================================================================================
# data preparation


def _twin_index(run: TwinRun) -> pd.Series:
    return run.adsl.set_index("USUBJID")["TWINIDX"].astype(int)


def _twin_values(run: TwinRun) -> pd.DataFrame:
    vals = run.values()
    vals = vals[vals["AVISITN"].notna()]
    vals = vals.assign(TWINIDX=vals["USUBJID"].map(_twin_index(run)).to_numpy())
    return vals[["SRCSUBJID", "TWINIDX", "PARAMCD", "AVISITN", "AVAL"]]


def _twin_tte(run: TwinRun) -> pd.DataFrame | None:
    if run.tte is None or run.tte.empty:
        return None
    tte = run.tte.assign(TWINIDX=run.tte["USUBJID"].map(_twin_index(run)).to_numpy())
    return tte[["SRCSUBJID", "TWINIDX", "PARAMCD", "AVAL", "CNSR"]]


def _md_stats(real_vv: pd.DataFrame, twins: pd.DataFrame) -> pd.DataFrame:
    """Per (PARAMCD, AVISITN): mean of d_i = Y_i - mean of i's twins, var(d)/n, n."""
    tm = twins.groupby(["SRCSUBJID", "PARAMCD", "AVISITN"], as_index=False)["AVAL"].mean()
    m = real_vv.merge(tm.rename(columns={"SRCSUBJID": "USUBJID", "AVAL": "TWIN"}),
                      on=["USUBJID", "PARAMCD", "AVISITN"], how="inner")
    m["D"] = m["AVAL"] - m["TWIN"]
    g = m.groupby(["PARAMCD", "AVISITN"])["D"]
    out = pd.DataFrame({"theta": g.mean(), "var": g.var(ddof=1) / g.count(), "n": g.count()})
    return out[out["n"] >= MIN_PATIENTS]


def patient_weighted_cox(real: pd.DataFrame, twins: pd.DataFrame):
    """Cox model of real patients (USUBJID, AVAL, CNSR) vs their twins (SRCSUBJID, AVAL, CNSR):
    each twin weighs 1/K of its patient, a patient and its twins form one cluster. Returns the
    fit and each twin's K."""
    k_i = twins.groupby("SRCSUBJID")["AVAL"].transform("count").to_numpy(dtype=float)
    time_ = np.concatenate([real["AVAL"].to_numpy(float), twins["AVAL"].to_numpy(float)])
    event = np.concatenate([1 - real["CNSR"].to_numpy(float), 1 - twins["CNSR"].to_numpy(float)])
    group = np.concatenate([np.ones(len(real)), np.zeros(len(twins))])
    weights = np.concatenate([np.ones(len(real)), 1.0 / k_i])
    clusters = np.concatenate([real["USUBJID"].to_numpy(object), twins["SRCSUBJID"].to_numpy(object)])
    return cox_binary(time_, event, group, weights, clusters), k_i


def _tte_stats(real_tte: pd.DataFrame, twins_tte: pd.DataFrame, taus: dict[str, float]) -> dict:
    """Per TTE PARAMCD: {('HR', p): (log_hr, var), ('RMST', p): (diff, var)} with clusters =
    source patients and each twin weighted 1/(number of that patient's twins)."""
    out = {}
    for p, tau in taus.items():
        r = real_tte[real_tte["PARAMCD"] == p]
        tw = twins_tte[twins_tte["PARAMCD"] == p]
        tw = tw[tw["SRCSUBJID"].isin(set(r["USUBJID"]))]
        r = r[r["USUBJID"].isin(set(tw["SRCSUBJID"]))]
        if len(r) < MIN_PATIENTS:
            continue
        cox, k_i = patient_weighted_cox(r, tw)
        if math.isfinite(cox.log_hr):
            out[("hazard_ratio", p)] = (cox.log_hr, cox.se_robust**2, len(r))
        fr = rmst_km(r["AVAL"], 1 - r["CNSR"], tau)
        ft = rmst_km(tw["AVAL"], 1 - tw["CNSR"], tau, weights=1.0 / k_i)
        # per-cluster influence: the real patient's minus its twins' (weighted) contributions
        n_r = float(len(r))
        infl = pd.concat([
            pd.Series(fr.influence, index=r["USUBJID"].to_numpy(object)),
            pd.Series(-ft.influence, index=tw["SRCSUBJID"].to_numpy(object)),
        ]).groupby(level=0).sum()
        out[("rmst_difference", p)] = (fr.rmst - ft.rmst, float(np.sum(infl.to_numpy() ** 2)), int(n_r))
    return out


def _stats_all(real: Trial, twins_vals: pd.DataFrame, twins_tte: pd.DataFrame | None,
               taus: dict[str, float], params: list[str] | None) -> dict:
    """{(measure, paramcd, avisitn): (theta, var_patients, n)} of one set of twins."""
    out = {}
    vv = real.visit_values
    if params is not None:
        vv = vv[vv["PARAMCD"].isin(params)]
        twins_vals = twins_vals[twins_vals["PARAMCD"].isin(params)]
    if len(vv) and len(twins_vals):
        md = _md_stats(vv[["USUBJID", "PARAMCD", "AVISITN", "AVAL"]], twins_vals)
        for (p, v), row in md.iterrows():
            out[("mean_difference", p, float(v))] = (float(row["theta"]), float(row["var"]), int(row["n"]))
    if twins_tte is not None and real.tte is not None and taus:
        for (measure, p), val in _tte_stats(real.tte, twins_tte, taus).items():
            out[(measure, p, None)] = val
    return out


def default_tau(real: Trial, run: TwinRun, paramcd: str) -> float:
    """The shorter of the two arms' longest follow-up (real cohort vs twins)."""
    r = real.tte[real.tte["PARAMCD"] == paramcd]["AVAL"] if real.tte is not None else pd.Series(dtype=float)
    t = run.tte[run.tte["PARAMCD"] == paramcd]["AVAL"] if run.tte is not None else pd.Series(dtype=float)
    if r.empty or t.empty:
        return float("nan")
    return float(min(r.max(), t.max()))


# ==========================================================================================
# generator refits


def bootstrap_settings(run: TwinRun, generator: str, settings: dict) -> dict:
    """Settings of the generator refits: the run's, and for the local generator the structure
    its fit chose held (`structure`: per parameter outcome scale, mean model, baseline scale),
    so that a refit re-estimates the model rather than re-choosing it (the module docstring
    says why and what it leaves out). A run saved before `model_details.structure` existed
    re-chooses."""
    from services.generation.local.generator import held_structure

    out = dict(settings)
    if generator == "local" and not out.get("structure"):      # a run's settings say None
        held = held_structure(run.manifest or {})
        if held:
            out["structure"] = held
    return out


def _make_generator(generator: str, settings: dict):
    from services.generation import GENERATORS, get_generator

    settings = dict(settings)
    cls = GENERATORS.get(generator)
    if cls is not None and "retriever_factory" in inspect.signature(cls).parameters:
        # transient knowledge bases: exact k-NN in memory, no Chroma collection per refit
        from services.retrieval.retriever import ExactRetriever

        settings.setdefault("retriever_factory", ExactRetriever)
    return get_generator(generator, **settings)


class GeneratorTerm(NamedTuple):
    """Generator variance = between-refit variance - Monte-Carlo part (floored at 0).

    ``df_term``, its Satterthwaite denominator Var(estimate) / 2, is between^2 / (B - 1) +
    MC^2 / B (B: the refits holding the statistic; the halves' difference is independent of
    their mean). The earlier variance^2 / (B - 1) left out MC's share of between's noise
    (CDISC pilot, bootstrap, K 20: median df 31 vs 25). Under the floor at 0 it still counts."""

    variance: float
    between: float
    mc: float
    refits: int

    @property
    def df_term(self) -> float:
        if self.refits < 2 or not math.isfinite(self.between):
            return 0.0
        return self.between**2 / (self.refits - 1) + self.mc**2 / self.refits


NO_GENERATOR_TERM = GeneratorTerm(float("nan"), float("nan"), float("nan"), 0)   # no refits: patient term only


@dataclass
class GeneratorBootstrap:
    """Per refit b: statistics with all twins and with each half of them."""

    B: int
    boot_twins: int
    full: list[dict]
    half1: list[dict]
    half2: list[dict]
    structure_held: bool = False     # the refits kept a fitted structure (`bootstrap_settings`)

    def variance(self, key) -> GeneratorTerm:
        """The generator term of one statistic (NaN with fewer than 2 refits holding it)."""
        vals = [(f[key][0], h1[key][0], h2[key][0]) for f, h1, h2 in zip(self.full, self.half1, self.half2)
                if key in f and key in h1 and key in h2]
        if len(vals) < 2:
            return GeneratorTerm(float("nan"), float("nan"), float("nan"), len(vals))
        a = np.array(vals)
        between = float(np.var(a[:, 0], ddof=1))
        mc = float(np.mean((a[:, 1] - a[:, 2]) ** 2) / 4)
        return GeneratorTerm(max(0.0, between - mc), between, mc, len(vals))


def generator_bootstrap(real: Trial, knowledge_base: Trial, target_arm: str, generator: str = "local",
                        settings: dict | None = None, refits: int = 20, boot_twins: int = 20,
                        seed: int = 0, taus: dict[str, float] | None = None,
                        params: list[str] | None = None,
                        progress: Callable[[int, int], object] | None = None) -> GeneratorBootstrap:
    """Refit the generator on ``refits`` resampled knowledge bases and twin the same sources
    (``real``'s subjects, baseline only) ``boot_twins`` times each (even number)."""
    if boot_twins < 2 or boot_twins % 2:
        raise ValueError("boot_twins must be an even number >= 2")
    rng = np.random.default_rng([int(seed), 0xB007])
    sources = real.baseline_only()
    src_ids = list(real.subjects["USUBJID"])
    full, h1, h2 = [], [], []
    half = boot_twins // 2
    for b in range(int(refits)):
        kb_b = resample_knowledge_base(knowledge_base, target_arm, rng, keep=src_ids)
        gen = _make_generator(generator, settings or {}).fit(kb_b)
        run_b = gen.generate(sources, target_arm=target_arm, twins_per_patient=boot_twins,
                             seed=int(seed) * 7919 + b + 1)
        vals, tte = _twin_values(run_b), _twin_tte(run_b)
        for store, sel in ((full, None), (h1, lambda s: s <= half), (h2, lambda s: s > half)):
            v = vals if sel is None else vals[sel(vals["TWINIDX"])]
            t = tte if (tte is None or sel is None) else tte[sel(tte["TWINIDX"])]
            store.append(_stats_all(real, v, t, taus or {}, params))
        if progress is not None:
            progress(b + 1, int(refits))
    return GeneratorBootstrap(int(refits), int(boot_twins), full, h1, h2,
                              structure_held=bool((settings or {}).get("structure")))


# ==========================================================================================
# public: synthetic control


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
                              refits: int = 20, boot_twins: int = 20, alpha: float = 0.05,
                              seed: int = 0, tau: float | dict[str, float] | None = None,
                              params: list[str] | None = None, tte_params: list[str] | None = None,
                              bootstrap: GeneratorBootstrap | None = None,
                              progress: Callable[[int, int], object] | None = None) -> list[Effect]:
    """Effects of the real source cohort against its twins (see the module docstring).

    ``real``: the source cohort with its real post-baseline outcomes (``trial.subset(ids)``);
    ``run``: its twin run; ``knowledge_base``: what the generator was fitted on;
    ``generator``/``settings``: default to the run's manifest. ``refits`` = B generator refits
    (0 = patient term only, which is NOT honest about the generator: method says so).
    ``tau``: RMST horizon in days (number, or per PARAMCD; default :func:`default_tau`).
    ``params`` / ``tte_params`` restrict the endpoints. A precomputed ``bootstrap`` (same
    sources, same taus) may be passed to share refits between analyses of several K.

    Returns one :class:`Effect` per continuous PARAMCD x visit (``mean_difference``) and two
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
    k = int(run.adsl.groupby("SRCSUBJID").size().max()) if len(run.adsl) else 0
    tte_ps = [] if real.tte is None or run.tte is None else [
        p for p in (tte_params or real.tte_parameters) if p in set(run.tte["PARAMCD"])]
    if isinstance(tau, dict):
        taus = {p: float(tau[p]) for p in tte_ps if p in tau}
    else:
        taus = {p: (float(tau) if tau is not None else default_tau(real, run, p)) for p in tte_ps}
    taus = {p: t for p, t in taus.items() if math.isfinite(t)}
    main = _stats_all(real, _twin_values(run), _twin_tte(run), taus, params)
    if bootstrap is None and refits > 1:
        bootstrap = generator_bootstrap(real, knowledge_base, target_arm, generator, settings, refits,
                                        boot_twins, seed, taus, params, progress)
    b = bootstrap.B if bootstrap is not None else 0
    labels = {}
    vv = real.visit_values
    if len(vv):
        labels = vv.drop_duplicates(["PARAMCD", "AVISITN"]).set_index(["PARAMCD", "AVISITN"])["AVISIT"].to_dict()
    out = []
    for key, (theta, v_p, n) in main.items():
        measure, p, v = key
        gen = bootstrap.variance(key) if bootstrap is not None else NO_GENERATOR_TERM
        se, lo, hi, pval, df = _combine(theta, v_p, gen, n, alpha)
        if bootstrap is not None:
            held = (" with the run's model structure held (variance given that structure)"
                    if bootstrap.structure_held else "")
            how = (f"patient-level cluster-robust variance + generator variance from {b} refits on "
                   f"bootstrap knowledge bases{held} ({bootstrap.boot_twins} twins each, Monte-Carlo "
                   "corrected); Satterthwaite t")
        else:
            how = "patient-level cluster-robust variance only (generator uncertainty NOT included)"
        if measure == "mean_difference":
            method = "mean of (real - mean of own K twins) over patients; " + how
            est = theta
        elif measure == "hazard_ratio":
            method = "Cox (Breslow), real vs twins weighted 1/K, clusters = patients; log scale; " + how
            est, lo, hi = math.exp(theta), math.exp(lo), math.exp(hi)
        else:
            method = f"Kaplan-Meier RMST to tau={taus[p]:g} d, real minus twins weighted 1/K; " + how
            est = theta
        out.append(Effect(
            design="synthetic_control", measure=measure, paramcd=p, avisitn=v,
            avisit=str(labels.get((p, v), "")) if v is not None else "",
            estimate=float(est), se=float(se), ci_low=float(lo), ci_high=float(hi), p_value=pval,
            df=float(df), method=method, n_patients=int(n), n_treatment=int(n), n_control=int(n),
            K=k, B=b, var_patients=float(v_p), var_generator=float(gen.variance),
            tau=taus.get(p) if measure == "rmst_difference" else None, alpha=alpha,
        ))
    out.sort(key=lambda e: (e.measure != "mean_difference", e.paramcd, e.avisitn or 0, e.measure))
    return out


def run_effects(knowledge_base: Trial, run: TwinRun, refits: int | None = None, seed: int = 0,
                progress: Callable[[int, int], object] | None = None) -> dict:
    """The effects section of a run (Compare, the report, `twinarm evaluate --json`): the real
    source patients that are in the knowledge base against their twins. `refits` defaults to
    20 for a generator whose twins cost nothing and to 0 (patient term only, and said so) for
    one that calls a model per twin, where B refits would cost B x n x K calls."""
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
                       "the intervals hold the patient-level variance only")
    real = knowledge_base.subset(sources, name=f"{knowledge_base.name} sources")
    out["effects"] = effects_json(synthetic_control_effects(real, run, knowledge_base, refits=b,
                                                            seed=seed, progress=progress))
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
