"""The statistics of one set of twins against their real source patients, with each patient's
pseudo-value: what the effect estimate (`effects`) and every generator refit
(`generator_term`) compute.

A statistic is (theta, patient variance, n, pseudo-values). The pseudo-value of patient i is
theta + n x (i's cluster influence), so that theta is their mean: d_i = Y_i - mean of i's twins
for a mean difference (exact; log Y_i - mean of log of i's twins for the ratio of geometric
means), the cluster's dfbeta for the log hazard ratio, its Kaplan-Meier influence (real minus
twins) for the RMST difference. The refits' table of pseudo-values
(patients x refits) splits their variation into the knowledge base's part and the part that
moves with patient and knowledge base jointly, which the patient term already counts."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.evaluation.estimators import cox_binary, rmst_km
from services.generation.run import TwinRun

MIN_PATIENTS = 5


class Statistic(NamedTuple):
    """One effect statistic: estimate, patient-level (cluster-robust) variance, patients, and
    the patients' pseudo-values (Series by source USUBJID, mean = theta)."""

    theta: float
    var_patients: float
    n: int
    pseudo: pd.Series


def _twin_index(run: TwinRun) -> pd.Series:
    return run.adsl.set_index("USUBJID")["TWINIDX"].astype(int)


def twins_per_source(run: TwinRun) -> int:
    """K: the most twins any source patient has in the run (0 for an empty run)."""
    return int(run.adsl.groupby("SRCSUBJID").size().max()) if len(run.adsl) else 0


def twin_values(run: TwinRun) -> pd.DataFrame:
    """The twins' scheduled values with their source and twin index."""
    vals = run.values()
    vals = vals[vals["AVISITN"].notna()]
    vals = vals.assign(TWINIDX=vals["USUBJID"].map(_twin_index(run)).to_numpy())
    return vals[["SRCSUBJID", "TWINIDX", "PARAMCD", "AVISITN", "AVAL"]]


def twin_tte(run: TwinRun) -> pd.DataFrame | None:
    """The twins' time-to-event records with their source and twin index (None: no events)."""
    if run.tte is None or run.tte.empty:
        return None
    tte = run.tte.assign(TWINIDX=run.tte["USUBJID"].map(_twin_index(run)).to_numpy())
    return tte[["SRCSUBJID", "TWINIDX", "PARAMCD", "AVAL", "CNSR"]]


def ratio_parameters(real: Trial, knowledge_base: Trial | None = None, target_arm: str | None = None) -> set[str]:
    """The parameters that get a ratio of geometric means: every value of the real cohort and
    of the knowledge base's target arm positive. Decided before any twin is drawn (the
    generator's twins of such a parameter are positive), so that the statistic and its
    patients never depend on the twins' values."""
    def positive(t: Trial, ids=None) -> set[str]:
        recs = t.records
        if ids is not None:
            recs = recs[recs["USUBJID"].isin(ids)]
        if recs.empty:
            return set()
        low = recs.groupby("PARAMCD")["AVAL"].min()
        return set(low.index[low > 0])

    out = positive(real)
    if knowledge_base is not None:
        subj = knowledge_base.subjects
        arm = target_arm or knowledge_base.control_arm
        out &= positive(knowledge_base, set(subj.loc[subj["ARM"] == arm, "USUBJID"]))
    return out


def _md_stats(real_vv: pd.DataFrame, twins: pd.DataFrame, log_params: set[str] | None = None) -> dict:
    """Per (PARAMCD, AVISITN): mean of d_i = Y_i - mean of i's twins, var(d)/n, n, d_i.

    ``log_params``: the same on the log scale for these parameters, d_i = log Y_i - mean of
    log of i's twins (exp of the mean is the ratio of geometric means). A visit where any twin
    is <= 0 (a generator that did not keep the parameter positive) has no ratio: patients are
    never left out for their twins' values."""
    if log_params is not None:
        real_vv = real_vv[real_vv["PARAMCD"].isin(log_params)]
        twins = twins[twins["PARAMCD"].isin(log_params)]
        bad = set(map(tuple, twins.loc[twins["AVAL"] <= 0, ["PARAMCD", "AVISITN"]].drop_duplicates().to_numpy()))
        if bad:
            keep = [k not in bad for k in zip(twins["PARAMCD"], twins["AVISITN"])]
            twins = twins[np.asarray(keep, dtype=bool)]
        real_vv = real_vv.assign(AVAL=np.log(real_vv["AVAL"].to_numpy(float)))
        twins = twins.assign(AVAL=np.log(twins["AVAL"].to_numpy(float)))
    tm = twins.groupby(["SRCSUBJID", "PARAMCD", "AVISITN"], as_index=False)["AVAL"].mean()
    m = real_vv.merge(tm.rename(columns={"SRCSUBJID": "USUBJID", "AVAL": "TWIN"}),
                      on=["USUBJID", "PARAMCD", "AVISITN"], how="inner")
    m["D"] = m["AVAL"] - m["TWIN"]
    out = {}
    for (p, v), g in m.groupby(["PARAMCD", "AVISITN"]):
        d = pd.Series(g["D"].to_numpy(float), index=g["USUBJID"].to_numpy(object)).dropna()
        if len(d) >= MIN_PATIENTS:
            out[(p, float(v))] = Statistic(float(d.mean()), float(d.var(ddof=1) / len(d)), len(d), d)
    return out


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
    """Per TTE PARAMCD: {('hazard_ratio', p): log HR, ('rmst_difference', p): RMST difference}
    as Statistics, clusters = source patients, each twin weighted 1/(its patient's twins)."""
    out = {}
    for p, tau in taus.items():
        r = real_tte[real_tte["PARAMCD"] == p]
        tw = twins_tte[twins_tte["PARAMCD"] == p]
        tw = tw[tw["SRCSUBJID"].isin(set(r["USUBJID"]))]
        r = r[r["USUBJID"].isin(set(tw["SRCSUBJID"]))]
        n = len(r)
        if n < MIN_PATIENTS:
            continue
        cox, k_i = patient_weighted_cox(r, tw)
        if math.isfinite(cox.log_hr):
            pseudo = pd.Series(cox.log_hr + n * cox.scores, index=cox.cluster_ids)
            out[("hazard_ratio", p)] = Statistic(cox.log_hr, cox.se_robust**2, n, pseudo)
        fr = rmst_km(r["AVAL"], 1 - r["CNSR"], tau)
        ft = rmst_km(tw["AVAL"], 1 - tw["CNSR"], tau, weights=1.0 / k_i)
        # per-cluster influence: the real patient's minus its twins' (weighted) contributions
        infl = pd.concat([
            pd.Series(fr.influence, index=r["USUBJID"].to_numpy(object)),
            pd.Series(-ft.influence, index=tw["SRCSUBJID"].to_numpy(object)),
        ]).groupby(level=0).sum()
        theta = fr.rmst - ft.rmst
        out[("rmst_difference", p)] = Statistic(theta, float(np.sum(infl.to_numpy() ** 2)), n,
                                                theta + n * infl)
    return out


def statistics(real: Trial, twins_vals: pd.DataFrame, twins_tte: pd.DataFrame | None,
               taus: dict[str, float], params: list[str] | None, log_params: set[str] | None = None) -> dict:
    """{(measure, paramcd, avisitn): Statistic} of one set of twins; ratios of geometric means
    for ``log_params`` (default: `ratio_parameters` of the real cohort alone)."""
    out = {}
    vv = real.visit_values
    if params is not None:
        vv = vv[vv["PARAMCD"].isin(params)]
        twins_vals = twins_vals[twins_vals["PARAMCD"].isin(params)]
    if len(vv) and len(twins_vals):
        vv = vv[["USUBJID", "PARAMCD", "AVISITN", "AVAL"]]
        logs = ratio_parameters(real) if log_params is None else log_params
        for measure, lp in (("mean_difference", None), ("geometric_mean_ratio", logs)):
            for (p, v), s in _md_stats(vv, twins_vals, lp).items():
                out[(measure, p, v)] = s
    if twins_tte is not None and real.tte is not None and taus:
        for (measure, p), s in _tte_stats(real.tte, twins_tte, taus).items():
            out[(measure, p, None)] = s
    return out


TAU_QUANTILE = 0.9     # the RMST horizon: when 90 % of the knowledge base's target arm had ended follow-up


def horizon(real: Trial, run: TwinRun, paramcd: str, knowledge_base: Trial | None = None,
            target_arm: str | None = None) -> tuple[float, str]:
    """(tau, the rule that set it) of the RMST difference: the time by which 90 % of the
    knowledge base's target-arm patients had ended follow-up (event or censoring), capped at
    either arm's longest follow-up (real cohort, twins), beyond which a Kaplan-Meier curve would
    be extrapolated. Without the knowledge base's follow-up: the shorter of the two arms'
    longest follow-up (survRM2's default).

    Why not that default always: it is the cohort's own longest time nearly always (the twins
    are K times as many), so the horizon moves with one patient of the cohort, and both RMSTs
    with it; the interval, which takes the horizon as given, then over-states the variance
    (veteran, one knowledge base x 300 cohorts: patient term 1.24-1.29 x the variance of the
    estimates; 0.92-1.05 at a fixed horizon, 0.95-1.10 with the knowledge base's horizon). The
    knowledge base's horizon does not look at the cohort's outcomes unless the cap binds (a
    cohort followed for less time than the knowledge base) or the cohort's patients are in the
    knowledge base's target arm; where the cap binds the rule says so and the interval leans
    conservative."""
    r = real.tte[real.tte["PARAMCD"] == paramcd]["AVAL"] if real.tte is not None else pd.Series(dtype=float)
    t = run.tte[run.tte["PARAMCD"] == paramcd]["AVAL"] if run.tte is not None else pd.Series(dtype=float)
    if r.empty or t.empty:
        return float("nan"), "no follow-up"
    longest = float(min(r.max(), t.max()))
    kb = np.array([])
    if knowledge_base is not None and knowledge_base.tte is not None:
        subj = knowledge_base.subjects
        ids = set(subj.loc[subj["ARM"] == (target_arm or knowledge_base.control_arm), "USUBJID"])
        tte = knowledge_base.tte
        kb = tte.loc[(tte["PARAMCD"] == paramcd) & tte["USUBJID"].isin(ids), "AVAL"].to_numpy(float)
    if kb.size == 0:
        return longest, "the shorter of the two arms' longest follow-up"
    q = float(np.quantile(kb, TAU_QUANTILE))
    if q <= longest:
        return q, "when 90 % of the knowledge base's target arm had ended follow-up"
    return longest, ("the shorter of the two arms' longest follow-up, capping the knowledge base's "
                     f"90 % follow-up ({q:g} d): the interval leans conservative")


def default_tau(real: Trial, run: TwinRun, paramcd: str, knowledge_base: Trial | None = None,
                target_arm: str | None = None) -> float:
    """The RMST horizon of :func:`horizon`."""
    return horizon(real, run, paramcd, knowledge_base, target_arm)[0]
