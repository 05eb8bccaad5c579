"""Building a run's frames from what a generator produced (shared by every generator):
the twins' ADSL, the sources' baseline records copied to their twins, generated records in
the contract's order, and the cut at each twin's end of follow-up."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.data.trial import Trial
from services.generation.run import ADSL_FRONT, BDS_COLUMNS, twin_ids


def twin_adsl(sources: Trial, source_ids: list[str], k: int, target_arm: str,
              covariates: list[str]) -> pd.DataFrame:
    """ADSL of the twins: K rows per source (source order, then TWINIDX), the source's
    baseline covariates copied."""
    subj = sources.subjects.set_index("USUBJID")
    cov = [c for c in covariates if c in subj.columns and c not in ADSL_FRONT]
    src = np.repeat(np.asarray(source_ids, dtype=object), k)
    idx = np.tile(np.arange(1, k + 1), len(source_ids))
    out = pd.DataFrame({
        "USUBJID": twin_ids(src, idx),
        "SRCSUBJID": src, "ARM": target_arm, "TWINIDX": idx.astype(int),
    })
    if cov:
        values = subj.loc[list(src), cov].reset_index(drop=True)
        out = pd.concat([out, values], axis=1)
    return out


def baseline_records(sources: Trial, source_ids: list[str], k: int, datasets: dict[str, list[str]],
                     labels: dict[str, str]) -> dict[str, pd.DataFrame]:
    """The sources' baseline records copied to each of their twins (ABLFL="Y"), by dataset.
    `datasets`: dataset name -> parameters of the knowledge base in that dataset."""
    base = sources.baseline_long
    recs = sources.records
    visit = pd.DataFrame(columns=["PARAMCD", "AVISITN", "AVISIT"])
    if len(recs):
        flagged = recs[recs["ABLFL"].astype(str).str.upper().eq("Y") & recs["AVISITN"].notna()]
        visit = flagged.groupby("PARAMCD", as_index=False).agg(AVISITN=("AVISITN", "min"),
                                                              AVISIT=("AVISIT", "first"))
    order = {s: i for i, s in enumerate(source_ids)}
    base = base[base["USUBJID"].isin(order)]
    out = {}
    for name, params in datasets.items():
        b = base[base["PARAMCD"].isin(params)]
        if b.empty:
            out[name] = pd.DataFrame(columns=BDS_COLUMNS)
            continue
        b = b.merge(visit, on="PARAMCD", how="left")
        n = len(b)
        rep = np.repeat(np.arange(n), k)
        tw = np.tile(np.arange(1, k + 1), n)
        src = b["USUBJID"].to_numpy(dtype=object)[rep]
        frame = pd.DataFrame({
            "USUBJID": twin_ids(src, tw),
            "SRCSUBJID": src,
            "PARAMCD": b["PARAMCD"].to_numpy(dtype=object)[rep],
            "AVAL": b["AVAL"].to_numpy(dtype=float)[rep],
            "ADY": b["ADY"].to_numpy(dtype=float)[rep],
            "AVISITN": b["AVISITN"].to_numpy(dtype=float)[rep],
            "AVISIT": b["AVISIT"].to_numpy(dtype=object)[rep],
            "ABLFL": "Y",
        })
        frame["PARAM"] = frame["PARAMCD"].map(labels).fillna(frame["PARAMCD"])
        frame["_SRC"] = frame["SRCSUBJID"].map(order)
        frame["_TW"] = tw
        out[name] = frame
    return out


def truncate_at_followup(bds: dict[str, pd.DataFrame], tte: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], int]:
    """Drop generated records dated after their twin's end of follow-up (the latest time of its
    event history), so a twin has no lab value after its death, like a real patient. Baseline
    copies and twins without event history are kept."""
    if tte is None or tte.empty:
        return bds, 0
    end = tte.groupby("USUBJID")["AVAL"].max()
    out, dropped = {}, 0
    for name, frame in bds.items():
        limit = frame["USUBJID"].map(end)
        late = ~frame["ABLFL"].eq("Y") & limit.notna() & (frame["ADY"] > limit)
        dropped += int(late.sum())
        out[name] = frame[~late].reset_index(drop=True)
    return out, dropped


def assemble_bds(baseline: dict[str, pd.DataFrame], generated: dict[str, pd.DataFrame],
                 source_ids: list[str]) -> dict[str, pd.DataFrame]:
    """Baseline copies + generated records per dataset, ordered by source, twin, parameter,
    visit (baseline first). Generated frames carry USUBJID, SRCSUBJID, PARAMCD, PARAM, AVAL,
    ADY, AVISITN, AVISIT and the ordering helpers _SRC, _TW."""
    out = {}
    for name in dict.fromkeys(list(baseline) + list(generated)):
        parts = [f for f in (baseline.get(name), generated.get(name)) if f is not None and len(f)]
        if not parts:
            out[name] = pd.DataFrame(columns=BDS_COLUMNS)
            continue
        frame = pd.concat(parts, ignore_index=True)
        frame["ABLFL"] = frame["ABLFL"].fillna("") if "ABLFL" in frame else ""
        params = {p: i for i, p in enumerate(dict.fromkeys(frame["PARAMCD"]))}
        keys = (frame["AVISITN"].fillna(-1e9).to_numpy(),
                (~frame["ABLFL"].eq("Y")).to_numpy().astype(int),
                frame["PARAMCD"].map(params).to_numpy(),
                frame["_TW"].to_numpy(), frame["_SRC"].to_numpy())
        frame = frame.iloc[np.lexsort(keys)].reset_index(drop=True)
        out[name] = frame[BDS_COLUMNS]
    return out


def parameter_datasets(kb: Trial) -> dict[str, list[str]]:
    """Dataset name -> the knowledge base's parameters in it."""
    datasets: dict[str, list[str]] = {}
    for p, info in kb.parameters.items():
        datasets.setdefault(info.dataset, []).append(p)
    return datasets


def assemble_run(src: Trial, kb: Trial, source_ids: list[str], k: int, target_arm: str,
                 generated: dict[str, list[pd.DataFrame]], failed: set[tuple[str, int]],
                 labels: dict[str, str]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], list[str]]:
    """The twins' ADSL and BDS frames of the sources `source_ids` (processed, in order):
    `generated` holds each dataset's generated records (with the ordering helpers _TW; _SRC is
    set here), `failed` the (source, twin index) pairs left out. Returns (adsl, bds by
    dataset in the knowledge base's order, the sources with at least one twin)."""
    covs = [c for c in src.subjects.columns if c in kb.covariates or c in src.covariates]
    adsl = twin_adsl(src, source_ids, k, target_arm, covs)
    if failed:
        adsl = adsl[[(s, int(i)) not in failed for s, i in zip(adsl["SRCSUBJID"], adsl["TWINIDX"])]]
        adsl = adsl.reset_index(drop=True)
    ok_ids = [s for s in source_ids if not all((s, i) in failed for i in range(1, k + 1))]
    base = baseline_records(src, ok_ids, k, parameter_datasets(kb), labels)
    if failed:
        for name, frame in base.items():
            if len(frame):
                keep = [(s, int(i)) not in failed for s, i in zip(frame["SRCSUBJID"], frame["_TW"])]
                base[name] = frame[keep]
    order = {s: i for i, s in enumerate(ok_ids)}      # the same order as the baseline copies
    gen = {}
    for name, frames in generated.items():
        g = pd.concat(frames, ignore_index=True)
        g["_SRC"] = g["SRCSUBJID"].map(order)
        g["PARAM"] = g["PARAMCD"].map(labels).fillna(g["PARAMCD"])
        g["ABLFL"] = ""
        gen[name] = g
    bds = assemble_bds(base, gen, ok_ids)
    bds = {name: bds.get(name, pd.DataFrame(columns=BDS_COLUMNS)) for name in kb.bds}
    return adsl, bds, ok_ids


def run_counts(ok_ids: list[str], requested: int, adsl: pd.DataFrame, bds: dict[str, pd.DataFrame],
               tte: pd.DataFrame | None, failures: list, **extra) -> dict:
    """The manifest's `counts` section."""
    return {
        "sources": len(ok_ids), "sources_requested": int(requested), "twins": len(adsl), **extra,
        "records": {name: len(f) for name, f in bds.items()},
        "generated_records": {name: int((f["ABLFL"] != "Y").sum()) for name, f in bds.items()},
        "tte_records": 0 if tte is None else len(tte),
        "failures": len(failures),
    }
