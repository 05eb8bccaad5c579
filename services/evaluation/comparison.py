"""Compare a twin arm with real data: the numbers behind the Compare page, the report and
`twinarm evaluate`.

Three groups are compared (`GROUPS`):
- **twin arm**: the twins (target arm, generated after baseline);
- **real target arm**: real patients of the knowledge base in the target arm, other than the
  sources (what the twins should resemble, e.g. the real placebo patients);
- **real source cohort**: the real patients the twins were made for, under their own arm.

Feature space of the fidelity/privacy/utility metrics: one column per parameter at baseline and
at each scheduled visit (`PARAMCD@AVISITN`) and, per event type, log(1 + time) and the event
indicator (`PARAMCD@time`, `PARAMCD@event`), standardised by the real target arm. Privacy looks
at the generated columns only (visits and events): baselines are copied from the sources by
design. A trial with events only (ADSL + ADTTE) has a feature space of its event columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.evaluation import metrics as M
from services.evaluation.backtest_verdicts import visit_label
from services.evaluation.feature_space import FeatureSpace, build_feature_space, is_event_column
from services.evaluation.groups import SOURCE, TARGET, TWIN, tte_records
from services.evaluation.metrics import verdicts as V
from services.evaluation.run_store import cached_in_run
from services.evaluation.survival_comparison import survival_summary
from services.jsonable import jsonable
from services.retrieval.knn import exact_knn


@dataclass
class Comparison:
    """A knowledge base, a twin arm loaded as a Trial, and the groups to compare."""

    kb: Trial
    twins: Trial
    manifest: dict = field(default_factory=dict)

    @cached_property
    def target_arm(self) -> str:
        arm = self.manifest.get("target_arm")
        return str(arm) if arm else str(self.twins.subjects["ARM"].iloc[0])

    @cached_property
    def source_ids(self) -> list[str]:
        if "SRCSUBJID" not in self.twins.subjects:
            return []
        known = set(self.kb.subjects["USUBJID"])
        return [s for s in dict.fromkeys(self.twins.subjects["SRCSUBJID"].astype(str)) if s in known]

    @cached_property
    def groups(self) -> dict[str, Trial]:
        kb = self.kb.subjects
        sources = set(self.source_ids)
        target = kb.loc[kb["ARM"].eq(self.target_arm) & ~kb["USUBJID"].isin(sources), "USUBJID"]
        out = {}
        if sources:
            out[SOURCE] = self.kb.subset(sources)
        out[TARGET] = self.kb.subset(target)
        out[TWIN] = self.twins
        return out

    @cached_property
    def parameters(self) -> list[str]:
        """Longitudinal parameters present in both the twins and the real target arm."""
        twin_params = set(self.twins.visit_values["PARAMCD"])
        return [p for p in self.kb.longitudinal_parameters if p in twin_params]

    @cached_property
    def tte_parameters(self) -> list[str]:
        return [p for p in self.kb.tte_parameters if p in set(self.twins.tte_parameters)]

    def arm_groups(self) -> dict[str, str]:
        """A real arm's group on the charts: the target arm's, the sources' arms'."""
        arms = self.kb.subjects.loc[self.kb.subjects["USUBJID"].isin(self.source_ids), "ARM"].unique()
        return {str(a): SOURCE for a in arms} | {self.target_arm: TARGET}

    def source_arm(self) -> str:
        arms = self.kb.subjects.loc[self.kb.subjects["USUBJID"].isin(self.source_ids), "ARM"].unique()
        return ", ".join(map(str, arms))


def compare(kb: Trial, twins: Trial, manifest: dict | None = None) -> Comparison:
    if twins.subjects.empty:
        raise ValueError("the twin arm is empty")
    return Comparison(kb, twins, dict(manifest or {}))


# ----- trajectories ----------------------------------------------------------------------

# ----- survival ----------------------------------------------------------------------------

def group_counts(comp: Comparison) -> list[str]:
    """One line per group: its arm(s) and patients; the twin arm counts its source patients and
    says how many twins they have (it listed 650 "patients" for 130 patients' 5 twins each)."""
    out = []
    for group, trial in comp.groups.items():
        arms = ", ".join(map(str, trial.subjects["ARM"].unique()))
        if group == TWIN and "SRCSUBJID" in trial.subjects:
            n = trial.subjects["SRCSUBJID"].nunique()
            out.append(f"{group} ({arms}): {n} patients, {len(trial.subjects)} twins")
        else:
            out.append(f"{group} ({arms}): {len(trial.subjects)} patients")
    return out


# ----- feature space for metrics -------------------------------------------------------------

def feature_space(comp: Comparison, min_fraction: float = 0.3) -> FeatureSpace:
    """Baseline, visit and event columns observed in at least `min_fraction` of the real target
    arm and present in the twins (`feature_space.build_feature_space`)."""
    return build_feature_space(comp.groups[TARGET], comp.twins, comp.parameters, comp.tte_parameters,
                               min_fraction)


def _long(trial: Trial, params: list[str]) -> pd.DataFrame:
    vv = trial.visit_values
    return vv[vv["PARAMCD"].isin(params)][["USUBJID", "PARAMCD", "AVISITN", "AVAL"]]


# ----- metric groups ---------------------------------------------------------------------------

def _net_of_sources(comp: Comparison, marginal: pd.DataFrame) -> pd.DataFrame:
    """`marginal` with `smd_expected`: the SMD a perfect generator would show at each visit
    because the sources differ from the real target arm at baseline (the target arm's slope of
    the visit value on its own baseline value x the baseline mean difference sources - target,
    over the visit's pooled SD), and `smd_net` = smd - smd_expected: the twins' own error. Twins
    inherit their sources' baselines, so that imbalance is not theirs."""
    out = marginal.assign(smd_expected=0.0)
    src, tgt = comp.groups.get(SOURCE), comp.groups[TARGET]
    if src is not None and len(out):
        tb, sb = tgt.baseline, src.baseline
        vv = tgt.visit_values
        for i, row in out.iterrows():
            p = row["PARAMCD"]
            if p not in tb.columns or p not in sb.columns:
                continue
            y = vv[(vv["PARAMCD"] == p) & (vv["AVISITN"] == row["AVISITN"])].set_index("USUBJID")["AVAL"]
            pairs = pd.concat([tb[p].rename("x"), y.rename("y")], axis=1, join="inner").dropna()
            pooled = np.sqrt((row["sd_real"] ** 2 + row["sd_twin"] ** 2) / 2)
            if len(pairs) < 3 or pairs["x"].var() <= 0 or not np.isfinite(pooled) or pooled <= 0:
                out.at[i, "smd_expected"] = np.nan
                continue
            slope = float(np.polyfit(pairs["x"], pairs["y"], 1)[0])
            gap = float(sb[p].dropna().mean() - tb[p].dropna().mean())
            out.at[i, "smd_expected"] = slope * gap / pooled
    return out.assign(smd_net=out["smd"] - out["smd_expected"])


def marginal_visit_names(kb: Trial, marginal: pd.DataFrame) -> list[str]:
    """Each row's visit name, once per parameter and visit; a name two visits of a parameter
    share gets its number, so that their rows stay apart on a chart."""
    names = {(p, v): visit_label(kb, p, v) for p, v in set(zip(marginal["PARAMCD"], marginal["AVISITN"]))}
    taken: dict[tuple, int] = {}
    for (p, _), name in names.items():
        taken[(p, name)] = taken.get((p, name), 0) + 1
    return [name if taken[(p, name)] == 1 else f"{name} ({v:g})"
            for (p, v), name in ((k, names[k]) for k in zip(marginal["PARAMCD"], marginal["AVISITN"]))]


def fidelity(comp: Comparison, seed: int = 0) -> dict:
    """Marginals per parameter/visit (SMD, KS), correlation structure, detection AUROC."""
    real_long, twin_long = _long(comp.groups[TARGET], comp.parameters), _long(comp.twins, comp.parameters)
    marginal = _net_of_sources(comp, M.marginal_fidelity(real_long, twin_long))
    # the visit's name, as every other chart says it ("Week 2", not "2"; a browser review)
    marginal["AVISIT"] = marginal_visit_names(comp.kb, marginal)
    space = feature_space(comp)
    if not space.columns:
        missing = {"error": "no baseline, visit or event column is observed in both the real arm and the twins"}
        return {"marginal": marginal, "share_abs_smd_below_0_1": np.nan, "share_abs_net_smd_below_0_1": np.nan,
                "median_abs_smd": np.nan, "median_ks": np.nan, "correlation_distance": missing,
                "dimension_wise_mean_correlation": missing, "detection": missing}
    _, R = space.matrix(comp.groups[TARGET])
    _, T = space.matrix(comp.twins)
    # correlation and per-dimension means on the original scale (standardised means are ~0)
    real_wide = pd.DataFrame(space.matrix(comp.groups[TARGET], standardise=False)[1], columns=space.columns)
    twin_wide = pd.DataFrame(space.matrix(comp.twins, standardise=False)[1], columns=space.columns)
    out = {
        "marginal": marginal,
        "share_abs_smd_below_0_1": float((marginal["smd"].abs() < 0.1).mean()) if len(marginal) else np.nan,
        "share_abs_net_smd_below_0_1": (float((marginal["smd_net"].dropna().abs() < 0.1).mean())
                                        if marginal["smd_net"].notna().any() else np.nan),
        "median_abs_smd": float(marginal["smd"].abs().median()) if len(marginal) else np.nan,
        "median_ks": float(marginal["ks"].median()) if len(marginal) else np.nan,
        "correlation_distance": M.correlation_distance(real_wide, twin_wide).as_dict(),
        "dimension_wise_mean_correlation": M.dimension_wise_mean_correlation(real_wide, twin_wide).as_dict(),
    }
    try:
        out["detection"] = M.detection_auroc(R, T, seed=seed).as_dict()
    except ValueError as exc:
        out["detection"] = {"error": str(exc)}
    return out


def privacy(comp: Comparison, holdout: Trial | None = None, seed: int = 0) -> dict:
    """Distances in the generated columns (post-baseline visits, event times and indicators)
    between twins and the real patients the generator learned from (the real target arm).
    Without a held-out set the yardstick is the leave-one-out distance between real patients;
    membership inference needs held-out patients (the Validate page's backtest provides them).
    Exact copies: twins equal to a real patient on every visit column (every event column in a
    trial with events only: `_copies`)."""
    space = feature_space(comp)
    cols = space.generated
    if not cols:
        return {"error": "no generated columns to compare"}
    # Patients observed at under half of the columns would be mostly imputed means, and such
    # rows sit artificially close to each other: they are left out of the distances.
    train = _mostly_observed(space.matrix(comp.groups[TARGET], cols)[1])
    twins = _mostly_observed(space.matrix(comp.twins, cols)[1])
    out: dict = {"columns": len(cols), "n_train": len(train), "n_twins": len(twins)}
    if len(train) < 5 or len(twins) < 5:
        return {**out, "error": "fewer than 5 patients observed at half of the compared visits and events"}
    if holdout is not None and len(holdout.subjects):
        hold = _mostly_observed(space.matrix(holdout, cols)[1])
        dcr = M.distance_to_closest_record(twins, train, hold)
        low, high = M.median_ratio_interval(dcr.twin_distances, dcr.holdout_distances, seed=seed)
        out["dcr"] = _strip(dcr.as_dict()) | {"ratio_ci_low": low, "ratio_ci_high": high}
        out["membership"] = M.membership_inference(twins, train, hold).as_dict()
        out["nnaa"] = M.nn_adversarial_accuracy(train, twins, hold, seed=seed).as_dict()
    else:
        out["dcr"] = _dcr_leave_one_out(twins, train, seed)
        out["nnaa"] = M.nn_adversarial_accuracy(train, twins, seed=seed).as_dict()
        out["membership"] = {"skipped": "needs held-out real patients: see the Validate page backtest"}
    out["exact_copies"] = M.record_copies(twins, train, [is_event_column(c) for c in cols])
    return out


def _copies_detail(copies: dict) -> str:
    if copies.get("n_copies") is None:
        return ""
    part = {"visits": "every post-baseline visit value", "events": "every event day and status"}.get(
        copies.get("compared", "visits"), "every generated value")
    chance = copies.get("real_to_real")
    return (f"equal to a real patient on {part}; real patients sharing such a record with another by chance: "
            f"{chance:.1%}" if chance is not None and np.isfinite(chance) else f"equal to a real patient on {part}")


def _mostly_observed(X: np.ndarray, min_fraction: float = 0.5) -> np.ndarray:
    return X[np.isfinite(X).mean(axis=1) >= min_fraction]


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if not isinstance(v, np.ndarray)}


def _dcr_leave_one_out(twins: np.ndarray, train: np.ndarray, seed: int = 0) -> dict:
    """DCR of twins to the training patients vs each training patient's distance to its
    nearest other training patient (leave-one-out yardstick)."""
    train_i, twins_i = M.impute_means(train, twins)
    d_twin = exact_knn(twins_i, train_i, 1)[1][:, 0]
    d_real = exact_knn(train_i, train_i, 2)[1][:, 1]
    tm, rm = float(np.median(d_twin)), float(np.median(d_real))
    t5, r5 = float(np.percentile(d_twin, 5)), float(np.percentile(d_real, 5))
    low, high = M.median_ratio_interval(d_twin, d_real, seed=seed)
    return {"twin_median": tm, "twin_p5": t5, "holdout_median": rm, "holdout_p5": r5,
            "ratio_median": tm / rm if rm > 0 else float("inf"), "ratio_p5": t5 / r5 if r5 > 0 else float("inf"),
            "ratio_ci_low": low, "ratio_ci_high": high,
            "n_twin": len(twins), "n_train": len(train), "yardstick": "leave-one-out real-to-real"}


def outcome_labels(comp: Comparison, trial: Trial) -> tuple[pd.Series, str]:
    """A binary outcome for utility metrics: the event of the endpoint's time-to-event
    parameter by the real target arm's median follow-up (patients censored earlier left out),
    else a value at the endpoint visit above the real target arm's median."""
    from services.evaluation.backtest import endpoint_visit

    ep = comp.kb.meta.endpoint or {}
    tte_p = ep.get("tte_paramcd") if ep.get("tte_paramcd") in comp.tte_parameters else (
        comp.tte_parameters[0] if comp.tte_parameters else None)
    if tte_p:
        ref = tte_records(comp.groups[TARGET], tte_p)
        horizon = float(ref["AVAL"].median())
        data = tte_records(trial, tte_p).set_index("USUBJID")
        known = (data["CNSR"].eq(0)) | (data["AVAL"] >= horizon)
        y = (data["CNSR"].eq(0) & (data["AVAL"] <= horizon)).astype(int)[known]
        return y, f"{tte_p} event by day {horizon:.0f}"
    paramcd, avisitn = endpoint_visit(comp.kb)
    ref = comp.groups[TARGET].visit_values
    ref = ref[(ref["PARAMCD"] == paramcd) & (ref["AVISITN"] == avisitn)]
    cut = float(ref["AVAL"].median())
    vv = trial.visit_values
    vv = vv[(vv["PARAMCD"] == paramcd) & (vv["AVISITN"] == avisitn)].set_index("USUBJID")["AVAL"]
    label = vv.map(lambda v: v).astype(float)
    return (label > cut).astype(int), f"{paramcd} at visit {avisitn:g} above {cut:.3g}"


def utility(comp: Comparison, seed: int = 0) -> dict:
    """Train-on-twins-test-on-real vs train-on-real, and real+twin augmentation (AUROC), for
    the outcome of `outcome_labels`, with the baseline as features: the parameters' baseline
    values and the ADSL covariates (`BaselineFeatures`, the generator's own design: one-hot
    categories, missing indicators, standardised on the real target arm), so a trial with
    events only is scored on its covariates."""
    from services.generation.local.features import BaselineFeatures

    target = comp.groups[TARGET]
    ids_r, ids_t = list(target.subjects["USUBJID"]), list(comp.twins.subjects["USUBJID"])
    features = BaselineFeatures(comp.parameters, comp.kb.covariates).fit(target, ids_r)
    if not features.columns:
        return {"error": "no baseline features"}
    y_real, outcome = outcome_labels(comp, target)
    y_twin, _ = outcome_labels(comp, comp.twins)
    X_r, X_t = features.transform(target, ids_r), features.transform(comp.twins, ids_t)
    real = pd.DataFrame(X_r, index=ids_r).join(y_real.rename("y"), how="inner")
    twin = pd.DataFrame(X_t, index=ids_t).join(y_twin.rename("y"), how="inner")
    if len(real) < 10 or len(twin) < 10:
        return {"outcome": outcome, "error": f"too few patients with the outcome (real {len(real)}, twins {len(twin)})"}
    rng = np.random.default_rng(seed)
    test = rng.random(len(real)) < 0.5
    tr, te = real[~test], real[test]
    xcols = [c for c in real.columns if c != "y"]
    args = (twin[xcols].to_numpy(), twin["y"].to_numpy(), tr[xcols].to_numpy(), tr["y"].to_numpy(),
            te[xcols].to_numpy(), te["y"].to_numpy())
    return {"outcome": outcome, "tstr": M.tstr_auroc(*args, seed=seed).as_dict(),
            "augmentation": M.augmentation_auroc(*args, seed=seed).as_dict()}


EVALUATION_VERSION = 6  # 2: SMD net of the sources' baseline imbalance; 3: event columns in the feature space; 4: the log-rank weighs twins 1/K with a variance clustered by patient; 5: visit names in the marginals; 6: the twins' events in patients, the KM distance's interval; bump when `evaluate` changes what it returns: stored results are redone


def evaluate(kb: Trial, twins: Trial, manifest: dict | None = None, holdout: Trial | None = None,
             seed: int = 0) -> dict:
    """Every metric of the Compare page, JSON-able (frames as lists of records)."""
    comp = compare(kb, twins, manifest)
    fid = fidelity(comp, seed=seed)
    out = {
        "knowledge_base": kb.name, "twins": twins.name, "target_arm": comp.target_arm,
        "source_arm": comp.source_arm(), "n_twins": len(twins.subjects),
        "n_sources": len(comp.source_ids), "n_real_target": len(comp.groups[TARGET].subjects),
        "parameters": comp.parameters,
        "fidelity": {**{k: v for k, v in fid.items() if k != "marginal"},
                     "marginal": fid["marginal"].to_dict(orient="records")},
        "privacy": privacy(comp, holdout, seed=seed),
        "utility": utility(comp, seed=seed),
        "survival": {p: survival_summary(comp, p) for p in comp.tte_parameters},
    }
    return jsonable(out, arrays="drop")


def cached_run_evaluation(kb: Trial, run, run_dir=None, seed: int = 0) -> dict:
    """`evaluate` of a run (no holdout), kept as `evaluation.json` in its folder for the app,
    the report and `twinarm evaluate` (`run_store`)."""
    key = {"knowledge_base": kb.content_hash, "run_id": run.run_id, "seed": seed,
           "metrics": EVALUATION_VERSION}
    return cached_in_run(run_dir, "evaluation", key,
                         lambda: evaluate(kb, run.as_trial(), run.manifest, seed=seed))


def headline(result: dict) -> pd.DataFrame:
    """The metrics summary shown on the Compare page and in the report: one row per metric with
    its value, its 95 % interval where it has one, the ideal (metrics registry), the threshold
    and the verdict that follows from threshold and interval (`metrics.verdicts`): "met",
    "not met", "inconclusive" (the interval crosses the threshold) or "n/a"; `meaning` says it
    in words and `detail` gives what the number is made of."""
    f, p, u = result.get("fidelity", {}), result.get("privacy", {}), result.get("utility", {})
    rows = []

    def add(group, key, metric, value, good, bad, interval=None, detail=""):
        if isinstance(value, float) and abs(value) < 1e-12:
            value = 0.0                  # a difference of equal AUROCs printed as -1.11e-16 (a browser review)
        threshold = V.THRESHOLDS[key]
        verdict = V.FAMILY_VERDICTS[group](key, value, interval)
        meaning = {V.MET: good, V.NOT_MET: bad, V.NA: "not computed",
                   V.INCONCLUSIVE: "the interval crosses the threshold: too few patients to tell"}[verdict]
        lo, hi = interval if interval is not None else (None, None)
        rows.append({"group": group, "metric": metric, "value": value, "ci_low": lo, "ci_high": hi,
                     "ideal": M.METRICS[key].ideal if key in M.METRICS else "1",
                     "threshold": threshold.text(), "verdict": verdict, "meaning": meaning, "detail": detail})

    add("fidelity", "share_abs_net_smd_below_0_1",
        "parameter-visits with |SMD| < 0.1 (net of the sources' baseline imbalance)",
        f.get("share_abs_net_smd_below_0_1"),
        "twin means match the real arm at most visits", "twin means differ from the real arm at many visits",
        detail=(f"raw |SMD| < 0.1 at {f['share_abs_smd_below_0_1']:.0%} of parameter-visits; the net SMD "
                "subtracts what the sources' own baseline difference from the real arm carries to each "
                "visit (the real arm's slope on baseline)") if f.get("share_abs_smd_below_0_1") is not None
        and np.isfinite(f.get("share_abs_smd_below_0_1")) else "")
    add("fidelity", "correlation_mad", "correlation distance", (f.get("correlation_distance") or {}).get("mean_abs_diff"),
        "correlations across visits and parameters preserved", "correlation structure differs")
    add("fidelity", "dimension_wise_mean_correlation", "dimension-wise mean correlation",
        (f.get("dimension_wise_mean_correlation") or {}).get("correlation"),
        "per-column means (visits, event times) track the real ones", "per-column means drift from the real ones")
    det = f.get("detection") or {}
    add("fidelity", "detection_auroc", "detection AUROC", det.get("auroc"),
        "a classifier can hardly tell twins from real patients", "a classifier tells twins from real patients",
        interval=(det.get("ci_low"), det.get("ci_high")) if "ci_low" in det else None,
        detail="95 % t-interval over the cross-validation folds")
    dcr = p.get("dcr") or {}
    add("privacy", "dcr_ratio", "DCR ratio (twins / real)", dcr.get("ratio_median"),
        "twins are no closer to real patients than real patients are to each other",
        "twins sit closer to real patients than real patients are to each other",
        interval=(dcr.get("ratio_ci_low"), dcr.get("ratio_ci_high")) if "ratio_ci_low" in dcr else None,
        detail="median twin distance / median real distance to the closest training patient; bootstrap interval")
    nnaa = p.get("nnaa") or {}
    add("privacy", "nnaa", "NN adversarial accuracy", nnaa.get("nnaa"),
        "neither copies nor outliers", "twins are copies (low) or unlike real patients (high)",
        detail="acceptable band around the ideal 0.5: below it twins copy, above it they stand apart")
    copies = p.get("exact_copies") or {}
    add("privacy", "exact_copies", "exact copies of real patients", copies.get("n_copies"),
        "no twin copies a real patient", "some twins copy real patients",
        detail=_copies_detail(copies))
    mi = p.get("membership") or {}
    if mi.get("advantage") is not None:
        add("privacy", "mia_advantage", "membership-inference advantage", mi["advantage"],
            "an attacker cannot tell who was in the training data", "training membership is disclosed",
            interval=V.advantage_interval(mi), detail="sensitivity − false-positive rate; 95 % Wald interval")
    tstr = u.get("tstr") or {}
    ratio = tstr.get("ratio")
    detail = ""
    if ratio is not None and tstr.get("trtr") is not None:
        detail = (f"TSTR AUROC {tstr['tstr']:.2f} / TRTR AUROC {tstr['trtr']:.2f} on {tstr.get('n_test')} "
                  "real test patients")
        if ratio > 1:
            detail += ("; above 1: the model trained on twins scored better than the one trained on real "
                       "patients, which on a small test set is noise around 1, not a gain")
    add("utility", "tstr_ratio", "TSTR / TRTR AUROC", ratio,
        "a model trained on twins predicts real outcomes as well as one trained on real data",
        "models trained on twins predict real outcomes worse", detail=detail)
    add("utility", "augmentation_gain", "augmentation AUROC gain", (u.get("augmentation") or {}).get("gain"),
        "adding twins does not hurt prediction", "adding twins hurts prediction")
    for paramcd, s in (result.get("survival") or {}).items():
        km = s.get("km_distance_twins_vs_real_target") or {}
        add("survival", "km_sup_distance", f"{paramcd}: KM sup distance twins vs real", km.get("sup"),
            "twin survival matches the real arm", "twin survival differs from the real arm",
            interval=(km["ci_low"], km["ci_high"]) if "ci_low" in km else None,
            detail=("95 % interval: the distance +- the curves' bootstrap sampling deviation (patients, not "
                    "twins)") if "ci_low" in km else "")
    return pd.DataFrame(rows)
