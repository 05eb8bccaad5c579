"""Adverse-event twins of the local generator: each twin copies the treatment-emergent AE
history of one real donor of the target arm, cut at the twin's own end of follow-up.

Design (issue 15; the simplest honest model consistent with the rest of the generator):

- **Donor.** The twin's event-history donor when the run copies event histories
  (`tte_draw="history"`; its AE history then spans the same follow-up as the twin's event
  history), else the donor of its
  residual trajectory (`manifest["donors"]`), else (a trial with neither longitudinal
  parameters nor ADTTE) a donor drawn from the source's retrieved neighbours in a random
  order of their own stream (`_S_AE`), twin t taking the t-th. A donor is always a real
  patient of the target arm, never the source itself.
- **What is copied.** Every treatment-emergent record of the donor (`services.data.adverse`):
  preferred term, system organ class, onset day, severity, seriousness, so the co-occurrence of
  terms, their timing and their severity stay those of a real patient. The per-patient
  probability of a term (share of a source's K twins with it) is then the kernel-weighted
  neighbourhood's incidence: occurrence and onset are modelled per term through the
  neighbours, conditioned on the baseline by retrieval, like the BDS residuals. Rare terms
  and system organ classes need no model of their own: they come with the histories.
- **End of follow-up.** A twin has no AE after its own end of follow-up: the last time of its
  event history (ADTTE) when it has one, else its last generated visit day, else (nothing
  generated after baseline) the donor's own end of follow-up. Records beyond it are left out
  and counted in the manifest; records without an onset day are left out when the trial
  has onset days (they could not be placed within the follow-up).
- **Terms.** Only terms of the knowledge base can occur (they are copied); the test suite
  checks it.

- **Donor pool, chosen by cross-validation** (`choose_donor_pool`, once per target arm): the
  neighbours carry baseline signal about AEs only if a patient's retrieved neighbourhood
  predicts its own AEs better than the arm's rate. Inside the knowledge base, for the arm's 10
  most frequent terms, the leave-one-out Brier score of w x (neighbourhood incidence, itself
  excluded) + (1 - w) x (the arm's leave-one-out rate) is computed for w in 0, 0.25, .., 1;
  the best w is kept only if it beats the rate significantly (one-sided paired t over
  patients, 5 %; in simulation without signal it is kept 0.3 % of the time, best-by-Brier
  alone 24 %), and is then the share of twins whose donor is personalised as above; the others take
  the history of a patient of the whole target arm, assigned in a balanced seeded order (each
  arm patient donates about as often as the others, never to itself). With w = 0 the twin
  arm's incidence of every term is the arm's own rate *by construction*: the twins then carry
  no per-patient AE information, which the backtest's AUROC (about 0.5) shows, and an
  incidence error equal to the knowledge base's is not evidence of skill (the CDISC pilot
  chooses w = 0 in every arm). Co-occurrence, timing and severity are still those of one real
  patient.

The draws use their own random stream, so adding AE twins leaves the BDS and ADTTE twins of
a seed unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from services.data.adverse import ae_columns, emergent, followup_end, has_ae
from services.data.trial import Trial
from services.generation.seeding import stable_key, uniforms

_S_AE = 6   # random stream of AE donors (see local/residuals.py for the others)


def twin_followup_end(adsl: pd.DataFrame, bds: dict[str, pd.DataFrame], tte: pd.DataFrame | None) -> pd.Series:
    """Each twin's end of follow-up (index twin USUBJID, NaN when nothing was generated):
    the last time of its event history, else its last generated visit day."""
    end = pd.Series(np.nan, index=pd.Index(adsl["USUBJID"], name="USUBJID"), dtype=float)
    if tte is not None and len(tte):
        end = end.fillna(tte.groupby("USUBJID")["AVAL"].max().astype(float))
    days = [f.loc[~f["ABLFL"].fillna("").astype(str).str.upper().eq("Y"), ["USUBJID", "ADY"]]
            for f in bds.values() if len(f)]
    if days:
        last = pd.concat(days).groupby("USUBJID")["ADY"].max().astype(float)
        end = end.fillna(last)
    return end


SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)   # candidate shares of personalised donors
ALPHA = 0.05                            # one-sided level a share > 0 must reach


def choose_share(p: np.ndarray, rate: np.ndarray, y: np.ndarray) -> tuple[float, float, float, dict]:
    """(share kept, best share, its one-sided p-value, Brier per share) from the patients x
    terms arrays of neighbourhood predictions `p`, leave-one-out rates `rate` and outcomes `y`.
    The best share must beat the rate significantly (one-sided paired t over patients at 5 %):
    picking the best of five on ~50 patients alone chose a share > 0 in a quarter of simulated
    trials without any signal, and made held-out incidence errors worse."""
    n = len(y)
    brier = {w: float(np.mean((w * p + (1 - w) * rate - y) ** 2)) for w in SHARES}
    best = min(SHARES, key=lambda w: (round(brier[w], 10), w))
    p_value = 1.0
    if best > 0:
        gain = ((rate - y) ** 2).mean(axis=1) - ((best * p + (1 - best) * rate - y) ** 2).mean(axis=1)
        sd = gain.std(ddof=1)
        p_value = float(stats.t.sf(gain.mean() / (sd / np.sqrt(n)), n - 1)) if sd > 0 else 1.0
    return (best if p_value < ALPHA else 0.0), best, p_value, brier


def choose_donor_pool(kb: Trial, target_arm: str, retriever, neighbours: int,
                      top: int = 10) -> dict:
    """The share of a twin's AE donors taken from its retrieved neighbourhood (the rest from
    the whole arm, balanced), chosen by leave-one-out Brier inside the knowledge base and kept
    only when it beats the arm's rate significantly (module docstring): a
    patient's predicted probability of a term with share w is w x (its `neighbours` nearest
    target-arm patients' incidence, itself excluded) + (1 - w) x (the arm's rate without it),
    scored over the arm's `top` most frequent terms; the best of `SHARES` wins (ties: the
    smaller share). Shrinking toward the rate keeps a weak signal that the raw neighbourhood
    mean (noisier by about p(1-p)/neighbours) would lose."""
    teae = emergent(kb)
    ids = [str(u) for u in kb.subjects.loc[kb.subjects["ARM"] == target_arm, "USUBJID"]]
    arm = teae[teae["USUBJID"].astype(str).isin(ids)]
    n = len(ids)
    if n < 10 or arm.empty:
        return {"pool": "neighbours", "neighbour_share": 1.0,
                "reason": f"{n} target-arm patients: too few to compare"}
    terms = list(arm.groupby("AEDECOD")["USUBJID"].nunique().sort_values(
        ascending=False, kind="stable").index[:top])
    y = (pd.crosstab(arm["USUBJID"].astype(str), arm["AEDECOD"]).reindex(
        index=ids, columns=terms, fill_value=0) > 0).to_numpy(float)
    pos = {u: i for i, u in enumerate(ids)}
    hits = retriever.neighbours_many(kb.subset(ids), arm=target_arm, k=neighbours + 1)
    rate = (y.sum(axis=0) - y) / (n - 1)
    p = rate.copy()
    for i, u in enumerate(ids):
        nb = [pos[str(h.usubjid)] for h in hits.get(u, []) if str(h.usubjid) != u
              and str(h.usubjid) in pos][:neighbours]
        if nb:
            p[i] = y[nb].mean(axis=0)
    share, best, p_value, brier = choose_share(p, rate, y)
    pool = "arm" if share == 0 else "neighbours" if share == 1 else "mixture"
    return {"pool": pool, "neighbour_share": share, "best_share": best, "p_value": round(p_value, 4),
            "terms": len(terms), "brier": {str(w): round(b, 5) for w, b in brier.items()},
            "brier_neighbours": round(brier[1.0], 5), "brier_arm_rate": round(brier[0.0], 5)}


def _arm_donors(kb: Trial, adsl: pd.DataFrame, target_arm: str, seed: int) -> list:
    """Balanced donors from the whole target arm: the arm in a seeded random order, cycled over
    the twins (twin order), a source never its own donor."""
    arm = np.array(sorted(str(u) for u in kb.subjects.loc[kb.subjects["ARM"] == target_arm, "USUBJID"]),
                   dtype=object)
    if not len(arm):
        return [None] * len(adsl)
    u = uniforms(seed, np.array([stable_key(f"ae-arm|{target_arm}")], dtype=np.uint64), 1, _S_AE, len(arm))[0, 0]
    order = arm[np.argsort(u, kind="stable")]
    out = []
    for j, src in enumerate(adsl["SRCSUBJID"].astype(str)):
        donor = order[j % len(order)]
        if donor == src and len(order) > 1:
            donor = order[(j + 1) % len(order)]
        out.append(donor)
    return out


def _donors(adsl: pd.DataFrame, manifest: dict, seed: int, use_tte: bool) -> tuple[list, str]:
    """Each twin's AE donor (None when it has none) and where the donors come from."""
    tte_d = manifest.get("tte_donors") or {}
    bds_d = manifest.get("donors") or {}
    twins = list(adsl["USUBJID"])
    if use_tte and any(tte_d.get(t) for t in twins):
        return [tte_d.get(t) for t in twins], "event-history donor"
    if any(bds_d.get(t) for t in twins):
        return [bds_d.get(t) for t in twins], "trajectory donor"
    neighbours = manifest.get("neighbours") or {}
    out = []
    for twin, src, idx in zip(twins, adsl["SRCSUBJID"], adsl["TWINIDX"]):
        nb = list(neighbours.get(twin) or [])
        if not nb:
            out.append(None)
            continue
        u = uniforms(seed, np.array([stable_key(f"ae|{src}")], dtype=np.uint64), 1, _S_AE, len(nb))[0, 0]
        out.append(nb[np.argsort(u, kind="stable")[(int(idx) - 1) % len(nb)]])
    return out, "neighbour"


def adverse_event_twins(kb: Trial, adsl: pd.DataFrame, bds: dict[str, pd.DataFrame], tte: pd.DataFrame | None,
                        manifest: dict, seed: int, pool: dict | None = None) -> pd.DataFrame | None:
    """The twins' ADAE (contract columns) or None when the knowledge base has no AE data.
    `pool` (`choose_donor_pool`; default personalised donors) says where donors come from.
    Adds an `ae` section and a note to the manifest."""
    if not has_ae(kb):
        return None
    cols = ae_columns(kb)
    teae = emergent(kb)
    pool = pool or {"pool": "neighbours", "neighbour_share": 1.0}
    share = float(pool.get("neighbour_share", 0.0 if pool["pool"] == "arm" else 1.0))
    if share < 1:
        arm = manifest.get("target_arm") or (str(adsl["ARM"].iloc[0]) if len(adsl) else "")
        arm_donors = _arm_donors(kb, adsl, arm, seed)
    if share > 0:
        personal, origin = _donors(adsl, manifest, seed, use_tte=tte is not None and len(tte) > 0)
    if share >= 1:
        donors = personal
    elif share <= 0:
        donors, origin = arm_donors, "target-arm donor (balanced)"
    else:   # each twin: its personalised donor with probability `share`, else its arm donor
        keys = np.array([stable_key(f"ae-mix|{t}") for t in adsl["USUBJID"]], dtype=np.uint64)
        u = uniforms(seed, keys, 1, _S_AE, 1)[:, 0, 0]
        donors = [a if pick else b for pick, a, b in zip(u < share, personal, arm_donors)]
        origin = f"{origin} for {share:.0%} of twins, else a target-arm donor (balanced)"
    end = twin_followup_end(adsl, bds, tte)
    donor_end = followup_end(kb)
    pairs = pd.DataFrame({"USUBJID": adsl["USUBJID"].to_numpy(), "SRCSUBJID": adsl["SRCSUBJID"].to_numpy(),
                          "_DONOR": donors, "_ORDER": np.arange(len(adsl))})
    pairs["_END"] = end.reindex(pairs["USUBJID"]).to_numpy()
    pairs["_END"] = pairs["_END"].fillna(pairs["_DONOR"].map(donor_end))
    pairs = pairs[pairs["_DONOR"].notna()]
    hist = teae[[c for c in cols if c not in ("USUBJID", "SRCSUBJID")] + ["USUBJID"]].rename(
        columns={"USUBJID": "_DONOR"})
    out = pairs.merge(hist, on="_DONOR", how="inner")
    n_copied = len(out)
    if "ASTDY" in out:
        within = out["ASTDY"].notna() & (out["ASTDY"] <= out["_END"])
        # a twin with no end of follow-up at all (nothing generated, donor without a day) keeps
        # nothing dated: it cannot be placed within a follow-up
        out = out[within]
        out = out.sort_values(["_ORDER", "ASTDY", "AEDECOD"], kind="stable")
    else:
        out = out.sort_values(["_ORDER", "AEDECOD"], kind="stable")
    dropped = n_copied - len(out)
    out = out[cols].reset_index(drop=True)
    manifest["ae"] = {"donor": origin, "pool": pool,
                      "donors": {t: d for t, d in zip(adsl["USUBJID"], donors) if d is not None},
                      "records": len(out), "dropped_after_followup": int(dropped),
                      "twins_with_ae": int(out["USUBJID"].nunique()), "terms": int(out["AEDECOD"].nunique())}
    manifest.setdefault("notes", []).append(
        f"adverse events: each twin copies the treatment-emergent AE history of its {origin} "
        f"({len(out)} records); {dropped} records after their twin's end of follow-up were left out")
    return out
