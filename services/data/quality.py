"""Data-quality notes a generator passes on: values so far from the rest of their parameter that
they are more likely a unit or entry error than a patient (a BDI of 1e6 among scores of 0-63).
Twins learn their spread and range from such a value, so the run names it instead of hiding it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.data.loading import MISSING_CODES

FAR = 10.0   # a value this many times farther from the median than the 99th percentile of all is named


def outlying_values(values: pd.DataFrame, far: float = FAR, show: int = 3) -> list[str]:
    """One note per parameter of `values` (USUBJID, PARAMCD, AVAL, and AVISIT where known) with
    values whose distance from the parameter's median is more than `far` times the 99th
    percentile of all distances (on the log scale for a positive parameter): gross errors only.
    Real extremes pass: pbc's prothrombin times of 28-36 s (median 10.6) and epilepsy's 102
    seizures a fortnight sit within 2-3 x that percentile."""
    notes = []
    for p, g in values.dropna(subset=["AVAL"]).groupby("PARAMCD", sort=False):
        x = g["AVAL"].to_numpy(float)
        if len(x) < 20:
            continue
        y = np.log(x) if x.min() > 0 else x
        dist = np.abs(y - np.median(y))
        q99 = float(np.percentile(dist, 99))
        if q99 <= 0:
            continue
        far_rows = g[dist > far * q99]
        if not len(far_rows):
            continue
        lo, hi = np.percentile(x, [25, 75])
        shown = "; ".join(f"{v:g} ({u}" + (f", {a})" if "AVISIT" in far_rows and isinstance(a, str) else ")")
                          for v, u, a in zip(far_rows["AVAL"].head(show), far_rows["USUBJID"].head(show),
                                             far_rows.get("AVISIT", pd.Series([None] * len(far_rows))).head(show)))
        notes.append(f"{p}: {len(far_rows)} value(s) far outside the rest ({shown}; the middle half lies within "
                     f"{lo:g}-{hi:g}): the twins learn their spread and range from them, so check for a unit or "
                     "entry error")
    return notes


def source_mismatches(kb, sources, show: int = 3) -> list[str]:
    """Problems of patients to twin that come from outside the knowledge base (`twinarm generate
    --subjects`), one message each: a covariate that is numeric in the knowledge base but text
    for some sources (an AGE of "old" was read as missing and imputed, silently). Empty when
    they fit."""
    out = []
    subj = sources.subjects
    for col, kind in kb.covariates.items():
        if kind != "continuous" or col not in subj:
            continue
        raw = subj[col]
        text = raw.astype(str).str.strip().str.upper()
        blank = (text == "") | text.isin(MISSING_CODES)      # an empty cell, SAS's ".", NA, ... as the loader reads them
        bad = raw.notna() & ~blank & pd.to_numeric(raw, errors="coerce").isna()
        if bad.any():
            rows = subj.loc[bad, ["USUBJID", col]].head(show)
            shown = ", ".join(f"{u}: {v!r}" for u, v in zip(rows["USUBJID"], rows[col]))
            more = f" and {int(bad.sum()) - len(rows)} more" if bad.sum() > len(rows) else ""
            out.append(f"adsl column {col} is numeric in the knowledge base {kb.name} but not for "
                       f"{int(bad.sum())} source(s) ({shown}{more})")
    return out
