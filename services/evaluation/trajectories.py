"""Trajectories of a comparison for the charts (Compare, What-if, the report): per-visit means
with 95 % intervals, a sample of individual patients, one patient against its twins; and the
scale a parameter is best read on.

Scale: a parameter whose values are all positive and right-skewed (baseline skewness > 1:
pbc's bilirubin, not its albumin) is summarised and drawn on the log scale by default: its mean is then the geometric mean with the interval of the mean of the
logs, back-transformed, which a few extreme patients do not dominate. The user can switch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from services.evaluation.comparison import TWIN, Comparison
from services.evaluation.feature_space import with_baseline as _with_baseline

SCALES = ("raw", "log")
SKEW_FOR_LOG = 1.0


def suggested_scale(comp: Comparison, paramcd: str) -> str:
    """"log" for a positive, right-skewed parameter (baseline skewness > 1 in the knowledge
    base), else "raw"."""
    base = comp.kb.baseline_long
    values = base.loc[base["PARAMCD"] == paramcd, "AVAL"].dropna().to_numpy(float)
    if len(values) < 10 or values.min() <= 0:
        return "raw"
    return "log" if float(stats.skew(values)) > SKEW_FOR_LOG else "raw"


def can_use_log(comp: Comparison, paramcd: str) -> bool:
    """Every value of the parameter (all groups) is positive: the log scale is defined."""
    return all((_with_baseline(t, paramcd)["AVAL"].dropna() > 0).all() for t in comp.groups.values())


def trajectory_summary(comp: Comparison, paramcd: str, scale: str = "raw") -> pd.DataFrame:
    """Mean and 95 % t-interval per group and visit (baseline included at day 1); for the twins,
    over source patients (each the mean of its twins), n = patients. With `scale="log"` the
    geometric mean and the back-transformed interval of the mean log (positive values only)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    log = scale == "log"
    rows = []
    for group, trial in comp.groups.items():
        data = _with_baseline(trial, paramcd)
        if log:
            data = data[data["AVAL"] > 0].assign(AVAL=lambda d: np.log(d["AVAL"]))
        if group == TWIN and "SRCSUBJID" in trial.subjects:
            # the patient is the unit: a source's K twins are averaged first, so n counts
            # patients and more twins do not narrow the interval by themselves
            src = trial.subjects.set_index("USUBJID")["SRCSUBJID"]
            data = data.assign(USUBJID=data["USUBJID"].map(src))
            data = data.groupby(["AVISITN", "USUBJID"], as_index=False).agg(
                AVAL=("AVAL", "mean"), AVISIT=("AVISIT", "first"), ADY=("ADY", "median"))
        for avisitn, grp in data.groupby("AVISITN"):
            values = grp["AVAL"].dropna().to_numpy(float)
            n = len(values)
            if n == 0:
                continue
            mean = float(values.mean())
            half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan
            lo, hi = mean - half, mean + half
            if log:
                mean, lo, hi = float(np.exp(mean)), float(np.exp(lo)), float(np.exp(hi))
            rows.append({"GROUP": group, "AVISITN": float(avisitn), "AVISIT": grp["AVISIT"].iloc[0],
                         "ADY": float(grp["ADY"].median()), "n": n, "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["GROUP", "AVISITN", "AVISIT", "ADY", "n", "mean", "lo", "hi"])



def spaghetti_values(comp: Comparison, paramcd: str, per_group: int = 15, seed: int = 0) -> pd.DataFrame:
    """A random sample of patients' trajectories per group (GROUP, USUBJID, ADY, AVAL)."""
    rng = np.random.default_rng(seed)
    frames = []
    for group, trial in comp.groups.items():
        data = _with_baseline(trial, paramcd)
        ids = data["USUBJID"].unique()
        pick = set(rng.choice(ids, size=min(per_group, len(ids)), replace=False)) if len(ids) else set()
        frames.append(data[data["USUBJID"].isin(pick)].assign(GROUP=group))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def patient_and_twins(comp: Comparison, source_id: str, paramcd: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A source patient's real trajectory and its twins' values (both with baseline)."""
    real = _with_baseline(comp.kb.subset([source_id]), paramcd)
    twin_ids = comp.twins.subjects.loc[comp.twins.subjects["SRCSUBJID"].astype(str) == source_id, "USUBJID"]
    twins = _with_baseline(comp.twins.subset(twin_ids), paramcd)
    return real, twins


