"""Backtest: do twins of real control patients look like what those patients really did?

Protocol (`backtest(trial, ...)`), k-fold cross-fitting on the control arm:

1. The control arm is split at random (seeded) into `folds` folds; `folds=2` is the "split in
   half" protocol. Each fold is held out once.
2. The knowledge base is the whole trial minus the held-out fold (both arms). The generator
   is fitted on it and twins the held-out patients under the control arm from their baseline
   only (K twins each).
3. The twins are compared with the held-out patients' real post-baseline data:
   - **accuracy**, per parameter and scheduled visit: RMSE of the mean of each patient's twins
     against the real value, divided by the RMSE of a per-visit linear regression
     `value ~ baseline value` fitted on the knowledge base's control arm (ANCOVA on the
     baseline; ratio <= 1: the twins predict at least as well as the standard covariate
     adjustment); `rmse_ratio_carry` divides by the RMSE of carrying the baseline forward;
   - **calibration**: share of real values inside their twins' 10th-90th percentile range
     (target 75-85%; 80% is perfect), ties with the twins split at random and balanced twins
     placed by their own rank positions (`twin_bands.pit_coverage`: on an integer scale a
     plain count is above 80% even for a perfect generator, and so is the plain rank PIT of
     balanced twins; the plain count is kept as `coverage_interval` / the `coverage` column of
     the tables);
   - **spread**: SD of the twins' values vs SD of the real values, same patients and visit;
   - **time to event**: sup distance between the Kaplan-Meier curve of the pooled twins and
     that of the held-out patients, vs the same distance for the knowledge base's control-arm
     curve (ratio <= 1: twins reproduce the held-out survival at least as well as the
     knowledge base does), and the C-index of the twins' risk (each patient's twins' expected
     over observed events under the pooled twins' Nelson-Aalen hazard, `_twin_scores`)
     against that of a Cox model (lifelines, penalizer 0.1) fitted on the knowledge base's
     control arm.
   Results of all folds are pooled (each held-out patient is predicted exactly once).
4. `pairs`: the (predicted = mean of twins, observed) pairs at every visit, for PROCOVA;
   `rho` is their correlation at the endpoint visit (trial.toml `endpoint` paramcd/avisitn,
   else the last well-populated visit of the first longitudinal parameter).
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.evaluation.backtest_verdicts import (  # noqa: F401 - endpoint_visit is read from here too
    CINDEX_MARGIN,
    COVERAGE_TARGET,
    KM_RATIO_TARGET,
    MIN_EVENTS,
    RATIO_TARGET,
    endpoint_visit,
    summarize,
)
from services.evaluation.metrics.survival import concordance, km_sup_distance
from services.evaluation.twin_bands import pit_coverage, twin_quantiles
from services.generation import GENERATORS, get_generator
from services.generation.local import BaselineFeatures
from services.generation.local.ridge import breslow

COX_PENALIZER = 0.1


@dataclass
class BacktestResult:
    trial: str
    arm: str
    folds: int
    twins_per_patient: int
    seed: int
    generator: str
    settings: dict
    visits: pd.DataFrame       # one row per parameter x visit
    parameters: pd.DataFrame   # one row per parameter
    tte: pd.DataFrame          # one row per event type
    pairs: pd.DataFrame        # one row per held-out patient x parameter x visit
    summary: dict
    timings: dict = field(default_factory=dict)
    manifests: list[dict] = field(default_factory=list)

    @property
    def rho(self) -> float | None:
        return self.summary.get("rho")


# ==========================================================================================


def backtest(trial: Trial, arm: str | None = None, folds: int = 2, twins_per_patient: int = 20,
             seed: int = 0, generator: str = "local", generator_settings: dict | None = None,
             progress: Callable[[int, int], object] | None = None,
             max_held_out: int | None = None) -> BacktestResult:
    """Cross-fitted backtest of `generator` on the `arm` (default: control) of `trial`.
    `max_held_out`: twin only that many (random) held-out patients per fold, for a generator
    whose twins are expensive (the knowledge base still excludes the whole fold)."""
    arm = arm or trial.control_arm
    if arm not in trial.arm_counts():
        raise ValueError(f"arm '{arm}' is not an arm of {trial.name} ({', '.join(trial.arms)})")
    settings = dict(generator_settings or {})
    cls = GENERATORS.get(generator)
    if cls is not None and "retriever_factory" in inspect.signature(cls).parameters:
        # Each fold's knowledge base is transient: exact k-NN on the same patient vectors in
        # memory rather than a Chroma collection per fold and seed that nothing would reopen
        # (the index agrees with exact k-NN at recall@10 >= 0.998, bench/retrieval.py).
        from services.retrieval.retriever import ExactRetriever

        settings.setdefault("retriever_factory", ExactRetriever)
    if cls is not None and "truncate_at_followup" in inspect.signature(cls).parameters:
        # Held-out patients are compared where they were observed: predict every scheduled visit
        # (conditional on being observed) rather than cutting twins at their simulated follow-up.
        # Forced, not defaulted: a run's own settings say True (its twins end with their
        # simulated follow-up), and with them a late visit's mean rested on the few twins still
        # followed (pbc, K 5, the Validate page: RMSE ratios 1.03-1.09 for 0.97-0.99). By the
        # setting, not the name, so that a registered subclass is compared the same way.
        settings["truncate_at_followup"] = False
    ids = trial.subjects.loc[trial.subjects["ARM"] == arm, "USUBJID"].to_numpy(dtype=object)
    if folds < 2 or len(ids) < 2 * folds:
        raise ValueError(f"need folds >= 2 and at least 2 patients per fold ({len(ids)} in {arm})")
    rng = np.random.default_rng(seed)
    split = np.array_split(rng.permutation(ids), folds)

    pairs, tte_parts, manifests = [], [], []
    t0 = time.perf_counter()
    t_gen = 0.0
    for f, held in enumerate(split):
        held_set = set(held)
        kb = trial.subset([u for u in trial.subjects["USUBJID"] if u not in held_set],
                          name=f"{trial.name} minus fold {f + 1}")
        twinned = list(held) if max_held_out is None else list(held)[:int(max_held_out)]
        sources = trial.subset(twinned, name=f"{trial.name} fold {f + 1}").baseline_only()
        gen = get_generator(generator, **settings).fit(kb)
        t1 = time.perf_counter()
        run = gen.generate(sources, target_arm=arm, twins_per_patient=twins_per_patient, seed=seed)
        t_gen += time.perf_counter() - t1
        manifests.append({k: v for k, v in run.manifest.items() if k not in ("neighbours", "donors")})
        pairs.append(_fold_pairs(trial, kb, arm, twinned, run).assign(FOLD=f + 1))
        if trial.tte is not None and run.tte is not None:
            tte_parts.append(_fold_tte(trial, kb, arm, twinned, run, f + 1))
        if progress is not None:
            progress(f + 1, folds)

    # a fold without pairs (no visit of the parameter among its held-out patients) keeps its
    # columns only when every fold is empty: pandas deprecates dtypes read from empty frames
    pairs = pd.concat([p for p in pairs if len(p)] or pairs[:1], ignore_index=True) if pairs else pd.DataFrame()
    visits = _visit_table(pairs)
    parameters = _parameter_table(pairs, visits)
    tte = _tte_table(tte_parts)
    n_twins = sum(int((m.get("counts") or {}).get("twins", 0)) for m in manifests)
    timings = {"total_s": round(time.perf_counter() - t0, 3), "generate_s": round(t_gen, 3),
               "twins": n_twins, "twins_per_s": round(n_twins / t_gen, 1) if t_gen > 0 else None}
    summary = summarize(trial, arm, pairs, visits, parameters, tte, twins_per_patient, manifests)
    summary["held_out_twinned"] = int(sum(min(len(h), max_held_out or len(h)) for h in split))
    summary["held_out"] = int(sum(len(h) for h in split))
    return BacktestResult(trial=trial.name, arm=arm, folds=folds, twins_per_patient=twins_per_patient,
                          seed=seed, generator=generator,
                          settings={k: v for k, v in settings.items() if _plain(v)},
                          visits=visits, parameters=parameters, tte=tte, pairs=pairs, summary=summary,
                          timings=timings, manifests=manifests)


def _plain(v) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, tuple, dict))


# ------------------------------------------------------------------------------------------
# longitudinal


def _fold_pairs(trial: Trial, kb: Trial, arm: str, held, run) -> pd.DataFrame:
    """Held-out patients x parameter x visit: observed, twins' mean / 10th / 90th percentile /
    SD, the reference regression's prediction and the baseline."""
    held = set(held)
    real = trial.visit_values[trial.visit_values["USUBJID"].isin(held)]
    real = real[["USUBJID", "PARAMCD", "AVISITN", "AVISIT", "ADY", "AVAL"]].rename(columns={"AVAL": "OBSERVED"})
    tw = run.values()
    if tw.empty or real.empty:
        return pd.DataFrame(columns=["USUBJID", "PARAMCD", "AVISITN", "OBSERVED", "PREDICTED", "PIT_COVER"])
    tw = tw.rename(columns={"SRCSUBJID": "SRC"})
    stats = twin_quantiles(tw, ["SRC", "PARAMCD", "AVISITN"]).rename(columns={"SRC": "USUBJID"})
    out = real.merge(stats, on=["USUBJID", "PARAMCD", "AVISITN"], how="inner")
    # the generator says whether a source's twins are balanced (`local`'s default; an LLM run
    # whose model earned no weight); such twins are ranked by their own positions (`twin_bands`)
    balanced = bool(run.manifest.get("twins_balanced", False))
    out["PIT_COVER"] = pit_coverage(tw.drop(columns="USUBJID").rename(columns={"SRC": "USUBJID"}), out,
                                    ["USUBJID", "PARAMCD", "AVISITN"], balanced=balanced)

    # reference: per-visit OLS value ~ baseline value on the knowledge base's control arm
    kb_vv = kb.visit_values[kb.visit_values["ARM"] == arm]
    kb_base = kb.baseline_long[["USUBJID", "PARAMCD", "AVAL"]].rename(columns={"AVAL": "BASE"})
    kb_vv = kb_vv.merge(kb_base, on=["USUBJID", "PARAMCD"], how="left")
    held_base = trial.subset(list(held)).baseline_only().baseline_long[["USUBJID", "PARAMCD", "AVAL"]] \
        .rename(columns={"AVAL": "BASELINE"})
    out = out.merge(held_base, on=["USUBJID", "PARAMCD"], how="left")
    ref = np.full(len(out), np.nan)
    for (p, v), idx in out.groupby(["PARAMCD", "AVISITN"]).groups.items():
        train = kb_vv[(kb_vv["PARAMCD"] == p) & (kb_vv["AVISITN"] == v)]
        both = train.dropna(subset=["AVAL", "BASE"])
        rows = out.loc[idx]
        if len(both) >= 3 and both["BASE"].std() > 0:
            slope, icpt = np.polyfit(both["BASE"].to_numpy(float), both["AVAL"].to_numpy(float), 1)
            pred = icpt + slope * rows["BASELINE"].to_numpy(float)
            pred = np.where(np.isfinite(pred), pred, train["AVAL"].mean())
        elif len(train):
            pred = np.full(len(rows), train["AVAL"].mean())
        else:
            continue
        ref[out.index.get_indexer(idx)] = pred
    out["REFERENCE"] = ref
    out["CARRY"] = out["BASELINE"]
    return out


def _visit_table(pairs: pd.DataFrame) -> pd.DataFrame:
    cols = ["PARAMCD", "AVISITN", "AVISIT", "ADY", "n", "rmse_twins", "rmse_reference", "rmse_ratio",
            "coverage", "coverage_pit", "sd_real", "sd_twins", "sd_ratio", "corr"]
    if pairs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for (p, v), g in pairs.groupby(["PARAMCD", "AVISITN"], sort=False):
        g = g[np.isfinite(g["REFERENCE"]) & np.isfinite(g["PREDICTED"])]
        if len(g) < 3:
            continue
        obs = g["OBSERVED"].to_numpy(float)
        e_t = g["PREDICTED"].to_numpy(float) - obs
        e_r = g["REFERENCE"].to_numpy(float) - obs
        rmse_t = float(np.sqrt(np.mean(e_t ** 2)))
        rmse_r = float(np.sqrt(np.mean(e_r ** 2)))
        cover = float(np.mean((obs >= g["Q10"].to_numpy(float)) & (obs <= g["Q90"].to_numpy(float))))
        cover_pit = float(g["PIT_COVER"].mean())
        # spread: SD across patients of one twin each vs SD of the real values (same patients)
        sd_real = float(np.std(obs, ddof=1))
        total_var = np.var(g["PREDICTED"].to_numpy(float), ddof=1) + np.mean(g["TWIN_SD"].fillna(0) ** 2)
        sd_twins = float(np.sqrt(total_var))
        corr = float(np.corrcoef(g["PREDICTED"], obs)[0, 1]) if np.std(obs) > 0 and g["PREDICTED"].std() > 0 \
            else float("nan")
        rows.append({"PARAMCD": p, "AVISITN": v, "AVISIT": g["AVISIT"].iloc[0], "ADY": float(g["ADY"].median()),
                     "n": len(g), "rmse_twins": rmse_t, "rmse_reference": rmse_r,
                     "rmse_ratio": rmse_t / rmse_r if rmse_r > 0 else float("nan"), "coverage": cover,
                     "coverage_pit": cover_pit, "sd_real": sd_real, "sd_twins": sd_twins,
                     "sd_ratio": sd_twins / sd_real if sd_real > 0 else float("nan"), "corr": corr})
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["PARAMCD", "AVISITN"], kind="stable").reset_index(drop=True) if len(out) else out


def _parameter_table(pairs: pd.DataFrame, visits: pd.DataFrame) -> pd.DataFrame:
    cols = ["PARAMCD", "visits", "n", "rmse_ratio", "rmse_ratio_carry", "rmse_ratio_median", "coverage",
            "coverage_pit", "sd_ratio_median", "accuracy_met", "calibration_met"]
    if visits.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for p, v in visits.groupby("PARAMCD", sort=False):
        g = pairs[(pairs["PARAMCD"] == p) & pairs["AVISITN"].isin(v["AVISITN"])]
        g = g[np.isfinite(g["REFERENCE"]) & np.isfinite(g["PREDICTED"])]
        # pooled over visits: the ratio of root mean squared errors, each visit weighted by its size
        sse_t = float(((g["PREDICTED"] - g["OBSERVED"]) ** 2).sum())
        sse_r = float(((g["REFERENCE"] - g["OBSERVED"]) ** 2).sum())
        ratio = float(np.sqrt(sse_t / sse_r)) if sse_r > 0 else float("nan")
        c = g[np.isfinite(g["CARRY"])]
        sse_c = float(((c["CARRY"] - c["OBSERVED"]) ** 2).sum())
        sse_tc = float(((c["PREDICTED"] - c["OBSERVED"]) ** 2).sum())
        ratio_carry = float(np.sqrt(sse_tc / sse_c)) if sse_c > 0 else float("nan")
        cover = float(((g["OBSERVED"] >= g["Q10"]) & (g["OBSERVED"] <= g["Q90"])).mean())
        cover_pit = float(g["PIT_COVER"].mean())
        rows.append({"PARAMCD": p, "visits": len(v), "n": len(g), "rmse_ratio": ratio,
                     "rmse_ratio_carry": ratio_carry, "rmse_ratio_median": float(v["rmse_ratio"].median()), "coverage": cover,
                     "coverage_pit": cover_pit, "sd_ratio_median": float(v["sd_ratio"].median()),
                     "accuracy_met": bool(ratio <= RATIO_TARGET) if np.isfinite(ratio) else None,
                     "calibration_met": bool(COVERAGE_TARGET[0] <= cover_pit <= COVERAGE_TARGET[1])
                     if np.isfinite(cover_pit) else None})
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------
# time to event


def _twin_scores(tw: pd.DataFrame) -> pd.Series:
    """Per source: log of its twins' expected over observed events (higher: longer survival).
    Expected is the sum, over the source's twins, of the pooled twins' Nelson-Aalen cumulative
    hazard at each twin's own time (the one-step estimate of the source's hazard ratio against
    everybody's, as a standardized mortality ratio is); half an event is added to both so that
    a source without events still ranks. Under proportional hazards this uses every twin's
    follow-up, where the twins' Kaplan-Meier restricted mean (the earlier score) rests on the
    few twins left at risk late: on the 4 development event types the C-index rose by 0.004 to
    0.010 at K 20 and by 0 to 0.013 at K 5, never fell."""
    tw = tw[np.isfinite(pd.to_numeric(tw["AVAL"], errors="coerce")) & tw["CNSR"].isin([0, 1])]
    t = tw["AVAL"].to_numpy(float)
    e = (tw["CNSR"].to_numpy() == 0).astype(float)
    times, cumhaz = breslow(t, e > 0, np.zeros(len(t)))      # no covariates: Nelson-Aalen
    at = np.searchsorted(times, t, side="right") - 1            # last event time <= t
    expected = np.where(at >= 0, cumhaz[np.maximum(at, 0)], 0.0) if len(times) else np.zeros(len(t))
    per = pd.DataFrame({"s": tw["SRCSUBJID"].to_numpy(), "e": e, "x": expected}).groupby("s", sort=False)
    return np.log((per["x"].sum() + 0.5) / (per["e"].sum() + 0.5))


def _cox_scores(kb: Trial, arm: str, sources: Trial, paramcd: str) -> pd.Series:
    """-log partial hazard of a penalised Cox model on the knowledge base's control arm."""
    from lifelines import CoxPHFitter

    ids = list(kb.subjects.loc[kb.subjects["ARM"] == arm, "USUBJID"])
    tte = kb.tte[(kb.tte["PARAMCD"] == paramcd) & kb.tte["USUBJID"].isin(ids)].set_index("USUBJID")
    ids = [u for u in ids if u in tte.index]
    feats = BaselineFeatures(list(kb.parameters), kb.covariates).fit(kb, ids)
    X = feats.transform(kb, ids)
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    df["T"] = tte.loc[ids, "AVAL"].to_numpy(float)
    df["E"] = 1 - tte.loc[ids, "CNSR"].to_numpy(int)
    qids = list(sources.subjects["USUBJID"])
    Xq = pd.DataFrame(feats.transform(sources, qids), columns=df.columns[:-2])
    cph = CoxPHFitter(penalizer=COX_PENALIZER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cph.fit(df, duration_col="T", event_col="E")
    return pd.Series(-np.log(cph.predict_partial_hazard(Xq).to_numpy(float)), index=qids)


def _fold_tte(trial: Trial, kb: Trial, arm: str, held, run, fold: int) -> pd.DataFrame:
    held = list(held)
    rows = []
    truth_all = trial.tte[trial.tte["USUBJID"].isin(set(held))]
    kb_arm = kb.tte[kb.tte["ARM"] == arm]
    sources = trial.subset(held).baseline_only()
    for q in trial.tte_parameters:
        truth = truth_all[truth_all["PARAMCD"] == q]
        tw = run.tte[run.tte["PARAMCD"] == q]
        ref = kb_arm[kb_arm["PARAMCD"] == q]
        if truth.empty or tw.empty or ref.empty:
            continue
        # up to the held-out patients' last follow-up, however long the twins' or the
        # knowledge base's runs
        tau = float(truth["AVAL"].max())
        t_truth, e_truth = truth["AVAL"], truth["CNSR"] == 0
        d_twins = km_sup_distance(tw["AVAL"], tw["CNSR"] == 0, t_truth, e_truth, tau).sup
        d_ref = km_sup_distance(ref["AVAL"], ref["CNSR"] == 0, t_truth, e_truth, tau).sup
        scores = _twin_scores(tw)
        try:
            cox = _cox_scores(kb, arm, sources, q)
        except Exception:  # noqa: BLE001 - a Cox model that does not converge is reported as NaN
            cox = pd.Series(dtype=float)
        rows.append(pd.DataFrame({
            "FOLD": fold, "PARAMCD": q, "USUBJID": truth["USUBJID"].to_numpy(),
            "AVAL": truth["AVAL"].to_numpy(float), "EVENT": (truth["CNSR"] == 0).to_numpy(int),
            "TWIN_SCORE": truth["USUBJID"].map(scores).to_numpy(float),
            "COX_SCORE": truth["USUBJID"].map(cox).to_numpy(float) if len(cox) else np.nan,
            "KM_TWINS": d_twins, "KM_REFERENCE": d_ref,
        }))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def _tte_table(parts: list[pd.DataFrame]) -> pd.DataFrame:
    cols = ["PARAMCD", "n", "events", "km_sup_twins", "km_sup_reference", "km_ratio", "cindex_twins",
            "cindex_cox", "km_met", "cindex_met"]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=cols)
    allp = pd.concat(parts, ignore_index=True)
    rows = []
    for q, g in allp.groupby("PARAMCD", sort=False):
        per_fold = g.groupby("FOLD")[["KM_TWINS", "KM_REFERENCE"]].first()
        km_t, km_r = float(per_fold["KM_TWINS"].mean()), float(per_fold["KM_REFERENCE"].mean())

        def cindex(score, g=g):
            ok = np.isfinite(score)
            if ok.sum() < 3 or g["EVENT"][ok].sum() == 0:
                return float("nan")
            return concordance(score[ok], g["AVAL"][ok], g["EVENT"][ok])

        c_t, c_c = cindex(g["TWIN_SCORE"].to_numpy(float)), cindex(g["COX_SCORE"].to_numpy(float))
        judged = int(g["EVENT"].sum()) >= MIN_EVENTS        # else "not estimable" (backtest_verdicts)
        rows.append({"PARAMCD": q, "n": len(g), "events": int(g["EVENT"].sum()),
                     "km_sup_twins": km_t, "km_sup_reference": km_r,
                     "km_ratio": km_t / km_r if km_r > 0 else float("nan"),
                     "cindex_twins": c_t, "cindex_cox": c_c,
                     "km_met": bool(km_r > 0 and km_t / km_r <= KM_RATIO_TARGET) if judged else None,
                     "cindex_met": bool(np.isfinite(c_t) and (not np.isfinite(c_c) or c_t >= c_c - CINDEX_MARGIN))
                     if judged else None})
    return pd.DataFrame(rows, columns=cols)
