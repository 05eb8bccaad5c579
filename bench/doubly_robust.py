"""Null calibration of the doubly robust mean difference (`services.evaluation.doubly_robust`):
type I error and coverage on trials resampled from a real control arm, as bench/inference.py does
for the twins-only estimate, but fast (no generator refits: one fit per replicate).

Each replicate draws a knowledge base and a "treated" cohort from the control arm (`--design
split`: halves; `bootstrap`: with replacement), fits the local generator on the knowledge base,
twins the cohort (K twins each) and the knowledge base's own patients (cross-fitted), and
estimates the effect at the trial's endpoint visit. No true effect: a 5 % test should reject
5 %. Also printed: the plain twins-only estimate with its patient term alone (what the generator
refits are there to widen; not an interval the app shows) and the variance ratio of each.

    OMP_NUM_THREADS=1 .venv/bin/python bench/doubly_robust.py --trials ahd respiratory --reps 1000
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

from inference import control_pool, endpoint, generator, load_trials
from null_designs import ALPHA, null_cohorts

from services.evaluation import doubly_robust as DR
from services.evaluation.effect_stats import statistics, twin_values


def replicate(pool, rng, design: str, k: int, paramcd: str, avisitn: float, r: int) -> dict | None:
    kb, real = null_cohorts(pool, rng, design)
    arm = pool.control_arm
    gen = generator().fit(kb)
    run = gen.generate(real.baseline_only(), target_arm=arm, twins_per_patient=k, seed=r)
    ctl = DR.control_twins(kb, run, list(kb.subjects["USUBJID"]), fitted=gen, seed=r)
    res = DR.augmented_mean_differences(real, run, kb, ctl, DR.Propensity(real, kb), [paramcd]).get((paramcd, avisitn))
    if res is None:
        return None
    _se, lo, hi, p = DR.interval(res, ALPHA)
    plain = statistics(real, twin_values(run), None, {}, [paramcd], set()).get(("mean_difference", paramcd, avisitn))
    p_plain = float(2 * stats.t.sf(abs(plain.theta) / np.sqrt(plain.var_patients), plain.n - 1))
    return {"r": r, "dr": res.theta, "var_dr": res.var, "p_dr": p, "lo": lo, "hi": hi, "df": res.df,
            "m_eff": res.m_eff, "m": res.m, "plain": plain.theta, "var_plain": plain.var_patients,
            "p_plain": p_plain}


def interval(x: float, n: int) -> str:
    se = np.sqrt(max(x * (1 - x), 1e-12) / n)
    return f"{100 * x:.1f} % [{100 * max(x - 1.96 * se, 0):.1f}, {100 * (x + 1.96 * se):.1f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", nargs="*", default=None)
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--design", choices=("split", "bootstrap"), default="split")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    result = []
    for trial in load_trials(args.trials):
        t0 = time.perf_counter()
        paramcd, avisitn = endpoint(trial)
        if paramcd is None:
            continue
        pool = control_pool(trial, paramcd)
        rng = np.random.default_rng([args.seed, 0xD2])
        rows = [row for r in range(args.reps)
                if (row := replicate(pool, rng, args.design, args.k, paramcd, avisitn, r)) is not None]
        g = pd.DataFrame(rows)
        n = len(g)
        rej, rej_plain = float((g["p_dr"] < ALPHA).mean()), float((g["p_plain"] < ALPHA).mean())
        v_ratio = float(g["var_dr"].mean() / g["dr"].var(ddof=1))
        v_plain = float(g["var_plain"].mean() / g["plain"].var(ddof=1))
        print(f"== {trial.name}: {paramcd} visit {avisitn:g}, {args.design} design, {n} of {args.reps} replicates "
              f"with the visit, K {args.k}; {time.perf_counter() - t0:.0f}s")
        print(f"   doubly robust: type I {interval(rej, n)}; variance est / emp {v_ratio:.2f}; mean estimate "
              f"{g['dr'].mean():+.4g} (SD {g['dr'].std():.3g}); Welch df median {g['df'].median():.0f}; "
              f"effective controls {g['m_eff'].median():.1f} of {g['m'].median():.0f} (median)")
        print(f"   twins only, patient term alone (not an interval the app shows): type I {interval(rej_plain, n)}; "
              f"variance est / emp {v_plain:.2f}; mean estimate {g['plain'].mean():+.4g} (SD {g['plain'].std():.3g})")
        result += [f"{trial.name}_{args.design}_dr_type1={rej:.4f}", f"{trial.name}_{args.design}_dr_var_ratio={v_ratio:.3f}",
                   f"{trial.name}_{args.design}_plain_type1={rej_plain:.4f}"]
    print("RESULT " + " ".join(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
