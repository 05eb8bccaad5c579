"""Adverse-event twins of the local generator: each twin copies the treatment-emergent AE
history of one real donor of the target arm, cut at the twin's own end of follow-up.

Design (issue 15; the simplest honest model consistent with the rest of the generator):

- **Donor.** The twin's event-history donor when the run has time-to-event twins (its AE
  history then spans the same follow-up as the twin's event history), else the donor of its
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

The draws use their own random stream, so adding AE twins leaves the BDS and ADTTE twins of
a seed unchanged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
                        manifest: dict, seed: int) -> pd.DataFrame | None:
    """The twins' ADAE (contract columns) or None when the knowledge base has no AE data.
    Adds an `ae` section and a note to the manifest."""
    if not has_ae(kb):
        return None
    cols = ae_columns(kb)
    teae = emergent(kb)
    donors, origin = _donors(adsl, manifest, seed, use_tte=tte is not None and len(tte) > 0)
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
    manifest["ae"] = {"donor": origin, "records": len(out), "dropped_after_followup": int(dropped),
                      "twins_with_ae": int(out["USUBJID"].nunique()), "terms": int(out["AEDECOD"].nunique())}
    manifest.setdefault("notes", []).append(
        f"adverse events: each twin copies the treatment-emergent AE history of its {origin} "
        f"({len(out)} records); {dropped} records after their twin's end of follow-up were left out")
    return out
