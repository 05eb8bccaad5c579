"""Calibration of the doubly robust mean difference (`services.evaluation.doubly_robust`): type I
error, bias and variance on trials resampled from a real control arm, as bench/inference.py does
for the twins-only estimate, but fast (no generator refits: one fit per replicate).

Each replicate draws a knowledge base and a "treated" cohort from the control arm, fits the
local generator on the knowledge base, twins the cohort (K twins each) and the knowledge base's
own patients (cross-fitted), and estimates the effect at the trial's endpoint visit. No true
effect (the cohort's outcomes are control outcomes): a 5 % test should reject 5 %. Designs:
`split` (halves) and `bootstrap` (with replacement), where the true propensity is constant; and
`select`, a split in which a patient joins the cohort with probability logistic(s z), z its
standardised baseline of the endpoint (`--strength` s): confounded by the baseline, as an
external control arm is. `--twins carry` makes the twins' mean wrong on purpose (the baseline
carried forward, no neighbourhood shift): then only the weights can keep the estimate honest.
Printed per design: the logistic odds the app uses and the balancing weights (type I with
Clopper-Pearson intervals, variance estimated / empirical, mean estimate in SDs), and the
twins-only estimate with its patient term alone (what the generator refits widen; not an
interval the app shows).

    OMP_NUM_THREADS=1 .venv/bin/python bench/doubly_robust.py --trials ahd respiratory --reps 1000
    OMP_NUM_THREADS=1 .venv/bin/python bench/doubly_robust.py --design select --twins carry --trials ahd

`--known-truth N`: instead, N simulated trials of tests/test_doubly_robust.py's known truth (a
cohort selected on a high baseline, no effect, twins carrying the baseline forward where the
truth regresses to the mean; `run_effects` as the app runs it): mean, SD, variance ratio and
coverage of each estimate, with intervals.

    OMP_NUM_THREADS=1 .venv/bin/python bench/doubly_robust.py --known-truth 60
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference import binom_ci, control_pool, endpoint, generator, load_trials
from null_designs import ALPHA, null_cohorts

from services.data.trial import Trial
from services.evaluation import doubly_robust as DR
from services.evaluation.effect_stats import ratio_parameters, statistics, twin_values
from services.generation.local.generator import LocalGenerator
from services.retrieval.retriever import ExactRetriever

WEIGHTS = ("logistic", "balancing")    # the app's first
SCALES = {"": "mean_difference", "_log": "geometric_mean_ratio"}    # column suffix: the estimate's scale


def selected_cohorts(pool: Trial, rng: np.random.Generator, paramcd: str, strength: float) -> tuple[Trial, Trial]:
    """(knowledge base, cohort): each patient joins the cohort with probability logistic(s z),
    z its standardised baseline of `paramcd` (a missing baseline counts as the mean)."""
    ids = pool.subjects["USUBJID"].to_numpy(object)
    b = pool.baseline[paramcd].reindex(ids).to_numpy(float)
    z = np.nan_to_num((b - np.nanmean(b)) / np.nanstd(b))
    joins = rng.random(len(ids)) < 1 / (1 + np.exp(-strength * z))
    return pool.subset(ids[~joins], name="kb"), pool.subset(ids[joins], name="treated")


def replicate(pool, rng, args, paramcd: str, avisitn: float, r: int) -> dict | None:
    if args.design == "select":
        kb, real = selected_cohorts(pool, rng, paramcd, args.strength)
    else:
        kb, real = null_cohorts(pool, rng, args.design)
    gen = (generator() if args.twins == "local" else
           LocalGenerator(retriever_factory=ExactRetriever, mean_model="carry", center="none")).fit(kb)
    run = gen.generate(real.baseline_only(), target_arm=pool.control_arm, twins_per_patient=args.k, seed=r)
    ctl = DR.control_twins(kb, run, list(kb.subjects["USUBJID"]), fitted=gen, seed=r)
    logs = ratio_parameters(real, kb, pool.control_arm) & {paramcd}
    row = {"r": r}
    for method in WEIGHTS:
        res = DR.augmented_effects(real, run, kb, ctl, DR.Propensity(real, kb, method=method), [paramcd], logs)
        for scale, measure in SCALES.items():
            a = res.get((measure, paramcd, avisitn))
            if a is None:
                continue
            row |= {f"{method}{scale}": a.theta, f"var_{method}{scale}": a.var,
                    f"p_{method}{scale}": DR.interval(a, ALPHA)[3], f"df_{method}{scale}": a.df,
                    f"m_eff_{method}{scale}": a.m_eff, "m": a.m}
    stats_ = statistics(real, twin_values(run), None, {}, [paramcd], logs)
    for scale, measure in SCALES.items():
        plain = stats_.get((measure, paramcd, avisitn))
        if plain is not None:
            row |= {f"plain{scale}": plain.theta, f"var_plain{scale}": plain.var_patients,
                    f"p_plain{scale}": float(2 * stats.t.sf(abs(plain.theta) / np.sqrt(plain.var_patients), plain.n - 1))}
    return row if "logistic" in row else None


LABELS = {"balancing": "doubly robust, balancing weights", "logistic": "doubly robust, logistic odds (the app's)",
          "plain": "twins only, patient term alone (not an interval the app shows)"}
SHORT = {"logistic": "dr", "balancing": "dr_balancing", "plain": "plain"}


def known_truth(n: int) -> list[str]:
    """The known-truth trials (`--known-truth`): bias, spread, variance ratio and coverage of
    each synthetic-control estimate of the mean (log scale for the ratios; truth 0)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_doubly_robust import carry_effects, confounded_trial

    runs = [carry_effects(confounded_trial(seed)) for seed in range(11, 11 + n)]
    out = []
    for m in ("mean_difference", "mean_difference_dr", "geometric_mean_ratio", "geometric_mean_ratio_dr"):
        ratio = "ratio" in m
        est = np.array([r[m]["estimate"] for r in runs])
        est = np.log(est) if ratio else est
        se = np.array([r[m]["se"] for r in runs])
        covered = int(sum(r[m]["ci_low"] < (1.0 if ratio else 0.0) < r[m]["ci_high"] for r in runs))
        lo, hi = binom_ci(covered, n)
        v_ratio = float(np.mean(se**2) / est.var(ddof=1))
        v_lo, v_hi = (v_ratio * (n - 1) / stats.chi2.ppf(q, n - 1) for q in (0.975, 0.025))
        print(f"   {m}{' (log)' if ratio else ''}: mean {est.mean():+.4f} [{est.mean() - 1.96 * est.std(ddof=1) / np.sqrt(n):+.4f}, "
              f"{est.mean() + 1.96 * est.std(ddof=1) / np.sqrt(n):+.4f}], SD {est.std(ddof=1):.4f}; variance est / emp "
              f"{v_ratio:.2f} [{v_lo:.2f}, {v_hi:.2f}]; coverage {covered / n:.3f} [{lo:.2f}, {hi:.2f}]"
              + (f"; effective controls {np.median([r[m]['effective_controls'] for r in runs]):.0f} of "
                 f"{np.median([r[m]['n_control'] for r in runs]):.0f} (median)" if m.endswith("_dr") else ""))
        out += [f"known_truth_{m}_mean={est.mean():+.4f}", f"known_truth_{m}_coverage={covered / n:.3f}",
                f"known_truth_{m}_var_ratio={v_ratio:.3f}"]
    return out


def rate(p: pd.Series) -> str:
    x, n = int((p < ALPHA).sum()), len(p)
    lo, hi = binom_ci(x, n)
    return f"{100 * x / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", nargs="*", default=None)
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--design", choices=("split", "bootstrap", "select"), default="split")
    ap.add_argument("--strength", type=float, default=1.0, help="selection on the baseline (select design)")
    ap.add_argument("--twins", choices=("local", "carry"), default="local")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--known-truth", type=int, default=0, metavar="N")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.known_truth:
        print(f"== known truth: {args.known_truth} simulated trials (tests/test_doubly_robust.py), no effect")
        print("RESULT " + " ".join(known_truth(args.known_truth)))
        return 0
    result = []
    tag = args.design + ("" if args.twins == "local" else "_carry")
    for trial in load_trials(args.trials):
        t0 = time.perf_counter()
        paramcd, avisitn = endpoint(trial)
        if paramcd is None:
            continue
        pool = control_pool(trial, paramcd)
        rng = np.random.default_rng([args.seed, 0xD2])
        rows = [row for r in range(args.reps) if (row := replicate(pool, rng, args, paramcd, avisitn, r)) is not None]
        g = pd.DataFrame(rows)
        print(f"== {trial.name}: {paramcd} visit {avisitn:g}, {tag} design"
              f"{f' (strength {args.strength:g})' if args.design == 'select' else ''}, {len(g)} of {args.reps} "
              f"replicates with the visit, K {args.k}; {time.perf_counter() - t0:.0f}s")
        for scale in SCALES:
            cols = [f"{name}{scale}" for name in (*WEIGHTS, "plain")]
            if not set(cols) <= set(g.columns):
                continue
            g_s = g.dropna(subset=cols)
            print(f"  {'mean difference' if not scale else 'log ratio of geometric means'} ({len(g_s)} replicates):")
            sd = float(g_s[f"plain{scale}"].std())
            for name in (*WEIGHTS, "plain"):
                col = name + scale
                v_ratio = float(g_s[f"var_{col}"].mean() / g_s[col].var(ddof=1))
                extra = (f"; Welch df median {g_s[f'df_{col}'].median():.0f}; effective controls "
                         f"{g_s[f'm_eff_{col}'].median():.1f} of {g_s['m'].median():.0f} (median)") if name in WEIGHTS else ""
                print(f"   {LABELS[name]}: type I {rate(g_s[f'p_{col}'])}; variance est / emp {v_ratio:.2f}; mean "
                      f"estimate {g_s[col].mean():+.4g} ({g_s[col].mean() / sd:+.2f} SD of the twins-only estimate's "
                      f"spread, SD {g_s[col].std():.3g}){extra}")
                short = f"{trial.name}_{tag}_{SHORT[name]}{scale}"
                result += [f"{short}_type1={(g_s[f'p_{col}'] < ALPHA).mean():.4f}",
                           f"{short}_bias_sd={g_s[col].mean() / sd:+.3f}"]
                if name != "plain":
                    result.append(f"{short}_var_ratio={v_ratio:.3f}")
    print("RESULT " + " ".join(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
