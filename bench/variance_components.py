"""Which variance term of a synthetic-control effect falls short: a crossed design of C cohorts x J
knowledge bases, each drawn with replacement from a trial's control arm (the bootstrap null design of
bench/inference.py), every cohort twinned by every knowledge base's fitted generator.

theta_cj = mean over cohort c's patients of their pseudo-values (real - own twins; log scale for the
ratio of geometric means). The random-effects ANOVA of the C x J table gives the truth of the design:
Var(k), the knowledge base's effect on every cohort at once, is what the generator term v_gen
estimates; Var(c) + Var(ck), the cohort's own variability given a knowledge base (the interaction
included), is what the patient term v_pat estimates (`services.evaluation.generator_term`). Each
cell's v_pat is its cohort's, and each cell's v_gen comes from B refits on bootstrap copies of its
knowledge base, all cohorts twinned by the same refits (their pseudo-values split by cohort).

Prints per measure the truth, the mean estimates and their ratios; ends with a RESULT line. The
patient part's truth rests on C cohorts only (the intervals resample those C): with a heavy-tailed
endpoint a few dozen cohorts typically under-state it (pbc, 20 cohorts), so read it with many.
    python bench/variance_components.py --trial ahd --cohorts 30 --kbs 300      (13 min)
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus
from inference import control_pool, endpoint, generator
from null_designs import cohort_ids, draw_patients

from services.evaluation import effect_stats
from services.evaluation import effects as E
from services.evaluation import generator_term as GT
from services.evaluation.effect_stats import statistics, twin_values


def crossed_anova(T: np.ndarray) -> dict:
    """Var(c), Var(k), Var(ck) of a C x J table with one value per cell (method of moments)."""
    C, J = T.shape
    g = T.mean()
    ms_c = J * ((T.mean(axis=1) - g) ** 2).sum() / (C - 1)
    ms_k = C * ((T.mean(axis=0) - g) ** 2).sum() / (J - 1)
    r = T - T.mean(axis=1, keepdims=True) - T.mean(axis=0, keepdims=True) + g
    ms_ck = (r ** 2).sum() / ((C - 1) * (J - 1))
    return {"c": (ms_c - ms_ck) / J, "k": (ms_k - ms_ck) / C, "ck": ms_ck}


def _ratio_intervals(T: pd.DataFrame, cells: pd.DataFrame, rng, reps: int = 500) -> tuple:
    """95 % percentile intervals of v_pat / truth and v_gen / truth, resampling cohorts and
    knowledge bases (both with replacement: the pigeonhole bootstrap of a crossed design)."""
    vp = cells.pivot(index="c", columns="j", values="v_pat").loc[T.index, T.columns].to_numpy(float)
    vg = cells.pivot(index="c", columns="j", values="v_gen").loc[T.index, T.columns].to_numpy(float)
    X = T.to_numpy(float)
    out = []
    for _ in range(reps):
        r = rng.integers(0, X.shape[0], X.shape[0])
        c = rng.integers(0, X.shape[1], X.shape[1])
        comp = crossed_anova(X[np.ix_(r, c)])
        out.append((np.nanmean(vp[np.ix_(r, c)]) / (comp["c"] + comp["ck"]),
                    np.nanmean(vg[np.ix_(r, c)]) / comp["k"]))
    q = np.nanpercentile(np.array(out), [2.5, 97.5], axis=0)
    return q[0, 0], q[1, 0], q[0, 1], q[1, 1]


def simulated_trial(n: int, seed: int = 0):
    """A known-truth control arm of ``n`` patients (no real data): baseline B lognormal
    (log B ~ N(3, 0.4^2)), age, sex, one post-baseline visit with
    log Y = 0.6 + 0.8 log B + 0.1 age (z) + N(0, 0.3^2): a positive, skewed lab-like endpoint
    whose knowledge-base size the run sets (`--sim`)."""
    rng = np.random.default_rng([seed, 31, n])
    ids = [f"SIM-{i:04d}" for i in range(n)]
    age = rng.normal(60, 10, n)
    base = np.exp(rng.normal(3.0, 0.4, n))
    y = np.exp(0.6 + 0.8 * np.log(base) + 0.1 * (age - 60) / 10 + rng.normal(0, 0.3, n))
    rows = [{"USUBJID": u, "PARAMCD": "LAB", "PARAM": "Simulated lab value", "AVAL": float(v), "ADY": d,
             "AVISITN": a, "AVISIT": "Baseline" if a == 0 else "Week 4", "ABLFL": "Y" if a == 0 else ""}
            for u, b_, y_ in zip(ids, base, y) for a, v, d in ((0, b_, 1.0), (1, y_, 29.0))]
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": "Placebo", "AGE": age.round(),
                         "SEX": rng.choice(["M", "F"], n)})
    return corpus.as_trial(f"simulated n={n}", adsl, {"adlb": pd.DataFrame(rows)},
                           meta={"control_arm": "Placebo"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trial", default="ahd")
    ap.add_argument("--cohorts", type=int, default=30)
    ap.add_argument("--kbs", type=int, default=300)
    ap.add_argument("--k", type=int, default=20, help="twins per patient of each cell's run")
    ap.add_argument("--refits", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cells-out", type=Path, default=None, help="CSV of every cell's theta and estimates")
    ap.add_argument("--sim", type=int, default=None, metavar="N",
                    help="a simulated control arm of N patients (`simulated_trial`) instead of --trial")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    trial = simulated_trial(args.sim, args.seed) if args.sim else corpus.load(args.trial)
    if args.sim:
        args.trial = trial.name
    paramcd, avisitn = endpoint(trial)
    pool = control_pool(trial, paramcd)
    arm = pool.control_arm
    ids = pool.subjects["USUBJID"].to_numpy(object)
    half = len(ids) // 2
    rng = np.random.default_rng([args.seed, 29])
    draws = [rng.choice(ids, len(ids) - half) for _ in range(args.cohorts)]
    union = draw_patients(pool, np.concatenate(draws), "cohorts", tag="T")   # every cohort, as one source set
    new = cohort_ids(np.concatenate(draws), "T")
    members, at = [], 0
    for d in draws:
        members.append(set(new[at:at + len(d)]))
        at += len(d)
    assert set(new) == set(union.subjects["USUBJID"])
    cells = []
    for j in range(args.kbs):
        kb = draw_patients(pool, rng.choice(ids, half), f"kb{j}")
        logs = effect_stats.ratio_parameters(union, kb, arm)
        run = generator().fit(kb).generate(union.baseline_only(), target_arm=arm, twins_per_patient=args.k,
                                          seed=1000 + j)
        main_st = statistics(union, twin_values(run), None, {}, [paramcd], logs)
        boot = GT.generator_bootstrap(union, kb, arm, "local", E.bootstrap_settings(run, "local", {}),
                                      refits=args.refits, boot_twins=10, seed=j, params=[paramcd],
                                      run_twins=args.k, log_params=logs)
        for key, s in main_st.items():
            if key[2] != avisitn:
                continue
            refits = [f[key] for f in boot.refits if key in f]
            for c, mem in enumerate(members):
                d = s.pseudo[s.pseudo.index.isin(mem)]
                if len(d) < 3:
                    continue
                held = [p[p.index.isin(mem)] for p in refits]
                term = GT.two_way_term(pd.concat(held, axis=1, join="inner")) if len(held) > 1 else GT.NO_GENERATOR_TERM
                cells.append({"measure": key[0], "c": c, "j": j, "theta": d.mean(), "v_pat": d.var(ddof=1) / len(d),
                              "v_gen": term.variance, "between": term.between, "inter": term.interaction, "n": len(d)})
    df = pd.DataFrame(cells)
    if args.cells_out:
        df.to_csv(args.cells_out, index=False)
    print(f"== {args.trial}: {paramcd} visit {avisitn:g}, {args.cohorts} cohorts x {args.kbs} knowledge bases "
          f"(bootstrap design: {len(ids) - half} / {half} of {len(ids)}), K {args.k}, B {args.refits}; "
          f"{time.perf_counter() - t0:.0f}s")
    result = []
    for m, g in df.groupby("measure"):
        T = g.pivot(index="c", columns="j", values="theta")
        T = T.dropna(axis=1).dropna(axis=0)     # a complete table: every cohort under every knowledge base
        if T.shape[0] < 3 or T.shape[1] < 3:
            continue
        comp = crossed_anova(T.to_numpy(float))
        kept = g[g["c"].isin(T.index) & g["j"].isin(T.columns)]
        vp, vg = float(kept["v_pat"].mean()), float(kept["v_gen"].mean())
        between, inter = float(kept["between"].mean()), float(kept["inter"].mean())
        truth_p, truth_g = comp["c"] + comp["ck"], comp["k"]
        total = float(np.var(T.to_numpy(float), ddof=1))
        lo_p, hi_p, lo_g, hi_g = _ratio_intervals(T, kept, rng)
        print(f"   {m:22s} {T.shape[0]} x {T.shape[1]}: Var(theta) {total:.4g}; truth patient part "
              f"{truth_p:.4g} (c {comp['c']:.3g}, ck {comp['ck']:.3g}), generator part {truth_g:.4g}; "
              f"estimates v_pat {vp:.4g} ({vp / truth_p:.2f} x [{lo_p:.2f}, {hi_p:.2f}]), "
              f"v_gen {vg:.4g} ({vg / truth_g:.2f} x [{lo_g:.2f}, {hi_g:.2f}]) = between-refit {between:.4g} "
              f"- interaction / n {inter:.4g}; truth of the interaction / n, Var(ck) {comp['ck']:.4g}")
        short = m.split("_")[0][:5]
        result += [f"{short}_vpat_ratio={vp / truth_p:.3f}", f"{short}_vgen_ratio={vg / truth_g:.3f}"]
    print("RESULT " + " ".join(result + [f"minutes={(time.perf_counter() - t0) / 60:.1f}"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
