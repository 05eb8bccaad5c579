"""Backtest bench: how good are the local generator's twins of real control patients?

    .venv/bin/python bench/backtest.py                 # every bundled trial + CDISC pilot, 5 splits
    .venv/bin/python bench/backtest.py --seeds 2 --quick
    .venv/bin/python bench/backtest.py --trials pbc --chroma   # with the default Chroma retriever

For every bundled trial (`services.data.demo.demo_names()`) and the CDISC pilot vitals (when
`../shared/data/cdiscpilot01` exists), the control arm is split in half at random (`--folds 2`,
the "split in half" protocol; every patient is held out once) with several seeds; the
knowledge base is the trial minus the held-out half; each held-out patient gets K twins from
its baseline only (see `services/evaluation/backtest.py`). Printed per trial and parameter (means over
seeds): RMSE ratio (mean of twins vs per-visit regression on the baseline value; target
<= 1), coverage of the twins' 10-90% range (target 75-85%), SD ratio (twins vs real, same
patients and visits), and per event type: Kaplan-Meier sup-distance ratio (pooled twins vs
the knowledge base's control arm, both against the held-out truth; target <= 1), C-index of
the twins' median event time vs a Cox model. Then throughput of `generate` (twins per
second, whole run including the output frames). Ends with one `RESULT ...` line.

The retriever is the exact k-NN (`ExactRetriever`, same neighbours as Chroma on these
trial sizes, much faster to rebuild for every split); `--chroma` uses the app's default.

Last run (5 seeds, folds 2, K 20, exact retriever; means over seeds):

    trial         parameter   RMSE ratio  coverage  SD ratio
    pbc           ALB         0.996       79.3%     0.99
                  ALP         1.002       79.6%     1.27   (log scale: parity; see below)
                  AST         0.967       83.3%     1.10
                  BILI        0.929       81.2%     1.02
                  CHOL        0.781       78.8%     1.05
                  PLAT        0.997       80.0%     0.98
                  PT          0.990       80.6%     0.98
    btheb         BDI         0.970       82.5%     1.03
    epilepsy      SEIZ        0.968       81.8%     0.98
    cdiscpilot01  DIABP       0.990       82.5%     1.00
                  PULSE       0.989       80.7%     1.00
                  SYSBP       0.985       83.3%     1.05
                  TEMP        0.995       82.5%     1.03
                  WEIGHT      1.004       81.5%     0.98   (parity: weight barely moves)
    pbc DEATH: KM distance ratio 0.98, C-index twins 0.812 vs Cox 0.816
    pbc DTHTX: KM distance ratio 0.99, C-index twins 0.800 vs Cox 0.796
    RESULT trials=4 params=14 rmse_ratio_median=0.990 coverage_median=0.813
           share_params_rmse_met=0.857 share_params_coverage_met=1.000 sd_ratio_median=1.011
           km_ratio_median=0.982 cindex_twins=0.806 cindex_cox=0.806 twins_per_s_min=7836

ALP on the raw scale measures 0.926 but puts 2% of twins at the clip floor (36 U/L, real
minimum 73): the generator keeps the log scale for it (rule: at most 1% clipped).
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

from services.data.demo import demo_names, load_demo
from services.data.loading import load_trial
from services.evaluation.backtest import COVERAGE_TARGET, RATIO_TARGET, backtest
from services.generation import get_generator

PILOT = ROOT.parent / "shared" / "data" / "cdiscpilot01"


def trials(names: list[str] | None):
    out = []
    for name in demo_names():
        if not names or name in names:
            out.append(load_demo(name))
    if PILOT.exists() and (not names or "cdiscpilot01" in names or "pilot" in names):
        out.append(load_trial(PILOT, name="cdiscpilot01"))
    return out


def run_trial(trial, seeds, folds, k, settings):
    params, ttes, summaries = [], [], []
    t0 = time.perf_counter()
    for seed in seeds:
        res = backtest(trial, folds=folds, twins_per_patient=k, seed=seed, generator_settings=settings)
        params.append(res.parameters.assign(seed=seed))
        if len(res.tte):
            ttes.append(res.tte.assign(seed=seed))
        summaries.append(res.summary)
    elapsed = time.perf_counter() - t0
    p = pd.concat(params, ignore_index=True)
    t = pd.concat(ttes, ignore_index=True) if ttes else pd.DataFrame()
    return p, t, summaries, elapsed


def throughput(trial, settings, k=20, repeats=2):
    gen = get_generator("local", **settings).fit(trial)
    arm = trial.control_arm
    gen.arm_model(arm)
    best = np.inf
    n = 0
    for r in range(repeats):
        t0 = time.perf_counter()
        run = gen.generate(trial, arm, twins_per_patient=k, seed=r)
        best = min(best, time.perf_counter() - t0)
        n = run.n_twins
    return n, best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", nargs="*", help="names (demo names, 'pilot'); default: all")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--k", type=int, default=20, help="twins per held-out patient")
    ap.add_argument("--chroma", action="store_true", help="use the default (Chroma) retriever")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 10 twins")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    seeds = list(range(2 if args.quick else args.seeds))
    k = 10 if args.quick else args.k
    settings = {}
    if not args.chroma:
        from services.retrieval.retriever import ExactRetriever
        settings["retriever_factory"] = ExactRetriever

    all_params, all_tte, rows = [], [], []
    for trial in trials(args.trials):
        p, t, summaries, elapsed = run_trial(trial, seeds, args.folds, k, settings)
        agg = p.groupby("PARAMCD", sort=False).agg(
            rmse_ratio=("rmse_ratio", "mean"), rmse_ratio_sd=("rmse_ratio", "std"),
            coverage=("coverage", "mean"), sd_ratio=("sd_ratio_median", "mean"), n=("n", "mean"))
        print(f"\n== {trial.name}: arm {trial.control_arm} ({trial.arm_counts()[trial.control_arm]} patients), "
              f"{len(seeds)} splits x {args.folds} folds, K={k}, {elapsed:.1f}s")
        for pc, r in agg.iterrows():
            ok_a = "ok" if r["rmse_ratio"] <= RATIO_TARGET else "--"
            ok_c = "ok" if COVERAGE_TARGET[0] <= r["coverage"] <= COVERAGE_TARGET[1] else "--"
            print(f"   {pc:<8} RMSE ratio {r['rmse_ratio']:.3f} (sd {r['rmse_ratio_sd']:.3f}) {ok_a}   "
                  f"coverage {r['coverage']:.1%} {ok_c}   SD ratio {r['sd_ratio']:.2f}   n {r['n']:.0f}")
        all_params.append(agg.assign(trial=trial.name))
        if len(t):
            ta = t.groupby("PARAMCD", sort=False).agg(
                km_ratio=("km_ratio", "mean"), km_twins=("km_sup_twins", "mean"),
                km_ref=("km_sup_reference", "mean"), c_twins=("cindex_twins", "mean"),
                c_cox=("cindex_cox", "mean"))
            for q, r in ta.iterrows():
                print(f"   {q:<8} KM sup distance twins {r['km_twins']:.3f} vs KB arm {r['km_ref']:.3f} "
                      f"(ratio {r['km_ratio']:.2f})   C-index twins {r['c_twins']:.3f} vs Cox {r['c_cox']:.3f}")
            all_tte.append(ta.assign(trial=trial.name))
        rho = [s["rho"] for s in summaries if s.get("rho") is not None]
        ep = summaries[0]["endpoint"]
        if rho:
            print(f"   PROCOVA rho at {ep['paramcd']} visit {ep['avisitn']:g}: {np.mean(rho):.2f}")
        n, dt = throughput(trial, settings)
        print(f"   throughput: {n} twins in {dt:.2f}s = {n / dt:,.0f} twins/s (whole run, K=20, all patients)")
        rows.append({"trial": trial.name, "twins_per_s": n / dt, "rho": np.mean(rho) if rho else np.nan})

    params = pd.concat(all_params)
    acc = float((params["rmse_ratio"] <= RATIO_TARGET).mean())
    cal = float(params["coverage"].between(*COVERAGE_TARGET).mean())
    result = {
        "trials": len(rows), "params": len(params),
        "rmse_ratio_median": float(params["rmse_ratio"].median()),
        "coverage_median": float(params["coverage"].median()),
        "share_params_rmse_met": acc, "share_params_coverage_met": cal,
        "sd_ratio_median": float(params["sd_ratio"].median()),
    }
    if all_tte:
        tte = pd.concat(all_tte)
        result.update({"km_ratio_median": float(tte["km_ratio"].median()),
                       "cindex_twins": float(tte["c_twins"].mean()), "cindex_cox": float(tte["c_cox"].mean())})
    result["twins_per_s_min"] = float(min(r["twins_per_s"] for r in rows))
    print()
    print("RESULT " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
