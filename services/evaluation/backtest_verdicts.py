"""The backtest's targets and its plain-language verdicts (`summarize`), kept apart from the
computation so that each verdict can say when the data cannot support it: too few held-out
patients, a single twin per patient, an event type with a handful of events, nothing that
varies. A verdict on two patients reads like one on two hundred; these say so instead."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.evaluation.metrics.procova import estimate_adjustment
from services.evaluation.twin_bands import pit_floor

RATIO_TARGET = 1.0
COVERAGE_TARGET = (0.75, 0.85)
KM_RATIO_TARGET = 1.0
CINDEX_MARGIN = 0.01          # twins' C-index within this of the Cox model's counts as met
MIN_VERDICT_PATIENTS = 10     # fewer scored held-out patients: figures shown, no verdict
MIN_EVENTS = 5                # fewer events among the held-out patients: no event verdict
WEAK_FLOOR = 0.5              # K twins whose coverage reading cannot fall below this give no verdict (K 2, 3)


def endpoint_visit(trial: Trial, pairs: pd.DataFrame | None = None) -> tuple[str | None, float | None]:
    """(PARAMCD, AVISITN) of the PROCOVA endpoint: trial.toml's `endpoint` if set, else the last
    visit of the first longitudinal parameter seen in at least half as many patients as its busiest visit."""
    ep = trial.meta.endpoint or {}
    p, v = ep.get("paramcd"), ep.get("avisitn")
    p = str(p).upper() if p and str(p).upper() in trial.longitudinal_parameters else None
    if p and v is not None:
        sched = [s.avisitn for s in trial.schedule(p)]
        try:
            if float(v) in sched:
                return p, float(v)
        except (TypeError, ValueError):
            pass
    # trial.toml's parameter without a usable visit: its last well-attended visit; no such
    # parameter (a typo, which the load notes name): the first longitudinal parameter's
    p = p or (trial.longitudinal_parameters[0] if trial.longitudinal_parameters else None)
    if p is None:
        return None, None
    sched = trial.schedule(p)
    if not sched:
        return None, None
    busiest = max(s.n_subjects for s in sched)
    well = [s.avisitn for s in sched if s.n_subjects >= 0.5 * busiest]
    return p, float(well[-1]) if well else float(sched[-1].avisitn)


def visit_label(trial: Trial, paramcd: str, avisitn: float) -> str:
    """The visit's name (AVISIT), as the plan, the card and the effects say it ("visit N" where it has none)."""
    for v in trial.schedule(paramcd):
        if float(v.avisitn) == float(avisitn) and v.avisit:
            return v.avisit
    return f"visit {avisitn:g}"


def counted(n: int, noun: str) -> str:
    """"1 twin", "5 twins": the count with its noun in the right number."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def backtest_setup(result, cost_note: bool = False) -> str:
    """What a backtest ran, as the Validate page's cards and the report say it: twins per held-out
    patient, cross-fitting and, where only some held-out patients were twinned (an llm run), how many."""
    s = result.summary
    held = s.get("held_out_twinned")
    subset = "" if held is None or held == s.get("held_out") else \
        f" on {held} of the {s.get('held_out')} held-out patients" + (" (each twin costs a model call)" if cost_note else "")
    return (f"{counted(result.twins_per_patient, 'twin')} per held-out patient, "
            f"{result.folds}-fold cross-fitting of {result.arm}{subset}")


def _finite(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _share(met: pd.Series) -> float | None:
    """Share of True among the judged (None: not judged)."""
    judged = met.dropna()
    return float(judged.astype(bool).mean()) if len(judged) else None


def twins_balanced(manifests: list[dict] | None) -> bool:
    """Whether a backtest's twins were balanced (its fold runs' manifests say so)."""
    return any(bool(m.get("twins_balanced")) for m in manifests or [])


def calibration_readable(k: int, balanced: bool) -> bool:
    """Whether K twins per patient can show calibration at all: one cannot, and with 2-3 the
    reading cannot fall below `WEAK_FLOOR` (the summary, its verdict and the card all ask here)."""
    return k >= 2 and pit_floor(k, balanced) < WEAK_FLOOR


def _calibration_verdict(cov_pit, cov_all, k: int, balanced: bool) -> str:
    if k < 2:
        return ("Calibration: not estimable with 1 twin per held-out patient: a single twin cannot show an "
                "interval (its rank reads 80 % whatever the twins). Backtest with K >= 9 twins.")
    floor = pit_floor(k, balanced)
    if not calibration_readable(k, balanced):
        return (f"Calibration: not estimable with {k} twins per held-out patient: the reading cannot fall below "
                f"{floor:.0%} even if every real value lay outside all its twins. Backtest with K >= 9 twins.")
    if cov_pit is None:
        return "Calibration: not estimable (no scored visit)."
    lo, hi = COVERAGE_TARGET
    state = "met" if lo <= cov_pit <= hi else ("too narrow: twins are overconfident" if cov_pit < lo
                                                else "too wide: twins are more spread than needed")
    plain = ""
    if cov_all is not None and abs(cov_all - cov_pit) >= 0.005:
        plain = (f"; the plain share inside the twins' 10-90% range, counting ties with its ends as inside, "
                 f"is {cov_all:.0%}")
    coarse = (f" With {k} twins per patient the reading cannot fall below {floor:.0%} even if every real value "
              "lay outside all its twins: backtest with K >= 9 for a sharp one.") if floor > 0 else ""
    return (f"Calibration: {state}. {cov_pit:.0%} of real values fall in the middle 80% of their twins' "
            f"distribution, read by rank with ties split at random and balanced twins at their own positions "
            f"(target {lo:.0%}-{hi:.0%}{plain}).{coarse}")


def _event_verdicts(tte: pd.DataFrame) -> tuple[list[str], bool | None]:
    verdicts, met = [], []
    for _, r in tte.iterrows():
        if r["events"] < MIN_EVENTS:
            verdicts.append(f"Time to event {r['PARAMCD']}: not estimable: {int(r['events'])} events among the "
                            f"{int(r['n'])} held-out patients (at least {MIN_EVENTS} are needed).")
            continue
        km_ok, c_ok = bool(r["km_met"]), bool(r["cindex_met"])
        met.append(km_ok and c_ok)
        verdicts.append(
            f"Time to event {r['PARAMCD']} ({int(r['events'])} events among {int(r['n'])} held-out patients): "
            f"the twins' Kaplan-Meier curve is {r['km_sup_twins']:.2f} from the held-out patients' at most, vs "
            f"{r['km_sup_reference']:.2f} for the knowledge base's control arm ({'met' if km_ok else 'not met'}); "
            f"C-index of the twins' event ratio {r['cindex_twins']:.2f} vs {r['cindex_cox']:.2f} for a Cox model "
            f"({'met' if c_ok else 'not met'}).")
    return verdicts, (all(met) if met else None)


def _procova_gain(rho: float, partial: float | None) -> str:
    """What adjusting for the twins saves: against an unadjusted analysis (rho^2) and, the saving
    that counts since a regulator expects the baseline ANCOVA anyway, beyond it (the partial
    correlation^2, as the PROCOVA plan sizes). The card said only the first, ~45 % on the CDISC
    pilot where the plan saved 0 patients against the baseline ANCOVA."""
    out = f"; variance reduction vs an unadjusted analysis ~ {rho ** 2:.0%}"
    if partial is None:
        return out + " (a baseline ANCOVA cannot be estimated from these patients, so nothing is said beyond it)."
    if partial <= 0:
        return out + ", but nothing beyond the baseline ANCOVA (partial correlation given the baseline " \
                     f"{partial:.2f}): the twins add no saving to the analysis a regulator expects."
    return out + f", beyond the baseline ANCOVA ~ {partial ** 2:.0%} (partial correlation {partial:.2f} as estimated; " \
                 "the PROCOVA plan sizes from its conservative bound, which can leave much less)."


def summarize(trial, arm, pairs, visits, parameters, tte, twins_per_patient: int = 20,
              manifests: list[dict] | None = None) -> dict:
    """The backtest's summary figures and verdicts (see the module docstring)."""
    balanced = twins_balanced(manifests)
    k = int(twins_per_patient)
    p_ep, v_ep = endpoint_visit(trial)
    rho, n_ep, partial = None, 0, None
    if p_ep is not None and len(pairs):
        g = pairs[(pairs["PARAMCD"] == p_ep) & (pairs["AVISITN"] == v_ep)].dropna(subset=["PREDICTED", "OBSERVED"])
        n_ep = len(g)
        if n_ep >= 3 and g["PREDICTED"].std() > 0 and g["OBSERVED"].std() > 0:
            rho = float(np.corrcoef(g["PREDICTED"], g["OBSERVED"])[0, 1])
        if "BASELINE" in g:
            partial = _finite(estimate_adjustment(g["PREDICTED"], g["BASELINE"], g["OBSERVED"]).rho_partial)
    scored = pairs[pairs["AVISITN"].isin(visits["AVISITN"])] if len(visits) and len(pairs) else pairs.iloc[:0]
    n_scored = int(scored["USUBJID"].nunique()) if len(scored) else 0
    ratio_med = _finite(parameters["rmse_ratio"].median()) if len(parameters) else None
    ok = scored.dropna(subset=["Q10", "Q90", "REFERENCE"]) if len(scored) else scored
    cov_all = float(((ok["OBSERVED"] >= ok["Q10"]) & (ok["OBSERVED"] <= ok["Q90"])).mean()) if len(ok) else None
    cov_pit = _finite(ok["PIT_COVER"].mean()) if len(ok) else None
    enough = n_scored >= MIN_VERDICT_PATIENTS

    verdicts = []
    if len(parameters) and not enough:
        verdicts.append(f"Too few held-out patients for a verdict: {n_scored} scored (at least "
                        f"{MIN_VERDICT_PATIENTS} are needed); the figures below are shown for what they are.")
    elif len(parameters):
        if ratio_med is None:
            verdicts.append("Accuracy: not estimable: the baseline regression's error is 0 or missing at every "
                            "scored visit (nothing varies that a model could predict).")
        else:
            good = ratio_med <= RATIO_TARGET
            share_acc = _share(parameters["accuracy_met"])
            verdicts.append(
                f"Accuracy: {'met' if good else 'not met'}. The mean of each patient's twins predicts the real "
                f"value with {100 * abs(1 - ratio_med):.0f}% {'less' if good else 'more'} error than a regression "
                f"on the baseline value (median RMSE ratio {ratio_med:.2f}; target <= {RATIO_TARGET:.2f}; "
                f"{share_acc:.0%} of parameters meet it).")
        verdicts.append(_calibration_verdict(cov_pit, cov_all, k, balanced))
    elif trial.longitudinal_parameters and not len(visits):
        verdicts.append("No visit could be scored: in every fold too few knowledge-base patients had the visit for "
                        "the generator to twin it, or fewer than 3 held-out patients had it. Use fewer folds or "
                        "a larger arm.")
    tte_verdicts, tte_met = _event_verdicts(tte)
    judged = tte[tte["events"] >= MIN_EVENTS] if len(tte) else tte
    verdicts += tte_verdicts
    if rho is not None and n_ep >= MIN_VERDICT_PATIENTS:
        verdicts.append(f"PROCOVA at the trial's default endpoint: the twins' mean predicts {p_ep} at "
                        f"{visit_label(trial, p_ep, v_ep)} with "
                        f"correlation {rho:.2f} "
                        f"(n={n_ep})" + (_procova_gain(rho, partial) if rho > 0
                                         else ": negative, so the twins are no prognostic score here."))
    readable = calibration_readable(k, balanced) and cov_pit is not None
    cal_ok = readable and COVERAGE_TARGET[0] <= cov_pit <= COVERAGE_TARGET[1]
    return {
        "trial": trial.name, "arm": arm,
        "rmse_ratio_median": ratio_med, "coverage": cov_pit if readable else None, "coverage_interval": cov_all,
        "coverage_median": _finite(parameters["coverage_pit"].dropna().median())
        if parameters["coverage_pit"].notna().any() else None,
        "share_params_accuracy_met": _share(parameters["accuracy_met"]) if len(parameters) else None,
        "share_params_calibration_met": _share(parameters["calibration_met"]) if len(parameters) else None,
        "share_visits_ratio_met": float((visits["rmse_ratio"] <= RATIO_TARGET).mean()) if len(visits) else None,
        # over the event types with enough events to judge
        "km_ratio_median": float(judged["km_ratio"].median()) if len(judged) else None,
        "cindex_twins": float(judged["cindex_twins"].mean()) if len(judged) else None,
        "cindex_cox": float(judged["cindex_cox"].mean()) if len(judged) else None,
        "endpoint": {"paramcd": p_ep, "avisitn": v_ep, "n": n_ep}, "rho": rho, "rho_partial": partial,
        "patients_scored": n_scored,
        # None where no verdict is given (too few patients, a single twin, nothing to predict)
        "accuracy_met": (ratio_med <= RATIO_TARGET) if (enough and ratio_med is not None) else None,
        "calibration_met": cal_ok if (enough and readable) else None,
        "tte_met": tte_met,
        "verdicts": verdicts,
    }
