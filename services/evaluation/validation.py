"""The Validate page's numbers: a validation card with uncertainty from a backtest, the
PROCOVA sample size that the backtest's prognostic correlation buys, and a hold-out privacy
audit (membership inference needs real patients the generator never saw).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.evaluation import metrics as M
from services.evaluation.backtest import (
    COVERAGE_TARGET,
    RATIO_TARGET,
    BacktestResult,
    endpoint_visit,
)
from services.evaluation.backtest_verdicts import (
    MIN_VERDICT_PATIENTS,
    calibration_readable,
    counted,
    twins_balanced,
    visit_label,
)
from services.evaluation.ceiling import information_card
from services.evaluation.metrics.procova import default_effect, estimate_adjustment
from services.jsonable import jsonable

VALIDATION_VERSION = 14  # bump when the backtest's figures change meaning: stored validations are redone (4: matched rounding; 5: event times jittered over the gap; 6: a run's twins no longer cut at their follow-up; 7: event baselines fitted to the Kaplan-Meier; 8: carried-forward twins keep the drift; 9: balanced twins placed by their own rank positions; 10: balanced twins keep the donors' variance (no centring factor, shared donors scaled), a missing category at the mean; 11: a single twin has no calibration reading (NaN), verdicts the data cannot carry are withheld; 12: twins kept under a scale's ceiling, event curves' last step spread no further than the last follow-up, verdicts withheld at K 2-3 and under 10 patients; 13: the PROCOVA verdict says what the twins add beyond the baseline ANCOVA; 14: it names its endpoint as the default and its partial as estimated, before the plan's conservative bound)


def _per_patient(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per patient: squared errors of the twins' mean and of the reference regression, and
    interval hits, so that bootstrap resamples of patients are weighted sums."""
    ok = pairs.dropna(subset=["PREDICTED", "OBSERVED", "REFERENCE"])
    inside = ok["PIT_COVER"].astype(float)    # ties with the range's ends split (backtest.pit_coverage)
    return pd.DataFrame({
        "USUBJID": ok["USUBJID"], "se_twin": (ok["PREDICTED"] - ok["OBSERVED"]) ** 2,
        "se_ref": (ok["REFERENCE"] - ok["OBSERVED"]) ** 2, "inside": inside.fillna(0.0),
        "n_read": inside.notna().astype(float), "n": 1.0,    # a single twin has no reading (NaN)
    }).groupby("USUBJID").sum()


def _ratio_and_coverage(agg: pd.DataFrame, weights: np.ndarray | None = None) -> tuple[float, float]:
    w = np.ones(len(agg)) if weights is None else weights
    n = float(w @ agg["n"].to_numpy())
    if n == 0:
        return np.nan, np.nan
    ref = float(w @ agg["se_ref"].to_numpy())
    ratio = np.sqrt(float(w @ agg["se_twin"].to_numpy()) / ref) if ref > 0 else np.nan
    read = float(w @ agg["n_read"].to_numpy())
    return float(ratio), float(w @ agg["inside"].to_numpy()) / read if read > 0 else np.nan


def bootstrap_card(result: BacktestResult, n_boot: int = 500, seed: int = 0,
                   trial: Trial | None = None) -> pd.DataFrame:
    """Per parameter: RMSE ratio (twins vs baseline regression, pooled over visits) and 10-90 %
    interval coverage, each with a 95 % percentile bootstrap interval over patients, and a
    plain-language verdict against the targets. With the backtested `trial`: also the
    information gain (`services.evaluation.ceiling.information_card`: how much the other
    baselines and the covariates could cut the own-baseline model's error with unlimited data),
    with its interval and a verdict: where it is near 1, no generator can do much better than
    the baseline regression on this trial."""
    rng = np.random.default_rng(seed)
    rows = []
    k = int(result.twins_per_patient)
    unreadable = not calibration_readable(k, twins_balanced(result.manifests))
    for paramcd, grp in result.pairs.groupby("PARAMCD", sort=False):
        agg = _per_patient(grp)
        ratio, coverage = _ratio_and_coverage(agg)
        lo_r = hi_r = lo_c = hi_c = np.nan
        if len(agg) >= 5:
            weights = rng.multinomial(len(agg), np.full(len(agg), 1 / len(agg)), size=n_boot)
            boots = np.array([_ratio_and_coverage(agg, w) for w in weights])
            finite = np.isfinite(boots).any(axis=0)        # a single twin's coverage is NaN throughout
            if finite[0]:
                lo_r, hi_r = np.nanpercentile(boots[:, 0], [2.5, 97.5])
            if finite[1]:
                lo_c, hi_c = np.nanpercentile(boots[:, 1], [2.5, 97.5])
        acc_ok = ratio <= RATIO_TARGET
        cal_ok = COVERAGE_TARGET[0] <= coverage <= COVERAGE_TARGET[1]
        rows.append({
            "PARAMCD": paramcd, "patients": len(agg), "values": int(agg["n"].sum()),
            "rmse_ratio": ratio, "rmse_ratio_lo": lo_r, "rmse_ratio_hi": hi_r,
            "coverage": coverage, "coverage_lo": lo_c, "coverage_hi": hi_c,
            "accuracy": f"too few patients ({len(agg)})" if len(agg) < MIN_VERDICT_PATIENTS else
                        "not estimated" if not np.isfinite(ratio) else
                        ("better than" if acc_ok else "worse than") + " the baseline regression"
                        + ("" if not (lo_r <= RATIO_TARGET <= hi_r) else " (not conclusively)"),
            "calibration": f"too few patients ({len(agg)})" if len(agg) < MIN_VERDICT_PATIENTS else
                           f"not estimable with {counted(k, 'twin')}" if unreadable else
                           "not estimated" if not np.isfinite(coverage) else "well calibrated" if cal_ok else (
                "intervals too narrow (overconfident)" if coverage < COVERAGE_TARGET[0] else "intervals too wide"),
        })
    card = pd.DataFrame(rows)
    if trial is None or not len(card):
        return card
    card = card.merge(information_card(trial, result.pairs, n_boot=n_boot, seed=seed), on="PARAMCD", how="left")
    card["information"] = [information_verdict(g, lo, hi) for g, lo, hi in
                           zip(card["gain"], card["gain_lo"], card["gain_hi"])]
    return card


def information_verdict(gain: float, gain_lo: float, gain_hi: float) -> str:
    """What the information gain (`services.evaluation.ceiling.information_card`) says, in words."""
    if not all(np.isfinite([gain, gain_lo, gain_hi])):
        return "not estimated"
    if gain_hi < 1:
        return (f"more than the own baseline: the other baselines and covariates could bring the error to "
                f"{gain:.2f} of its, at best")
    return ("nothing clear beyond the own baseline: the twins can at best match the baseline regression, "
            "up to its estimation error")


PROCOVA_UNIT_INPUTS = ("effect", "sd", "sd_treatment", "endpoint")   # planning inputs tied to one endpoint


def endpoint_choices(trial: Trial, result: BacktestResult) -> list[tuple[str, float]]:
    """The (PARAMCD, AVISITN) a PROCOVA plan can be made for: a visit with at least 5 held-out
    patients' predicted and observed values, in the trial's order (the plan's endpoint was fixed
    at the default, with no hint how to choose another: a browser review)."""
    p = result.pairs.dropna(subset=["PREDICTED", "OBSERVED"])
    counts = p.groupby(["PARAMCD", "AVISITN"])["USUBJID"].nunique()
    order = {q: i for i, q in enumerate(trial.longitudinal_parameters)}
    return sorted(((str(q), float(v)) for (q, v), n in counts.items() if n >= 5),
                  key=lambda e: (order.get(e[0], len(order)), e[1]))


def endpoint_pairs(trial: Trial, result: BacktestResult,
                   endpoint: tuple[str, float] | None = None) -> tuple[str | None, float | None, pd.DataFrame]:
    """(PARAMCD, AVISITN, pairs of predicted = mean of twins vs observed) at the endpoint (the
    trial's, `endpoint_visit`, unless one is chosen)."""
    paramcd, avisitn = (str(endpoint[0]), float(endpoint[1])) if endpoint else endpoint_visit(trial)
    if paramcd is None:
        return None, None, pd.DataFrame(columns=["PREDICTED", "OBSERVED"])
    p = result.pairs
    pairs = p[(p["PARAMCD"] == paramcd) & (p["AVISITN"] == avisitn)].dropna(subset=["PREDICTED", "OBSERVED"])
    cols = ["USUBJID", "PREDICTED", "OBSERVED"] + (["BASELINE"] if "BASELINE" in pairs else [])
    return paramcd, avisitn, pairs[cols].reset_index(drop=True)


def ancova_headline(card: pd.DataFrame) -> str | None:
    """The plain statement the Validate page and the report open the card with when the twins are
    not shown to beat a baseline ANCOVA: for a parameter whose RMSE ratio's 95 % interval reaches
    1 (its upper end at or above 1; a ratio of 0.74 [0.63, 0.94] is better, and was flagged while
    the test read the lower end). None when every judged parameter is better."""
    if not len(card):
        return None
    judged = card[~card["accuracy"].str.startswith(("too few", "not estimated"))]
    if not len(judged):
        return None
    hi = judged["rmse_ratio_hi"].where(judged["rmse_ratio_hi"].notna(), judged["rmse_ratio"])
    worse = judged[hi >= RATIO_TARGET]
    if len(worse) == len(judged):
        return ("On this trial the twins are not shown better than a baseline ANCOVA (a regression of each visit on "
                "the patient's own baseline value) for any parameter: their prognostic value is, as far as these "
                "patients show, that of the baseline alone.")
    if not len(worse):
        return None
    # "not better" where the estimate says so; "not conclusively better" where only the interval
    # reaches 1, which the card's rows say too (a browser review read the two as contradicting)
    plain = worse[worse["rmse_ratio"] >= RATIO_TARGET]["PARAMCD"].tolist()
    unsure = worse[worse["rmse_ratio"] < RATIO_TARGET]["PARAMCD"].tolist()
    parts = []
    if plain:
        parts.append(f"not better than a baseline ANCOVA for: {', '.join(plain)}")
    if unsure:
        than = "" if plain else " than a baseline ANCOVA"
        parts.append(f"not conclusively better{than} for: {', '.join(unsure)} (the RMSE ratio is below 1 but its "
                     "95 % interval reaches 1)")
    return _sentence("; ".join(parts)) + "."


def procova(trial: Trial, result: BacktestResult, effect: float | None = None, sd: float | None = None,
            alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0, conservative: bool = True,
            deflation: float = 0.9, sd_treatment: float | None = None,
            rho_treatment: float | None = None, endpoint: tuple[str, float] | None = None) -> dict:
    """PROCOVA sample size from the backtest: rho = correlation of the twins' predicted
    endpoint (prognostic score) with the observed endpoint of held-out control patients;
    sd defaults to the observed endpoint's SD, effect to 0.4 SD (a moderate effect, to be
    replaced by the effect the trial is powered for). Sizes by the noncentral t; the saving
    that counts is against the baseline ANCOVA a regulator expects anyway (Schuler et al.
    2022; EMA 2022), from the partial correlation the score adds given the baseline."""
    paramcd, avisitn, pairs = endpoint_pairs(trial, result, endpoint)
    if len(pairs) < 5:      # the conservative rule's Fisher bound counts the pairs; the rule names them
        return {"error": f"too few held-out patients with the endpoint ({len(pairs)}) to estimate rho"}
    rho = M.estimate_rho(pairs["PREDICTED"], pairs["OBSERVED"])
    if not np.isfinite(rho.rho):
        return {"error": f"rho cannot be estimated at the endpoint: the twins' prediction or the outcome does not "
                         f"vary among the {len(pairs)} held-out patients"}
    adj, notes = None, []
    if "BASELINE" in pairs and pairs["BASELINE"].notna().sum() >= 5:
        adj = estimate_adjustment(pairs["PREDICTED"], pairs["BASELINE"], pairs["OBSERVED"])
        if np.isfinite(adj.rho_baseline) and not np.isfinite(adj.rho_partial):
            return {"error": f"the endpoint is an exact line of the baseline among the {adj.n} held-out patients "
                             "(no patient changed, or all by the same rule): the outcome's variance around the "
                             "baseline, which a trial is sized on, cannot be estimated from them"}
        if not np.isfinite(adj.rho_baseline):      # e.g. a 0/1 item present at everybody's baseline
            adj = None
            notes.append("the baseline does not vary among the held-out patients at the endpoint, so the saving "
                         "against a baseline ANCOVA cannot be estimated; sizes are against the unadjusted "
                         "analysis only")
    # a prognostic score predicts in the right direction: a negative correlation on held-out
    # patients is a generator that failed here (or noise), never a saving (|rho| would make one)
    if rho.rho < 0:
        notes.append(f"the twins' prediction correlates negatively with the endpoint among the held-out patients "
                     f"(rho {rho.rho:.2f}): they are no prognostic score here, so no saving is planned from them")
    elif adj is not None and adj.rho_partial < 0:
        notes.append(f"the twins' prediction adds nothing beyond the baseline among the held-out patients (partial "
                     f"correlation {adj.rho_partial:.2f}), so no saving beyond the baseline ANCOVA is planned")
    sd = float(sd if sd else pairs["OBSERVED"].std(ddof=1))
    effect = float(effect if effect else default_effect(sd))
    plan = M.procova_plan(effect, sd, max(rho.rho, 0.0), alpha=alpha, power=power, ratio=ratio,
                          conservative=conservative, deflation=deflation,
                          n_rho=len(pairs) if adj is None else adj.n, method="t",
                          rho_baseline=None if adj is None else adj.rho_baseline,
                          rho_partial=None if adj is None else max(adj.rho_partial, 0.0) if rho.rho >= 0 else 0.0,
                          sd_treatment=sd_treatment, rho_treatment=rho_treatment)
    plans = [plan.unadjusted, plan.adjusted] + ([plan.baseline_ancova] if plan.baseline_ancova else [])
    size = max((p.alpha_actual for p in plans if np.isfinite(p.alpha_actual)), default=float("nan"))
    if np.isfinite(size) and size > alpha * 1.1:
        notes.append(f"with this treated-arm SD and allocation the pooled ANCOVA these sizes are for would reject "
                     f"{size:.1%} of true nulls at nominal {alpha:g} (the smaller arm varies more): analyse with "
                     "robust (sandwich) standard errors, or allocate so that the more variable arm is the larger")
    out = {"paramcd": paramcd, "avisitn": avisitn, "label": trial.parameters[paramcd].label,
           "visit": visit_label(trial, paramcd, avisitn),
           "unit": trial.parameters[paramcd].unit, "n_pairs": len(pairs), "rho": rho.as_dict(),
           "effect": effect, "sd": sd, "alpha": alpha, "power": power, "ratio": ratio, "plan": plan.as_dict(),
           "n_unadjusted": plan.unadjusted.n_total, "n_adjusted": plan.adjusted.n_total,
           "saving_total": plan.saving_total, "saving_pct": plan.saving_pct, "rule": plan.rule,
           # with a baseline, the correlation planned with is that of baseline and score together
           "rho_used_label": "rho used" if adj is None else "rho, baseline + twins",
           "method": "noncentral t", "generator": result.generator, "twins_per_patient": result.twins_per_patient,
           "note": _sentence("; ".join(notes))}
    if plan.baseline_ancova is not None:
        out.update({"n_baseline_ancova": plan.baseline_ancova.n_total,
                    "saving_vs_baseline_total": plan.saving_vs_baseline_total,
                    "saving_vs_baseline_pct": plan.saving_vs_baseline_pct,
                    "rho_baseline": adj.rho_baseline, "rho_partial": adj.rho_partial})
    return out


def _sentence(text: str) -> str:
    """The joined notes as one sentence, capitalised (shown as an alert on the page)."""
    return text[:1].upper() + text[1:]


def backtestable(trial: Trial) -> bool:
    """The backtest scores visits (accuracy, calibration) and events (KM distance, C-index): a
    trial with neither has nothing to score."""
    return bool(trial.longitudinal_parameters or trial.tte_parameters)


def run_generator(run) -> tuple[str, dict, int]:
    """The generator, settings and K a run was made with (what its validation must use)."""
    m = (run.manifest or {}) if run is not None else {}
    settings = dict(m.get("settings") or {})
    # a structure chosen on the whole knowledge base (held-out folds included) would make the
    # backtest optimistic: each fold's generator chooses its own
    settings.pop("structure", None)
    return m.get("generator") or "local", settings, int(m.get("twins_per_patient") or 0) or 20


MODEL_HELD_OUT = 5   # held-out patients per fold twinned by a generator that calls a model (x RUN_FOLDS = 10,
                     # the fewest that get a verdict: backtest_verdicts.MIN_VERDICT_PATIENTS)


def held_out_bound(generator: str, max_held_out: int | None = None) -> int | None:
    """`max_held_out`, else `MODEL_HELD_OUT` for a generator that calls a model per twin (so
    the cost of its backtest is stated and bounded), else None (every held-out patient)."""
    from services.generation import capabilities

    if max_held_out is None and capabilities(generator).needs_network:
        return MODEL_HELD_OUT
    return max_held_out


RUN_FOLDS = 2   # the run's own validation (kept in its folder): the report's and the Validate page's default


def _backtest_plan(trial: Trial, run, arm: str | None, twins_per_patient: int | None,
                   max_held_out: int | None) -> tuple[str, dict, int, str, int | None]:
    """(generator, settings, K, arm, held-out bound) a backtest of `run` uses: the run's own
    generator, settings and K unless K is given; its target arm, else the control arm."""
    name, settings, k = run_generator(run)
    if twins_per_patient is not None:
        k = int(twins_per_patient)
    arm = arm or (run.target_arm if run is not None and run.target_arm in trial.arms else trial.control_arm)
    return name, settings, k, arm, held_out_bound(name, max_held_out)


def validate_run(trial: Trial, run=None, arm: str | None = None, folds: int = RUN_FOLDS,
                 twins_per_patient: int | None = None, seed: int = 0,
                 max_held_out: int | None = None) -> BacktestResult:
    """Backtest of the generator, settings and K of `run` (the local defaults without a run) on
    `arm` (default: the run's target arm, else the control arm). A generator that calls a model
    per twin is backtested on at most `max_held_out` held-out patients per fold (default 5),
    so the cost is stated and bounded."""
    from services.evaluation.backtest import backtest

    name, settings, k, arm, bound = _backtest_plan(trial, run, arm, twins_per_patient, max_held_out)
    return backtest(trial, arm=arm, folds=folds, twins_per_patient=k, seed=seed, generator=name,
                    generator_settings=settings, max_held_out=bound)


def validate_safety(trial: Trial, run=None, arm: str | None = None, folds: int = RUN_FOLDS,
                    twins_per_patient: int | None = None, seed: int = 0, top: int = 10,
                    n_boot: int = 500, max_held_out: int | None = None):
    """Safety backtest (`safety_backtest`) of the generator, settings and K of `run`, bounded
    like `validate_run`: a generator that calls a model per twin twins at most `max_held_out`
    held-out patients per fold (default 5)."""
    from services.evaluation.safety_backtest import safety_backtest

    name, settings, k, arm, bound = _backtest_plan(trial, run, arm, twins_per_patient, max_held_out)
    return safety_backtest(trial, arm=arm, folds=folds, twins_per_patient=k, seed=seed, top=top,
                           n_boot=n_boot, generator=name, generator_settings=settings,
                           max_held_out=bound)


def cached_validate_run(trial: Trial, run, run_dir=None, folds: int = RUN_FOLDS,
                        seed: int = 0) -> BacktestResult:
    """`validate_run` of the report (the run's target arm), kept as `validation.json` in the
    run's folder (`run_store`) for the report, the app and later sessions."""
    from dataclasses import asdict, fields

    from services.evaluation.run_store import cached_in_run

    frames = {f.name for f in fields(BacktestResult) if f.type in ("pd.DataFrame", pd.DataFrame)}

    def compute() -> dict:
        out = asdict(validate_run(trial, run, folds=folds, seed=seed))
        for name in frames:
            out[name] = out[name].to_dict(orient="split")
        return jsonable(out)

    # "version" 2: calibration splits ties (PIT_COVER); 3: C-index by the twins' event ratio
    key = {"knowledge_base": trial.content_hash, "run_id": run.run_id, "folds": folds, "seed": seed,
           "version": VALIDATION_VERSION}
    stored = dict(cached_in_run(run_dir, "validation", key, compute))
    for name in frames:
        stored[name] = _frame(stored[name])
    return BacktestResult(**stored)


def _frame(split: dict) -> pd.DataFrame:
    """A frame from its JSON `split` form, numeric columns numeric again (JSON null = NaN)."""
    frame = pd.DataFrame(split["data"], columns=split["columns"])
    for c in frame.columns:
        if frame[c].dtype == object:
            vals = frame[c].dropna()
            if len(vals) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 for v in vals):
                frame[c] = pd.to_numeric(frame[c])
    return frame


def privacy_audit(trial: Trial, target_arm: str, source_ids: list[str], generator: str = "local",
                  settings: dict | None = None, twins_per_patient: int = 5, seed: int = 0) -> dict:
    """Privacy with a true hold-out: half of the real target arm is withheld, the generator
    learns from the rest, twins the sources, and the twins' closeness to training patients is
    compared with that to the withheld ones (DCR, NNAA, membership inference, copies)."""
    from services.evaluation.comparison import compare, privacy
    from services.generation import get_generator

    rng = np.random.default_rng(seed)
    target = trial.subjects.loc[trial.subjects["ARM"] == target_arm, "USUBJID"].to_numpy(object)
    if len(target) < 10:
        return {"error": f"the {target_arm} arm has too few patients ({len(target)}) for a hold-out audit"}
    withheld = set(rng.permutation(target)[: len(target) // 2])
    kb = trial.subset([u for u in trial.subjects["USUBJID"] if u not in withheld], name=f"{trial.name} audit")
    sources = [s for s in source_ids if s not in set(target)]
    if not sources:
        return {"error": f"the audit twins patients of other arms under {target_arm}; the cohort has none"}
    run = get_generator(generator, **(settings or {})).fit(kb).generate(
        trial.subset(sources), target_arm, twins_per_patient=twins_per_patient, seed=seed)
    comp = compare(kb, run.as_trial(), run.manifest)
    out = privacy(comp, holdout=trial.subset(withheld), seed=seed)
    return {**out, "withheld": len(withheld), "generator": generator, "twinned": len(sources),
            "twins_per_patient": twins_per_patient, "trial_hash": trial.content_hash}


def audit_sources(trial: Trial, run, cohort_ids: list[str]) -> tuple[list[str], str]:
    """Whom the privacy audit twins, and how to say it: the run's own source patients when
    there is a run (the audit of that run; it had twinned whatever the Cohort page showed since,
    254 subjects for a 69-patient run: a browser review), else the chosen cohort, else everyone."""
    known = set(trial.subjects["USUBJID"])
    if run is not None:
        ids = [u for u in dict.fromkeys(run.adsl["SRCSUBJID"].astype(str)) if u in known]
        if ids:
            return ids, f"the run's {len(ids)} source patients"
    ids = [u for u in cohort_ids if u in known]
    return ids, f"the {len(ids)} patients of the chosen cohort" if len(ids) < len(known) else f"all {len(ids)} subjects"
