"""Twin-adjusted randomized trial (PROCOVA, Schuler et al. 2022): the effect of the real arms
from an ANCOVA with the twins' prediction as covariate, beside the baseline-only ANCOVA and the
unadjusted analysis, each with its interval (see `services.evaluation.effects` for the design
notes)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from services.data.trial import Trial
from services.evaluation.effect_stats import twin_values
from services.evaluation.effects import Effect
from services.evaluation.estimators import ols
from services.generation.run import TwinRun


def prognostic_scores(run: TwinRun, paramcd: str, avisitn: float) -> pd.Series:
    """Prognostic score per source patient: the mean of its twins' values at the visit."""
    vals = twin_values(run)
    vals = vals[(vals["PARAMCD"] == paramcd) & (vals["AVISITN"] == float(avisitn))]
    return vals.groupby("SRCSUBJID")["AVAL"].mean().rename("PROG")


ANALYSES = {
    "unadjusted": (),
    "ancova_baseline": ("BASE",),
    "procova": ("PROG",),
    "procova_baseline": ("BASE", "PROG"),
}


def procova_effects(trial: Trial, prognostic: pd.Series | TwinRun, paramcd: str, avisitn: float,
                    treatment_arm: str, control_arm: str | None = None, alpha: float = 0.05,
                    analyses: Iterable[str] = tuple(ANALYSES)) -> list[Effect]:
    """Treatment effect (treatment minus control) of a randomized trial at one visit, from OLS:
    ``unadjusted`` (Y ~ arm), ``ancova_baseline`` (+ baseline value), ``procova`` (+ prognostic
    score), ``procova_baseline`` (+ both). Complete cases of the covariates each analysis uses
    (patients with Y and, for adjusted analyses, the baseline / score) -- so compare analyses
    on ``n_patients``. ``prognostic``: a Series by USUBJID, or a TwinRun of control twins of
    the trial's patients (see :func:`prognostic_scores`)."""
    control_arm = control_arm or trial.control_arm
    if isinstance(prognostic, TwinRun):
        prognostic = prognostic_scores(prognostic, paramcd, avisitn)
    vv = trial.visit_values
    y = vv[(vv["PARAMCD"] == paramcd) & (vv["AVISITN"] == float(avisitn))].set_index("USUBJID")
    label = str(y["AVISIT"].iloc[0]) if len(y) else ""
    arms = trial.subjects.set_index("USUBJID")["ARM"]
    df = pd.DataFrame({"Y": y["AVAL"]})
    df["ARM"] = arms.reindex(df.index)
    df = df[df["ARM"].isin([treatment_arm, control_arm])]
    df["TRT"] = (df["ARM"] == treatment_arm).astype(float)
    base = trial.baseline[paramcd] if paramcd in trial.baseline else pd.Series(dtype=float)
    df["BASE"] = base.reindex(df.index)
    df["PROG"] = pd.Series(prognostic).reindex(df.index)
    out = []
    for name in analyses:
        cols = ANALYSES[name]
        d = df.dropna(subset=["Y", *cols])
        n_t, n_c = int(d["TRT"].sum()), int((1 - d["TRT"]).sum())
        if n_t < 2 or n_c < 2 or len(d) <= 2 + len(cols):
            continue
        X = np.column_stack([np.ones(len(d)), d["TRT"].to_numpy(), *[d[c].to_numpy(float) for c in cols]])
        y = d["Y"].to_numpy(float)
        fit = ols(y, X)
        est, se = float(fit.coef[1]), float(fit.se[1])
        if not fit.sigma > 1e-10 * max(float(np.std(y)), 1e-300):
            se = float("nan")     # a perfect fit: the SE is rounding error, no interval or p-value
        q = float(stats.t.ppf(1 - alpha / 2, fit.df))
        pval = float(2 * stats.t.sf(abs(est) / se, fit.df)) if se > 0 else float("nan")
        covs = " + ".join(("arm",) + tuple({"BASE": "baseline", "PROG": "prognostic score"}[c] for c in cols))
        out.append(Effect(
            design="randomized", measure="mean_difference", paramcd=paramcd, avisitn=float(avisitn),
            avisit=label, estimate=est, se=se, ci_low=est - q * se, ci_high=est + q * se, p_value=pval,
            df=float(fit.df), method=f"OLS Y ~ {covs}; classical SE, t({fit.df})", n_patients=len(d),
            n_treatment=n_t, n_control=n_c, analysis=name, alpha=alpha,
        ))
    return out
