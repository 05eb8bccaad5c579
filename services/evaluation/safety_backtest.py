"""Safety backtest: do twins of held-out real patients predict which adverse events those
patients had?

Protocol (the one of `services.evaluation.backtest`): the arm (default: control) is split at
random (seeded) into `folds` folds; each fold is held out once, the knowledge base is the
trial without it (every arm), and the held-out patients are twinned under their own arm from
their baseline only (K twins each). Every held-out patient is predicted exactly once.

For each of the `top` most frequent preferred terms of the arm (patients with a
treatment-emergent record, whole arm):

- the twins' **probability** of the term for a patient, p_i = share of its K twins with it,
  against what the patient had, y_i (any treatment-emergent record of the term);
- **AUROC** of p_i for y_i (ties count one half; 0.5 = no better than chance) over the pairs
  of a case and a non-case **of the same fold**, with a 95 % percentile bootstrap interval
  over patients (resampled within folds). Pooling pairs across folds would be biased below
  0.5: a fold with more cases leaves a knowledge base with fewer, so its patients get lower
  probabilities (on the pilot's placebo arm the pooled AUROC averaged 0.38 on pure chance);
- **Brier score** of p_i vs that of the knowledge base's own rate of the term in the arm
  (r_f of the fold; the no-personalisation forecast), and the Brier skill 1 - B_twins / B_rate
  with its bootstrap interval (> 0: the twins personalise usefully);
- **incidence error**, per fold then averaged over folds: |mean p_i - mean y_i| (the twin
  arm's incidence against the held-out patients' real one) vs |r_f - mean y_i| (the knowledge
  base's own rate against it). Pooling the folds first would be wrong: with two halves, the
  pooled knowledge-base rates average exactly to the pooled real incidence.

`max_held_out` twins only that many held-out patients per fold (the first of a random fold, so
a random subset), for a generator whose twins cost a model call; the knowledge base still
excludes the whole fold. `safety_card` is the table a safety physician reads, `safety_verdict`
the summary in plain words.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.evaluation.safety import ANY, indicators, top_terms, twin_probabilities
from services.generation import GENERATORS, get_generator


@dataclass
class SafetyBacktest:
    trial: str
    arm: str
    folds: int
    twins_per_patient: int
    seed: int
    terms: pd.DataFrame        # one row per preferred term
    patients: pd.DataFrame     # one row per held-out patient x term: FOLD, USUBJID, PT, p, y, rate
    summary: dict
    timings: dict = field(default_factory=dict)
    generator: str = "local"


def auroc(score, label, strata=None) -> float:
    """Area under the ROC curve (Mann-Whitney, ties one half) over the (case, non-case) pairs
    within each stratum (one stratum by default); NaN without such a pair."""
    s, y = np.asarray(score, float), np.asarray(label, bool)
    g = np.zeros(len(s), dtype=int) if strata is None else pd.factorize(np.asarray(strata))[0]
    wins = pairs = 0.0
    for k in np.unique(g):
        pos, neg = s[(g == k) & y], s[(g == k) & ~y]
        if len(pos) and len(neg):
            ranks = pd.Series(np.concatenate([pos, neg])).rank().to_numpy()
            wins += ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
            pairs += len(pos) * len(neg)
    return float(wins / pairs) if pairs else float("nan")


def _resample(strata: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap indices resampled within each stratum."""
    return np.concatenate([rng.choice(idx, len(idx)) for idx in
                           (np.flatnonzero(strata == k) for k in np.unique(strata))])


def _boot(stat, strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    vals = [stat(_resample(strata, rng)) for _ in range(n_boot)]
    vals = np.asarray([v for v in vals if np.isfinite(v)])
    if len(vals) < n_boot // 2:
        return float("nan"), float("nan")
    return float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))


def safety_backtest(trial: Trial, arm: str | None = None, folds: int = 2, twins_per_patient: int = 20,
                    seed: int = 0, top: int = 10, n_boot: int = 1000, generator: str = "local",
                    generator_settings: dict | None = None,
                    max_held_out: int | None = None) -> SafetyBacktest:
    """Cross-fitted safety backtest of `generator` on `arm` (default: control) of `trial`;
    `max_held_out` held-out patients twinned per fold (default all)."""
    from services.retrieval.retriever import ExactRetriever

    arm = arm or trial.control_arm
    if trial.ae is None or trial.ae.empty:
        raise ValueError(f"{trial.name} has no adverse-event data")
    settings = dict(generator_settings or {})
    cls = GENERATORS.get(generator)
    if cls is None or "retriever_factory" in inspect.signature(cls).parameters:
        settings.setdefault("retriever_factory", ExactRetriever)
    ids = trial.subjects.loc[trial.subjects["ARM"] == arm, "USUBJID"].to_numpy(dtype=object)
    if folds < 2 or len(ids) < 2 * folds:
        raise ValueError(f"need folds >= 2 and at least 2 patients per fold ({len(ids)} in {arm})")
    terms = top_terms(trial, top, arm=arm)
    split = np.array_split(np.random.default_rng(seed).permutation(ids), folds)
    rows = []
    ae_records = 0
    t0 = time.perf_counter()
    shares: list[float | None] = []   # each fold's share of personalised AE donors (local)
    for f, held in enumerate(split):
        held_set = set(held)
        kb = trial.subset([u for u in trial.subjects["USUBJID"] if u not in held_set])
        held = list(held) if max_held_out is None else list(held)[:int(max_held_out)]
        sources = trial.subset(held).baseline_only()
        run = get_generator(generator, **settings).fit(kb).generate(
            sources, target_arm=arm, twins_per_patient=twins_per_patient, seed=seed)
        ae_records += 0 if run.ae is None else len(run.ae)
        share = ((run.manifest.get("ae") or {}).get("pool") or {}).get("neighbour_share")
        shares.append(None if share is None else float(share))
        probs = twin_probabilities(run.as_trial(), "PT").reindex(held)
        real = indicators(trial, "PT", held)
        kb_arm = kb.subjects.loc[kb.subjects["ARM"] == arm, "USUBJID"]
        rate = indicators(kb, "PT", list(kb_arm)).mean()
        for term in terms + [ANY]:
            rows.append(pd.DataFrame({
                "FOLD": f + 1, "USUBJID": list(held), "PT": term,
                "p": probs[term].fillna(0.0).to_numpy() if term in probs else 0.0,
                "y": real[term].to_numpy() if term in real else 0.0,
                "rate": float(rate.get(term, 0.0))}))
    patients = pd.concat(rows, ignore_index=True)
    rng = np.random.default_rng(seed + 1)
    out = []
    for term, g in patients.groupby("PT", sort=False):
        p, y, r = (g[c].to_numpy(float) for c in ("p", "y", "rate"))
        n, fold = len(y), g["FOLD"].to_numpy()
        b_tw, b_rate = float(np.mean((p - y) ** 2)), float(np.mean((r - y) ** 2))

        def skill(i, p=p, y=y, r=r):
            den = np.mean((r[i] - y[i]) ** 2)
            return 1 - np.mean((p[i] - y[i]) ** 2) / den if den > 0 else np.nan

        a_lo, a_hi = _boot(lambda i, p=p, y=y, fold=fold: auroc(p[i], y[i], fold[i]), fold, n_boot, rng)
        s_lo, s_hi = _boot(skill, fold, n_boot, rng)
        by_fold = g.groupby("FOLD")[["p", "y", "rate"]].mean()
        out.append({"PT": term, "patients": n, "cases": int(y.sum()), "real_incidence": float(y.mean()),
                    "twin_incidence": float(p.mean()), "kb_rate": float(r.mean()),
                    "abs_error_twins": float((by_fold["p"] - by_fold["y"]).abs().mean()),
                    "abs_error_kb": float((by_fold["rate"] - by_fold["y"]).abs().mean()),
                    "auroc": auroc(p, y, fold), "auroc_lo": a_lo, "auroc_hi": a_hi,
                    "brier_twins": b_tw, "brier_rate": b_rate,
                    "brier_skill": 1 - b_tw / b_rate if b_rate > 0 else float("nan"),
                    "brier_skill_lo": s_lo, "brier_skill_hi": s_hi})
    table = pd.DataFrame(out)
    body = table[table["PT"] != ANY]
    summary = {
        "terms": len(body),
        "mae_twins": float(body["abs_error_twins"].mean()),
        "mae_kb": float(body["abs_error_kb"].mean()),
        "mean_auroc": float(body["auroc"].mean()),
        "mean_brier_skill": float(body["brier_skill"].mean()),
        "terms_auroc_above_half": int((body["auroc_lo"] > 0.5).sum()),
        "terms_brier_below_rate": int((body["brier_skill_hi"] < 0).sum()),
        "terms_brier_above_rate": int((body["brier_skill_lo"] > 0).sum()),
        "terms_brier_negative": int((body["brier_skill"] < 0).sum()),
    }
    summary["mae_ok"] = bool(summary["mae_twins"] <= summary["mae_kb"])
    summary["held_out"] = len(ids)
    summary["held_out_twinned"] = int(sum(min(len(h), max_held_out or len(h)) for h in split))
    summary["twin_ae_records"] = int(ae_records)
    summary["neighbour_shares"] = shares
    # with no personalised donor the twin arm's incidence is the knowledge base's rate by
    # construction: a tie on incidence error is then no evidence of skill
    summary["rate_by_construction"] = bool(shares) and all(v == 0.0 for v in shares)
    return SafetyBacktest(trial.name, arm, folds, twins_per_patient, seed, table, patients, summary,
                          {"total_s": round(time.perf_counter() - t0, 2)}, generator)


def _ci(value: float, lo: float, hi: float, fmt: str) -> str:
    if not np.isfinite(value):
        return "n/a"
    ci = "" if not (np.isfinite(lo) and np.isfinite(hi)) else f" [{lo:{fmt}}, {hi:{fmt}}]"
    return f"{value:{fmt}}{ci}"


def safety_card(result: SafetyBacktest) -> pd.DataFrame:
    """The table a safety physician reads: "Any adverse event" first, then the preferred terms
    by frequency; cases / held-out patients, real incidence, the twins' and the knowledge
    base's rate, AUROC and Brier skill with their 95 % bootstrap intervals (as text)."""
    t = result.terms
    t = pd.concat([t[t["PT"] == ANY], t[t["PT"] != ANY]], ignore_index=True)
    return pd.DataFrame({
        "preferred term": ["Any adverse event" if pt == ANY else pt for pt in t["PT"]],
        "cases / patients": [f"{c} / {n}" for c, n in zip(t["cases"], t["patients"])],
        "real incidence": [f"{100 * v:.1f} %" for v in t["real_incidence"]],
        "twins' incidence": [f"{100 * v:.1f} %" for v in t["twin_incidence"]],
        "knowledge-base rate": [f"{100 * v:.1f} %" for v in t["kb_rate"]],
        "AUROC [95 % CI]": [_ci(*v, ".2f") for v in zip(t["auroc"], t["auroc_lo"], t["auroc_hi"])],
        "Brier skill [95 % CI]": [_ci(*v, "+.2f") for v in
                                  zip(t["brier_skill"], t["brier_skill_lo"], t["brier_skill_hi"])],
    })


def safety_verdict(result: SafetyBacktest) -> list[str]:
    """The summary in plain words: the incidence error of the twins against that of the
    knowledge base's own rates over the top terms, then what the AUROC says."""
    s = result.summary
    diff = 100 * (s["mae_twins"] - s["mae_kb"])
    lines = [f"Over the {s['terms']} most frequent preferred terms, the twins' incidence is off the "
             f"held-out patients' real incidence by {100 * s['mae_twins']:.1f} percentage points on "
             f"average, the knowledge base's own rates by {100 * s['mae_kb']:.1f}: the twins are "
             + ("**no worse** than the knowledge base's rates" if s["mae_ok"] else
                f"**worse** than the knowledge base's rates (by {diff:.1f} points)") + "."]
    if s.get("rate_by_construction"):
        lines.append("In every fold the cross-validation inside the knowledge base found that retrieved "
                     "neighbours predict a patient's AEs no better than the arm's rate, so every twin's AE "
                     "history comes from a patient of the whole arm: the twins' incidence equals the knowledge "
                     "base's rate **by construction**, and the tie above is not evidence of skill.")
    auc = s["mean_auroc"]
    if np.isfinite(auc):
        above = s["terms_auroc_above_half"]
        lines.append(f"Mean AUROC {auc:.2f} (0.5 = chance): the twins rank who has which adverse event " + (
            "no better than chance" if auc <= 0.55 else "a little better than chance" if auc < 0.65
            else "better than chance") +
            f"; for {above} of {s['terms']} terms the 95 % interval lies above 0.5.")
    else:
        lines.append("AUROC not available: too few held-out cases and non-cases within a fold.")
    skill = s.get("mean_brier_skill", float("nan"))
    if np.isfinite(skill):
        worse, better = s.get("terms_brier_below_rate", 0), s.get("terms_brier_above_rate", 0)
        # the words follow the intervals: a mean skill of -0.001 is no evidence either way
        how = ("**worse than the arm's rate alone** for some terms" if worse and not better else
               "better than the arm's rate for some terms" if better and not worse else
               "better for some terms and worse for others" if better and worse else
               "no better and no worse than the arm's rate, as far as these patients can tell")
        lines.append(f"Mean Brier skill {skill:+.2f} against the knowledge base's rate (0 = as good, above 0 = "
                     f"better): each patient's twins predict who has which adverse event {how} (skill below 0 "
                     f"for {s.get('terms_brier_negative', 0)} of {s['terms']} terms; the 95 % interval lies "
                     f"wholly below 0 for {worse}, wholly above for {better}).")
    return lines
