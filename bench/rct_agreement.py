"""Does a synthetic control reproduce the randomized answer? On each randomized trial of the
backtest corpus with a longitudinal endpoint, every other arm's patients are twinned under the
control arm (the app's default local generator, K twins each) and the run's effect at the endpoint
(`run_effects`: the twins-only mean difference with its generator refits, and the doubly robust
one) is set beside the trial's own randomized analysis, the ANCOVA of the endpoint on the arm and
the baseline over the same arm and the real control patients.

This is agreement, not calibration: the twins learn from the very control patients the ANCOVA
uses, so the two estimates share data and should agree up to how the generator's mean model
differs from the ANCOVA; a twin arm that disagrees with its own trial's randomized answer is a
defect to find. Calibration under a known null is bench/inference.py's and bench/doubly_robust.py's.

    OMP_NUM_THREADS=1 .venv/bin/python bench/rct_agreement.py [--set test] [--trials jobs help]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import corpus

from services.evaluation.backtest import endpoint_visit
from services.evaluation.effects import run_effects
from services.evaluation.procova_analysis import procova_effects
from services.generation.local import LocalGenerator


def randomized_ancova(trial, arm: str, paramcd: str, avisitn: float) -> tuple[float, float, float, int]:
    """(estimate, ci_low, ci_high, n) of `arm` vs the control arm: the randomized trial's
    baseline ANCOVA as the app's PROCOVA analysis fits it (`procova_effects`, complete cases)."""
    e = procova_effects(trial, pd.Series(dtype=float), paramcd, avisitn, arm, analyses=("ancova_baseline",))[0]
    return e.estimate, e.ci_low, e.ci_high, e.n_patients


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("dev", "test", "all"), default="test")
    ap.add_argument("--trials", nargs="*")
    ap.add_argument("--k", type=int, default=20)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    names = {"dev": corpus.DEVELOPMENT, "test": corpus.TEST, "all": corpus.DEVELOPMENT + corpus.TEST}[args.set]
    rows, t_start = [], time.time()
    for name in names:
        if (args.trials and name not in args.trials) or not corpus.available(name):
            continue
        trial = corpus.load(name)
        paramcd, avisitn = endpoint_visit(trial)
        if paramcd is None:
            continue
        gen = LocalGenerator().fit(trial)
        for arm in [a for a in trial.arms if a != trial.control_arm]:
            ids = list(trial.subjects.loc[trial.subjects["ARM"] == arm, "USUBJID"])
            run = gen.generate(trial.subset(ids), trial.control_arm, twins_per_patient=args.k, seed=0)
            eff = {e["measure"]: e for e in run_effects(trial, run)["effects"]
                   if e["paramcd"] == paramcd and e.get("avisitn") == avisitn}
            rct = randomized_ancova(trial, arm, paramcd, avisitn)
            row = {"trial": name, "arm": arm, "endpoint": f"{paramcd} visit {avisitn:g}", "rct": rct[0],
                   "rct_lo": rct[1], "rct_hi": rct[2], "rct_n": rct[3]}
            for key, m in (("twins", "mean_difference"), ("dr", "mean_difference_dr")):
                e = eff.get(m)
                row.update({key: e["estimate"] if e else np.nan, f"{key}_lo": e["ci_low"] if e else np.nan,
                            f"{key}_hi": e["ci_high"] if e else np.nan})
            rows.append(row)
            se = (row["rct_hi"] - row["rct_lo"]) / (2 * 1.96)
            print(f"{name:<11} {arm:<22} {row['endpoint']:<16} RCT ANCOVA {row['rct']:+.3g} [{row['rct_lo']:+.3g}, "
                  f"{row['rct_hi']:+.3g}] (n {row['rct_n']}); twins {row['twins']:+.3g} [{row['twins_lo']:+.3g}, "
                  f"{row['twins_hi']:+.3g}]; doubly robust {row['dr']:+.3g} [{row['dr_lo']:+.3g}, {row['dr_hi']:+.3g}]; "
                  f"twins - RCT {(row['twins'] - row['rct']) / se:+.2f} RCT SE", flush=True)
    if not rows:
        print("no trial with a longitudinal endpoint")
        return 1
    df = pd.DataFrame(rows)
    se = (df["rct_hi"] - df["rct_lo"]) / (2 * 1.96)
    gap = ((df["twins"] - df["rct"]) / se).abs()
    gap_dr = ((df["dr"] - df["rct"]) / se).abs()
    inside = ((df["twins_lo"] <= df["rct"]) & (df["rct"] <= df["twins_hi"])).mean()
    inside_dr = ((df["dr_lo"] <= df["rct"]) & (df["rct"] <= df["dr_hi"])).mean()
    same_sign = (np.sign(df["twins"]) == np.sign(df["rct"])).mean()
    width = ((df["twins_hi"] - df["twins_lo"]) / (df["rct_hi"] - df["rct_lo"])).median()
    print(f"\n{len(df)} comparisons: |twins - RCT| median {gap.median():.2f} RCT SE (max {gap.max():.2f}); doubly "
          f"robust {gap_dr.median():.2f} (max {gap_dr.max():.2f}); RCT estimate inside the twins' interval "
          f"{inside:.0%} (doubly robust {inside_dr:.0%}); same sign {same_sign:.0%}; twins' interval width / "
          f"RCT's median {width:.2f}; {(time.time() - t_start) / 60:.1f} min")
    print(f"RESULT comparisons={len(df)} gap_se_median={gap.median():.3f} gap_se_max={gap.max():.3f} "
          f"gap_dr_se_median={gap_dr.median():.3f} rct_inside_twins_ci={inside:.3f} rct_inside_dr_ci={inside_dr:.3f} "
          f"same_sign={same_sign:.3f} width_ratio_median={width:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
