"""Adverse events of a trial: the treatment-emergent records, the dictionary of terms and
each subject's end of follow-up. Shared by the generators (AE twins) and the safety
comparison, so that real patients and twins are counted the same way.

Definitions (documented in the README, section "Adverse events"):

- **Treatment-emergent** AEs: `TRTEMFL = "Y"` when ADAE has that flag; otherwise onset on or
  after study day 1 (`ASTDY >= 1`); when ADAE has no onset day at all, every record. Records
  with an onset day before day 1 are the patient's history before treatment, not outcomes.
- **Onset day** `ASTDY`: ADAE's own, else derived at loading from `ASTDT` and the subject's
  treatment start (`TRTSDT` of ADAE or ADSL, else `RFSTDTC`) as CDISC study days (no day 0).
- **End of follow-up** of a subject: the last day anything was recorded after baseline: the
  latest of its BDS `ADY`, ADTTE `AVAL` and AE onset day. For twins the same rule gives the
  last generated visit day (or the event history's last time when the trial has ADTTE).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

AE_TWIN_COLUMNS = ["USUBJID", "SRCSUBJID", "AEDECOD", "AEBODSYS", "ASTDY", "AESEV", "AESER"]
AE_OPTIONAL = ("AEBODSYS", "ASTDY", "AESEV", "AESER")


def has_ae(trial) -> bool:
    return trial.ae is not None and len(trial.ae) > 0


def ae_columns(trial) -> list[str]:
    """The contract's ADAE columns of a twin run of this trial (optional ones where it has them)."""
    cols = set(trial.ae.columns) if trial.ae is not None else set()
    return [c for c in AE_TWIN_COLUMNS if c in ("USUBJID", "SRCSUBJID", "AEDECOD") or c in cols]


def emergent(trial) -> pd.DataFrame:
    """Treatment-emergent AE records (see the module docstring), columns as in ADAE."""
    ae = trial.ae
    if ae is None or ae.empty:
        return pd.DataFrame(columns=["USUBJID", "AEDECOD"])
    if "TRTEMFL" in ae.columns and ae["TRTEMFL"].notna().any():
        keep = ae["TRTEMFL"].astype(str).str.upper().eq("Y")
    elif "ASTDY" in ae.columns and ae["ASTDY"].notna().any():
        keep = ae["ASTDY"].ge(1)
    else:
        keep = pd.Series(True, index=ae.index)
    return ae[keep & ae["AEDECOD"].notna()].reset_index(drop=True)


def dictionary(trial) -> pd.DataFrame:
    """The trial's dictionary of terms: one row per preferred term (AEDECOD) with its system
    organ class (AEBODSYS, the most frequent one when a term has several; "" without)."""
    ae = trial.ae
    if ae is None or ae.empty:
        return pd.DataFrame(columns=["AEDECOD", "AEBODSYS"])
    if "AEBODSYS" in ae.columns:
        pairs = ae[["AEDECOD", "AEBODSYS"]].dropna(subset=["AEDECOD"]).fillna({"AEBODSYS": ""})
        top = pairs.value_counts().reset_index().drop_duplicates("AEDECOD")
        return top[["AEDECOD", "AEBODSYS"]].sort_values(["AEBODSYS", "AEDECOD"]).reset_index(drop=True)
    terms = sorted(ae["AEDECOD"].dropna().unique())
    return pd.DataFrame({"AEDECOD": terms, "AEBODSYS": ""})


def followup_end(trial) -> pd.Series:
    """Each subject's end of follow-up in study days (index USUBJID, every ADSL subject; NaN
    when nothing was recorded after baseline): the latest BDS ADY, ADTTE AVAL or TEAE onset."""
    parts = []
    for frame in trial.bds.values():
        if "ADY" in frame and len(frame):
            parts.append(frame.groupby("USUBJID")["ADY"].max())
    if trial.tte is not None and len(trial.tte):
        parts.append(trial.tte.groupby("USUBJID")["AVAL"].max())
    teae = emergent(trial)
    if "ASTDY" in teae and teae["ASTDY"].notna().any():
        parts.append(teae.groupby("USUBJID")["ASTDY"].max())
    ids = trial.subjects["USUBJID"]
    if not parts:
        return pd.Series(np.nan, index=pd.Index(ids, name="USUBJID"), dtype=float)
    end = pd.concat(parts, axis=1).max(axis=1)
    return end.reindex(ids).astype(float).rename_axis("USUBJID")


def derive_study_day(dates: pd.Series, start: pd.Series) -> pd.Series:
    """CDISC study day of `dates` relative to `start` (day 1 = start; the day before is -1)."""
    d = (pd.to_datetime(dates, errors="coerce") - pd.to_datetime(start, errors="coerce")).dt.days
    return d.where(d < 0, d + 1).astype(float)
