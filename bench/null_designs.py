"""The null designs of bench/inference.py and the reference tests that check a design itself
(see that bench's docstring): a knowledge base and a "treated" cohort, both real control
patients, drawn from a control arm by halving it or with replacement."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from services.data.trial import Trial
from services.evaluation import estimators as est
from services.evaluation.effects import RATIO_MEASURES as RATIOS
from services.evaluation.resampling import relabelled
from services.generation.local.copies import copy_ids

ALPHA = 0.05     # the nominal level of every test of the bench


def draw_patients(pool: Trial, draw, name: str, tag: str | None = None) -> Trial:
    """The pool's patients `draw` (with repeats) as a trial. Knowledge base (`tag` None): the
    first copy keeps its id, the j-th extra one is `X#j` (copies share a cross-fitting fold, as
    in the effects' bootstrap); a cohort (`tag`): every patient is `{tag}{j}:X`, never a
    knowledge-base id, so a copy of a knowledge-base patient is a new patient to the generator."""
    draw = pd.Series(np.asarray(draw, dtype=object))
    new = copy_ids(draw) if tag is None else cohort_ids(draw, tag)
    return relabelled(pool, draw.to_numpy(object), new, name, salt=name)


def cohort_ids(draw, tag: str) -> list[str]:
    """The ids `draw_patients` gives a cohort's draw, in the draw's order: `{tag}{j}:X` for the
    j-th draw of patient X."""
    draw = pd.Series(np.asarray(draw, dtype=object))
    return [f"{tag}{c}:{u}" for u, c in zip(draw, draw.groupby(draw).cumcount())]


def null_cohorts(pool: Trial, rng: np.random.Generator, design: str) -> tuple[Trial, Trial]:
    """(knowledge base, treated cohort) of one null replicate.

    - `split`: the control arm split in half (finite population). A component of the effect
      that the generator does not learn from the knowledge base (e.g. a carried-forward
      baseline) then varies less than in a new sample (finite-population factor ~1/2): a test
      that is right for new patients is conservative here (`oracle_carry`).
    - `bootstrap`: knowledge base and cohort drawn independently with replacement from the
      control arm, whose empirical distribution is then the population (no finite-population
      factor; a cohort patient may have a copy in the knowledge base, as a new patient of that
      discrete population would)."""
    ids = pool.subjects["USUBJID"].to_numpy(object)
    half = len(ids) // 2
    if design == "split":
        perm = rng.permutation(ids)
        return pool.subset(perm[:half], name="kb"), pool.subset(perm[half:], name="treated")
    kb = draw_patients(pool, rng.choice(ids, half), "kb")
    return kb, draw_patients(pool, rng.choice(ids, len(ids) - half), "treated", tag="T")


def oracle_rows(kb: Trial, real: Trial, paramcd: str, avisitn: float, pool_change: float, r: int) -> list[dict]:
    """Reference tests of the design itself, from the real patients only (no twins): what a
    trial with the knowledge base as real controls would find (`oracle_ancova`: two-sample
    baseline ANCOVA, classical OLS t; for a positive endpoint also on the log scale,
    `oracle_ancova_log`), and a test with no knowledge-base part at all (`oracle_carry`: the
    cohort's mean change from baseline against the pool's, known)."""
    def yb(t: Trial):
        vv = t.visit_values
        y = vv[(vv["PARAMCD"] == paramcd) & (vv["AVISITN"] == avisitn)].set_index("USUBJID")["AVAL"]
        b = t.baseline[paramcd].reindex(y.index)
        ok = np.isfinite(y.to_numpy(float)) & np.isfinite(b.to_numpy(float))
        return y.to_numpy(float)[ok], b.to_numpy(float)[ok]

    def ancova_p(ya, ba, yt, bt) -> float:
        X = np.column_stack([np.ones(len(ya) + len(yt)), np.r_[np.zeros(len(ya)), np.ones(len(yt))], np.r_[ba, bt]])
        fit = est.ols(np.r_[ya, yt], X)
        return float(2 * stats.t.sf(abs(fit.coef[1] / fit.se[1]), fit.df))

    (ya, ba), (yt, bt) = yb(kb), yb(real)
    tests = [("oracle_ancova", ancova_p(ya, ba, yt, bt))]
    d = yt - bt
    t_c = (d.mean() - pool_change) / (d.std(ddof=1) / np.sqrt(len(d)))
    tests.append(("oracle_carry", float(2 * stats.t.sf(abs(t_c), len(d) - 1))))
    if min(ya.min(), yt.min(), ba.min(), bt.min()) > 0:     # the reference of the ratio of geometric means
        tests.append(("oracle_ancova_log", ancova_p(np.log(ya), np.log(ba), np.log(yt), np.log(bt))))
    return [{"rep": r, "K": 0, "measure": m, "estimate": np.nan, "lo": np.nan, "hi": np.nan, "p": pv,
             "naive_p": np.nan, "reject": pv < ALPHA, "cover": pv >= ALPHA, "width": np.nan,
             "v_pat": np.nan, "v_gen": np.nan, "n": len(yt)}
            for m, pv in tests]


def calibration(g: pd.DataFrame, measure: str) -> tuple[float, float]:
    """(mean estimated variance / variance of the estimates over the replicates, mean error of
    the estimates / their SD) of one cell: why a rejection rate is off (the log scale for the
    hazard ratio and the ratio of geometric means; the error against the truth: 0, or 0.2 x the
    pool's mean for md_x1.2)."""
    if measure.startswith("oracle_") or len(g) < 3:
        return float("nan"), float("nan")
    est = np.log(g["estimate"]) if measure in RATIOS else g["estimate"]
    truth = float(g["truth"].iloc[0]) if "truth" in g else 0.0
    sd = float(est.std(ddof=1))
    return float((g["v_pat"] + g["v_gen"]).mean() / sd ** 2), float((est.mean() - truth) / sd)
