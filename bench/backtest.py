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
import json
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

from services.evaluation.backtest import COVERAGE_TARGET, RATIO_TARGET, backtest
from services.generation import get_generator


def run_trial(trial, seeds, folds, k, settings, generator="local"):
    params, ttes, summaries = [], [], []
    t0 = time.perf_counter()
    for seed in seeds:
        res = backtest(trial, folds=folds, twins_per_patient=k, seed=seed, generator=generator,
                       generator_settings=settings)
        params.append(res.parameters.assign(seed=seed))
        if len(res.tte):
            ttes.append(res.tte.assign(seed=seed))
        summaries.append(res.summary)
    elapsed = time.perf_counter() - t0
    p = pd.concat(params, ignore_index=True) if params else pd.DataFrame()
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


def interval(values) -> str:
    """mean [2.5th, 97.5th percentile] over the splits."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "n/a"
    return f"{v.mean():.3f} [{np.percentile(v, 2.5):.3f}, {np.percentile(v, 97.5):.3f}]"


def report_trial(trial, p, t, k, n_seeds, folds, elapsed):
    print(f"\n== {trial.name}: arm {trial.control_arm} ({trial.arm_counts()[trial.control_arm]} patients), "
          f"{n_seeds} splits x {folds} folds, K={k}, {elapsed:.1f}s")
    par = pd.DataFrame()
    if len(p):
        par = p.groupby("PARAMCD", sort=False).agg(
            rmse_ratio=("rmse_ratio", "mean"), rmse_ratio_carry=("rmse_ratio_carry", "mean"),
            coverage=("coverage", "mean"), sd_ratio=("sd_ratio_median", "mean"), n=("n", "mean"))
        for pc, r in par.iterrows():
            g = p[p["PARAMCD"] == pc]
            ok_a = "ok" if r["rmse_ratio"] <= RATIO_TARGET else "--"
            ok_c = "ok" if COVERAGE_TARGET[0] <= r["coverage"] <= COVERAGE_TARGET[1] else "--"
            print(f"   {pc:<8} RMSE vs ANCOVA {interval(g['rmse_ratio'])} {ok_a}  vs carry-forward "
                  f"{r['rmse_ratio_carry']:.3f}  coverage {interval(g['coverage'])} {ok_c}  "
                  f"SD ratio {r['sd_ratio']:.2f}  n {r['n']:.0f}")
    ev = pd.DataFrame()
    if len(t):
        ev = t.groupby("PARAMCD", sort=False).agg(
            km_ratio=("km_ratio", "median"), c_twins=("cindex_twins", "mean"), c_cox=("cindex_cox", "mean"))
        for q, r in ev.iterrows():
            g = t[t["PARAMCD"] == q]
            print(f"   {q:<8} KM distance ratio median {r['km_ratio']:.2f} (splits {interval(g['km_ratio'])})"
                  f"   C-index twins {interval(g['cindex_twins'])} vs Cox {interval(g['cindex_cox'])}")
    return par.assign(trial=trial.name), ev.assign(trial=trial.name)


def set_figures(label: str, params: list, events: list) -> dict:
    out = {}
    par = pd.concat(params) if params else pd.DataFrame()
    if len(par):
        r, c = par["rmse_ratio"], par["coverage"]
        out.update({f"{label}_params": len(par), f"{label}_rmse_ratio_median": float(r.median()),
                    f"{label}_rmse_ratio_min": float(r.min()), f"{label}_rmse_ratio_max": float(r.max()),
                    f"{label}_rmse_ratio_carry_median": float(par["rmse_ratio_carry"].median()),
                    f"{label}_coverage_median": float(c.median()), f"{label}_coverage_min": float(c.min()),
                    f"{label}_coverage_max": float(c.max())})
    ev = pd.concat(events) if events else pd.DataFrame()
    if len(ev):
        gap = ev["c_twins"] - ev["c_cox"]
        out.update({f"{label}_events": len(ev), f"{label}_km_ratio_median": float(ev["km_ratio"].median()),
                    f"{label}_km_ratio_max": float(ev["km_ratio"].max()),
                    f"{label}_cindex_gap_median": float(gap.median()), f"{label}_cindex_gap_min": float(gap.min())})
    return out


def print_set(label: str, figures: dict) -> None:
    f = {k[len(label) + 1:]: v for k, v in figures.items() if k.startswith(label + "_")}
    if "params" in f:
        print(f"{label}: {f['params']} parameters: RMSE ratio vs ANCOVA median {f['rmse_ratio_median']:.3f} "
              f"(min {f['rmse_ratio_min']:.3f}, max {f['rmse_ratio_max']:.3f}; vs carry-forward median "
              f"{f['rmse_ratio_carry_median']:.3f}); 10-90% coverage median {f['coverage_median']:.3f} "
              f"(min {f['coverage_min']:.3f}, max {f['coverage_max']:.3f})")
    if "events" in f:
        print(f"{label}: {f['events']} event types: KM distance ratio median {f['km_ratio_median']:.2f} "
              f"(max {f['km_ratio_max']:.2f}); C-index twins - Cox median {f['cindex_gap_median']:+.3f} "
              f"(min {f['cindex_gap_min']:+.3f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=("dev", "test", "all"), default="all",
                    help="development trials, test trials or both (default)")
    ap.add_argument("--trials", nargs="*", help="only these corpus trials")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--k", type=int, default=20, help="twins per held-out patient")
    ap.add_argument("--chroma", action="store_true", help="use the default (Chroma) retriever")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 10 twins")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a local generator setting (VALUE read as JSON), e.g. tte_neighbors=40")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    seeds = list(range(2 if args.quick else args.seeds))
    k = 10 if args.quick else args.k
    settings = {}
    for item in args.setting:
        name, _, text = item.partition("=")
        try:
            settings[name] = json.loads(text)
        except ValueError:
            settings[name] = text
    if not args.chroma:
        from services.retrieval.retriever import ExactRetriever
        settings["retriever_factory"] = ExactRetriever

    sets = {"dev": corpus.DEVELOPMENT, "test": corpus.TEST}
    chosen = ["dev", "test"] if args.set == "all" else [args.set]
    print("corpus split (fixed before tuning, bench/corpus.py): development "
          f"{', '.join(corpus.DEVELOPMENT)}; test {', '.join(corpus.TEST)}")
    result, speeds = {}, []
    for label in chosen:
        params, events = [], []
        print(f"\n######## {label.upper()} trials")
        for name in sets[label]:
            if args.trials and name not in args.trials:
                continue
            if not corpus.available(name):
                print(f"\n== {name}: not available here (../shared missing)")
                continue
            trial = corpus.load(name)
            p, t, _, elapsed = run_trial(trial, seeds, args.folds, k, settings)
            par, ev = report_trial(trial, p, t, k, len(seeds), args.folds, elapsed)
            if len(par):
                params.append(par)
            if len(ev):
                events.append(ev)
            if not args.no_throughput:
                n, dt = throughput(trial, settings)
                speeds.append(n / dt)
                print(f"   throughput: {n} twins in {dt:.2f}s = {n / dt:,.0f} twins/s (whole run, K=20)")
        figures = set_figures(label, params, events)
        print()
        print_set(label, figures)
        result.update(figures)
    if speeds:
        result["twins_per_s_min"] = float(min(speeds))
    print()
    print("RESULT " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
