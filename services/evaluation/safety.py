"""Safety comparison: adverse-event incidence of the twin arm vs the real target arm vs the
real source cohort, with the **patient** as the unit of inference.

- A real patient has a term (preferred term, PT = AEDECOD; or system organ class, SOC =
  AEBODSYS) when it has at least one treatment-emergent record of it
  (`services.data.adverse.emergent`); incidence = patients with it / patients of the group
  (ADSL), 95 % Wilson score interval.
- A source patient's K twins give a **probability**, p_i = share of its twins with the term,
  not K patients. The twin arm's incidence is the mean of the p_i over the N sources; its
  95 % interval is p_bar +- 1.96 sqrt(var(p_i) / N + q (1 - q) F): the sampling of source
  patients and of the knowledge base's donors (F: `donor_factor`, below).
- Risk differences (Wald, 95 %):
  - twin arm - real target arm (two groups of different patients):
    SE^2 = var(p_i) / N + q (1 - q) / M; no interval where the twins' AEs are that arm's own
    records drawn from the whole arm, as it is 0 by construction (`by_construction`);
  - real source cohort - twin arm (the safety signal of the source's own treatment against
    its synthetic control; paired within patient): d_i = y_i - p_i,
    SE^2 = var(d_i) / N + q (1 - q) (sum_j W_j^2 - sum_ij W_ij^2). The second term is the
    knowledge base's: a twin's AEs are a real target-arm donor's records, so the twin arm's
    incidence is a weighted mean of those donors' 0/1 outcomes, sum_j W_j y_j (W_j: donor j's
    share of the twin arm), and carries their sampling error, q (1 - q) sum_j W_j^2 (q: the
    target arm's incidence in the knowledge base), less each (source, donor) cell's part, which
    var(d_i) / N already holds (`donor_factor`). Without the term the interval covered 0 in 86 % of null
    trials at 95 % (an outside review's simulation on the CDISC pilot: 43 placebo patients
    twinned under placebo from the other 43).
- Time to first AE of a term: Kaplan-Meier, onset day of the first record, censored at the
  patient's end of follow-up (`adverse.followup_end`); a twin's AE history is its donor's, known
  only while the donor was followed, so a twin is censored at the earlier of its own end and its
  donor's (a twin whose donor left at day 60 is not AE-free to day 183: the twins' pruritus
  reached 31 % at day 182 where its real arm's reached 40 %). Each twin weighs 1/K so that a
  source counts as one patient, numbers at risk in patients; the twins' band is clustered by
  source and by donor, as the incidences' intervals are (`metrics.survival.clustered_km`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.data.adverse import dictionary, emergent, followup_end, has_ae
from services.data.trial import Trial
from services.evaluation.comparison import Comparison
from services.evaluation.groups import GROUPS, SOURCE, TARGET, TWIN
from services.evaluation.survival_comparison import km_steps, twin_sources, twin_weights
from services.jsonable import jsonable

Z95 = 1.959963984540054
LEVELS = {"PT": "AEDECOD", "SOC": "AEBODSYS"}
ANY = "ANY ADVERSE EVENT"


def has_safety(comp: Comparison) -> bool:
    """Whether a safety comparison applies: the knowledge base has AE data and the run has AE
    twins (a run of a generator that makes none, or written before AE twins, has not)."""
    return has_ae(comp.kb) and ("ae" in comp.manifest or has_ae(comp.twins))


def indicators(trial: Trial, level: str = "PT", ids=None) -> pd.DataFrame:
    """0/1 per subject (rows: `ids` or every ADSL subject) and term (columns): at least one
    treatment-emergent record. Column `ANY` = any AE at all."""
    col = LEVELS[level]
    ids = list(trial.subjects["USUBJID"] if ids is None else ids)
    teae = emergent(trial)
    if col not in teae.columns:
        teae = teae.assign(**{col: pd.Series(dtype=object)})
    teae = teae[teae["USUBJID"].isin(set(ids)) & teae[col].notna()]
    wide = pd.crosstab(teae["USUBJID"], teae[col]).clip(upper=1) if len(teae) else pd.DataFrame()
    wide = wide.reindex(index=ids, fill_value=0).fillna(0).astype(float)
    any_ae = emergent(trial)
    wide[ANY] = pd.Index(ids).isin(set(any_ae["USUBJID"])).astype(float)
    wide.columns.name = None
    return wide


def twin_probabilities(twins: Trial, level: str = "PT") -> pd.DataFrame:
    """Per source patient (rows: SRCSUBJID, in twin order) and term: the share of its twins
    with at least one record of the term."""
    ind = indicators(twins, level)
    src = twins.subjects.set_index("USUBJID")["SRCSUBJID"].astype(str)
    ind.index = src.reindex(ind.index).to_numpy()
    order = list(dict.fromkeys(src))
    return ind.groupby(level=0, sort=False).mean().reindex(order)


def wilson(n: float, N: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of n events out of N."""
    if N <= 0:
        return float("nan"), float("nan")
    p = n / N
    denom = 1 + z * z / N
    centre = (p + z * z / (2 * N)) / denom
    half = z * np.sqrt(p * (1 - p) / N + z * z / (4 * N * N)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def probability_mean_ci(p: np.ndarray, kb_var: float = 0.0, z: float = Z95) -> tuple[float, float, float]:
    """Mean of per-patient probabilities with its patient-level Wald interval (clipped to [0, 1]);
    `kb_var`: the variance the twins' donors add (`donor_factor`)."""
    p = np.asarray(p, dtype=float)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(p.mean())
    se = float(np.sqrt(p.var(ddof=1) / len(p) + kb_var)) if len(p) > 1 else float("nan")
    return m, max(0.0, m - z * se), min(1.0, m + z * se)


def risk_difference(p: np.ndarray, y: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """Twin arm (per-patient probabilities p) minus an independent real group (0/1 outcomes y)."""
    p, y = np.asarray(p, float), np.asarray(y, float)
    if len(p) < 2 or len(y) < 1:
        return float("nan"), float("nan"), float("nan")
    q = float(y.mean())
    d = float(p.mean()) - q
    se = float(np.sqrt(p.var(ddof=1) / len(p) + q * (1 - q) / len(y)))
    if se < 1e-12:       # nobody varies in either group (none or all with the term): no interval, not a 0-width one
        return d, float("nan"), float("nan")
    return d, d - z * se, d + z * se


def paired_risk_difference(y: np.ndarray, p: np.ndarray, kb_var: float = 0.0,
                           z: float = Z95) -> tuple[float, float, float]:
    """Real outcomes y_i minus their own twins' probabilities p_i, paired within patient;
    `kb_var`: the variance the twins' donors add (`donor_factor`)."""
    d = np.asarray(y, float) - np.asarray(p, float)
    if len(d) < 2:
        return float("nan"), float("nan"), float("nan")
    m = float(d.mean())
    se = float(np.sqrt(d.var(ddof=1) / len(d) + kb_var))
    if se < 1e-12:
        return m, float("nan"), float("nan")
    return m, m - z * se, m + z * se


def ae_donors(comp: Comparison) -> dict[str, str]:
    """Twin USUBJID -> the real patient whose AE records it carries (empty when the run records
    none: an LLM run's model writes its twins' AEs)."""
    donors = (comp.manifest.get("ae") or {}).get("donors") or {}
    return {str(t): str(d) for t, d in donors.items()}


def donor_factor(comp: Comparison, src_ids) -> float:
    """The knowledge base's share of the twin arm's variance, per unit of a term's q (1 - q):
    sum_j W_j^2 - sum_ij W_ij^2. W_j is the share of the twin arm (a source's K_i twins weighing
    one patient, N sources) whose AEs are donor j's: the donors' sampling error. W_ij is the share
    of source i's twins that carry donor j's records: that cell is already in the patients' term
    var(p_i) / N (a two-way cluster variance over sources and donors, less their intersection,
    Cameron, Gelbach & Miller 2011); without it the intervals covered 98 % at K 1 (an outside
    review's simulation). Twins without a donor count in neither term. A run that records no
    donors (an LLM writes its twins' AEs) takes one donor per twin drawn from the target arm's M
    patients: sum_j W_j^2 = 1 / M less each twin's own 1 / (N K_i)^2."""
    subj = comp.twins.subjects
    twins = subj[subj["SRCSUBJID"].astype(str).isin(set(map(str, src_ids)))]
    n = twins["SRCSUBJID"].nunique()
    if n == 0:
        return 0.0
    w = np.asarray(twin_weights(subj, twins["USUBJID"]), float) / n
    donors = ae_donors(comp)
    if not donors:
        m = int((comp.kb.subjects["ARM"] == comp.target_arm).sum())
        return max(0.0, (1.0 / m if m else 0.0) - float((w ** 2).sum()))
    cells = pd.DataFrame({"src": twins["SRCSUBJID"].astype(str).to_numpy(), "w": w,
                          "donor": twins["USUBJID"].astype(str).map(donors).to_numpy()}).dropna(subset=["donor"])
    spread = float((cells.groupby("donor")["w"].sum() ** 2).sum())
    own = float((cells.groupby(["src", "donor"])["w"].sum() ** 2).sum())
    return max(0.0, spread - own)


def incidence(comp: Comparison, level: str = "PT") -> pd.DataFrame:
    """One row per term (and `ANY`): for each group n, N, pct (proportion), lo, hi; the twin
    arm's n is the expected number of patients (sum of probabilities); risk differences
    `rd_twin_target*` and `rd_source_twin*` (see the module docstring). Columns SOC / PT."""
    probs = twin_probabilities(comp.twins, level)
    real = {g: indicators(t, level) for g, t in comp.groups.items() if g != TWIN}
    src_ids = [s for s in probs.index if s in set(comp.kb.subjects["USUBJID"])]
    if SOURCE in real:
        real[SOURCE] = real[SOURCE].reindex(src_ids)
    terms = list(dict.fromkeys([ANY] + [c for f in [probs, *real.values()] for c in f.columns if c != ANY]))
    soc_of = dict(zip(*[dictionary(comp.kb)[c] for c in ("AEDECOD", "AEBODSYS")]))
    arm_ids = comp.kb.subjects.loc[comp.kb.subjects["ARM"] == comp.target_arm, "USUBJID"]
    arm_rates = indicators(comp.kb, level, arm_ids).mean() if len(arm_ids) else pd.Series(dtype=float)
    factor_all, factor_src = donor_factor(comp, list(probs.index)), donor_factor(comp, src_ids)
    constructed = by_construction(comp)
    rows = []
    for term in terms:
        p = probs[term].to_numpy(float) if term in probs else np.zeros(len(probs))
        row = {"SOC": "" if term == ANY else (term if level == "SOC" else soc_of.get(term, "")),
               "PT": "" if level == "SOC" and term != ANY else term}
        q = float(arm_rates.get(term, 0.0))
        m, lo, hi = probability_mean_ci(p, q * (1 - q) * factor_all)
        row.update({f"{TWIN}_n": float(p.sum()), f"{TWIN}_N": len(p), f"{TWIN}_pct": m, f"{TWIN}_lo": lo,
                    f"{TWIN}_hi": hi})
        for g, ind in real.items():
            y = ind[term].to_numpy(float) if term in ind else np.zeros(len(ind))
            lo_r, hi_r = wilson(float(y.sum()), len(y))
            row.update({f"{g}_n": float(y.sum()), f"{g}_N": len(y), f"{g}_pct": float(y.mean()) if len(y) else np.nan,
                        f"{g}_lo": lo_r, f"{g}_hi": hi_r})
        if TARGET in real:
            y = real[TARGET][term].to_numpy(float) if term in real[TARGET] else np.zeros(len(real[TARGET]))
            row["rd_twin_target"], row["rd_twin_target_lo"], row["rd_twin_target_hi"] = risk_difference(p, y)
            if constructed:               # no interval for a difference that is 0 by construction
                row["rd_twin_target_lo"] = row["rd_twin_target_hi"] = float("nan")
        if SOURCE in real:
            y = real[SOURCE][term].to_numpy(float) if term in real[SOURCE] else np.zeros(len(src_ids))
            p_src = probs.loc[src_ids, term].to_numpy(float) if term in probs else np.zeros(len(src_ids))
            row["rd_source_twin"], row["rd_source_twin_lo"], row["rd_source_twin_hi"] = \
                paired_risk_difference(y, p_src, kb_var=q * (1 - q) * factor_src)
        rows.append(row)
    out = pd.DataFrame(rows)
    pct_cols = [f"{g}_pct" for g in GROUPS if f"{g}_pct" in out]
    out["_freq"] = out[pct_cols].mean(axis=1)
    out["_any"] = out["PT"].eq(ANY)
    out = out.sort_values(["_any", "_freq"], ascending=[False, False], kind="stable")
    return out.drop(columns=["_freq", "_any"]).reset_index(drop=True)


def _neighbour_share(manifest: dict) -> float:
    """The share of twins whose AE donor is personalised; 1 where the run does not say (runs
    written before the donor pool was cross-validated took every donor from the neighbours)."""
    pool = (manifest.get("ae") or {}).get("pool")
    return 1.0 if not pool else float(pool.get("neighbour_share", 0.0 if pool.get("pool") == "arm" else 1.0))


def by_construction(comp: Comparison) -> bool:
    """The twins' AEs are records of donors drawn from the whole target arm (no personalised
    share, not written by a model) and no source is of that arm: twin arm - real target arm is
    then 0 up to the draw, and an interval treating the two as independent samples (+-10 points
    on the pilot) means nothing. Sources of the target arm (twins of controls, a check of the
    generator) give donors the real target group leaves out: then it is not (a code review)."""
    ae = comp.manifest.get("ae") or {}
    return (ae.get("source") != "model" and bool(ae.get("donors")) and _neighbour_share(comp.manifest) == 0.0
            and not _sources_in_target_arm(comp))


def _sources_in_target_arm(comp: Comparison) -> bool:
    subjects = comp.kb.subjects
    return bool(subjects.loc[subjects["USUBJID"].isin(comp.source_ids), "ARM"].eq(comp.target_arm).any())


def twin_target_meaning(comp: Comparison) -> str:
    """What twin arm - real target arm can show, given how the run's twins got their AEs (an
    outside review: "by construction" is false for an LLM's AEs and only partly true for donors
    chosen like each source)."""
    ae = comp.manifest.get("ae") or {}
    share = _neighbour_share(comp.manifest)
    if by_construction(comp):
        return ("a check of the generator's bookkeeping, not evidence of agreement: the twins' AEs are that arm's "
                "own records, drawn from the whole arm, so it holds 0 by construction.")
    if ae.get("source") == "model":
        return ("how far the model's adverse events are from that arm's; it saw its neighbours' histories, so "
                "agreement is partly by construction.")
    if share > 0:
        return (f"{share:.0%} of the twins carry the records of that arm's patients most like their source, the "
                "others of patients drawn from the whole arm, so the difference shows the sources' case mix, not "
                "the generator's skill.")
    if _sources_in_target_arm(comp):
        return ("the twins' AEs are records of the target arm's patients, the sources' own among them, which the "
                "real target arm here leaves out: a difference from it is the draw, not the generator's skill.")
    return "the twins' AEs come from that arm's patients' records, so agreement is largely by construction."


def safety_summary(comp: Comparison, top: int = 15) -> dict:
    """`incidence` by preferred term for `twinarm evaluate --json`: "Any adverse event" and the
    `top` most frequent terms, each group's n / N / proportion / 95 % interval and both risk
    differences with their intervals (proportions, not percentages), and the caveats the
    screen states beside them."""
    rows = jsonable(incidence(comp, "PT").head(top + 1).to_dict(orient="records"))
    return {"level": "PT", "unit": "patients (a source's K twins give one probability)", "terms": rows,
            "multiplicity": "separate 95 % intervals, not adjusted for the number of terms",
            "twin_minus_target": twin_target_meaning(comp)}


def top_terms(trial: Trial, n: int = 10, arm: str | None = None) -> list[str]:
    """The `n` preferred terms with the most patients (in `arm`, default every arm)."""
    ids = trial.subjects["USUBJID"] if arm is None else trial.subjects.loc[trial.subjects["ARM"] == arm, "USUBJID"]
    ind = indicators(trial, "PT", ids).drop(columns=ANY)
    counts = ind.sum().sort_values(ascending=False, kind="stable")
    return list(counts.index[:n])


def _cell(n: float, N: int, pct: float, twin: bool) -> str:
    if not N:
        return ""
    return f"{n:.1f} ({100 * pct:.1f} %)" if twin else f"{round(n)} ({100 * pct:.1f} %)"


def safety_table(comp: Comparison) -> pd.DataFrame:
    """The table a safety physician reads: "Any adverse event", then each system organ class
    with its preferred terms below (indented), n (%) per group, sorted by frequency (the mean
    incidence over the groups); the twin arm's n is in patients (sum of probabilities)."""
    pt = incidence(comp, "PT")
    soc = incidence(comp, "SOC") if "AEBODSYS" in emergent(comp.kb).columns else None
    constructed = by_construction(comp)
    groups = [g for g in (TWIN, TARGET, SOURCE) if f"{g}_N" in pt]
    heads = {g: f"{g} (N={int(pt[f'{g}_N'].iloc[0])})" for g in groups}

    def line(label: str, row) -> dict:
        out = {"SOC / PT": label}
        for g in groups:
            out[heads[g]] = _cell(row[f"{g}_n"], int(row[f"{g}_N"]), row[f"{g}_pct"], g == TWIN)
        for key, head in (("rd_source_twin", "RD source - twins (95 % CI)"),
                          ("rd_twin_target", "RD twins - real target (95 % CI)")):
            if key in row:
                rd, lo, hi = row[key], row[f"{key}_lo"], row[f"{key}_hi"]
                why = "by construction" if key == "rd_twin_target" and constructed else "no CI: no patient varies"
                out[head] = ("" if not np.isfinite(rd) else f"{100 * rd:+.1f} ({100 * lo:+.1f}, {100 * hi:+.1f})"
                             if np.isfinite(lo) else f"{100 * rd:+.1f} ({why})")
        return out

    rows = [line("Any adverse event", pt.iloc[0])]
    body = pt.iloc[1:]
    if soc is None:
        rows += [line(r["PT"], r) for _, r in body.iterrows()]
        return pd.DataFrame(rows)
    for _, s in soc.iloc[1:].iterrows():
        rows.append(line(s["SOC"], s))
        rows += [line(f"    {r['PT']}", r) for _, r in body[body["SOC"] == s["SOC"]].iterrows()]
    return pd.DataFrame(rows)


def time_to_first(trial: Trial, term: str, ids=None, level: str = "PT",
                  end: pd.Series | None = None) -> pd.DataFrame:
    """USUBJID, time (first onset of `term`, else end of follow-up), event (1/0); `end`: each
    subject's end of AE follow-up where it is not `adverse.followup_end`'s (`twin_ae_followup`)."""
    col = LEVELS[level]
    ids = list(trial.subjects["USUBJID"] if ids is None else ids)
    teae = emergent(trial)
    end = (followup_end(trial) if end is None else end).reindex(ids)
    first = pd.Series(np.nan, index=pd.Index(ids))
    if col in teae and "ASTDY" in teae:
        hits = teae[(teae[col] == term) & teae["USUBJID"].isin(set(ids))]
        first = hits.groupby("USUBJID")["ASTDY"].min().reindex(ids)
    event = first.notna().to_numpy()
    time = np.where(event, first.to_numpy(float), end.to_numpy(float))
    out = pd.DataFrame({"USUBJID": ids, "time": time, "event": event.astype(int)})
    return out[np.isfinite(out["time"])].reset_index(drop=True)


def twin_ae_followup(comp: Comparison) -> pd.Series:
    """Each twin's end of AE follow-up: the earlier of its own end of follow-up and its AE
    donor's (the module docstring says why); its own where no donor is recorded."""
    own = followup_end(comp.twins)
    donors = pd.Series(ae_donors(comp), dtype=object).reindex(own.index.astype(str))
    donor_end = donors.map(followup_end(comp.kb)).to_numpy(float)
    return pd.Series(np.fmin(own.to_numpy(float), donor_end), index=own.index)


def km_first_ae(comp: Comparison, term: str, level: str = "PT", n_risk_points: int = 6):
    """Kaplan-Meier of the time to the first `term` per group (twins weighted 1/K, censored at
    `twin_ae_followup`): step data (GROUP, time, survival = proportion still free of it, lo, hi)
    and patients at risk."""
    data = {}
    for g, trial in comp.groups.items():
        d = time_to_first(trial, term, level=level, end=twin_ae_followup(comp) if g == TWIN else None)
        d["w"] = twin_weights(trial.subjects, d["USUBJID"]) if g == TWIN else 1.0
        if g == TWIN:
            d["cluster"] = twin_sources(trial.subjects, d["USUBJID"])
            # the donors whose AE histories the twins copy: their sampling error is in the band too
            # (a twin without a recorded donor is its own)
            d["donor"] = d["USUBJID"].astype(str).map(ae_donors(comp)).fillna(d["USUBJID"].astype(str))
        data[g] = d
    return km_steps(data, n_risk_points)
