"""What in a trial.toml does not fit the trial, said in the load notes: a misspelt key, a
control arm or endpoint parameter the data do not have, a covariate override naming no ADSL
column. Each was ignored without a word (an outside review: `contol_arm`, `[endpiont]`,
`control_arm = "Placbo"`, `exclude = ["AGEE"]`; an endpoint `SYSPB` later failed `evaluate`).
Notes, not errors: the data load as they would without the file, and the note says what is used
instead."""

from __future__ import annotations

import difflib

import pandas as pd

TOP_KEYS = ("title", "indication", "description", "source", "control_arm", "arms", "units", "labels",
            "endpoint", "covariates")
TABLE_KEYS = {"endpoint": ("paramcd", "avisitn", "tte_paramcd"), "covariates": ("include", "exclude")}


def _unknown(keys, known, where: str) -> list[str]:
    out = []
    for key in keys:
        if key in known:
            continue
        near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(known)})"
        out.append(f"trial.toml: unknown key '{key}'{where}, ignored{hint}")
    return out


def meta_notes(doc: dict, subjects: pd.DataFrame, bds: dict[str, pd.DataFrame],
               tte: pd.DataFrame | None) -> list[str]:
    """One note per thing in trial.toml (`doc`, as parsed) that the loaded data do not have."""
    notes = _unknown(doc, TOP_KEYS, "")
    for table, known in TABLE_KEYS.items():
        if isinstance(doc.get(table), dict):
            notes += _unknown(doc[table], known, f" in [{table}]")
    arms = [str(a) for a in subjects["ARM"].dropna().unique()]
    control = str(doc.get("control_arm", "") or "")
    if control and control not in arms:
        notes.append(f"trial.toml: control_arm '{control}' is not an arm of the trial (arms: {', '.join(arms)}); "
                     "the control arm is chosen as without it")
    columns = {str(c).upper() for c in subjects.columns}
    for which in ("include", "exclude"):
        missing = [str(c) for c in (doc.get("covariates") or {}).get(which, []) if str(c).upper() not in columns]
        if missing:
            notes.append(f"trial.toml: [covariates] {which} names no ADSL column: {', '.join(missing)}")
    notes += _endpoint_notes(doc.get("endpoint") or {}, bds, tte)
    return notes


def _endpoint_notes(ep: dict, bds: dict[str, pd.DataFrame], tte: pd.DataFrame | None) -> list[str]:
    notes = []
    params = sorted({str(p) for t in bds.values() for p in t["PARAMCD"].dropna().unique()}) if ep else []
    paramcd = str(ep.get("paramcd", "") or "").upper()
    if paramcd and paramcd not in params:
        notes.append(f"trial.toml: [endpoint] paramcd '{ep['paramcd']}' is no parameter of the trial "
                     f"(parameters: {', '.join(params[:12])}{' ...' if len(params) > 12 else ''}); the default "
                     "endpoint is used")
    elif paramcd and ep.get("avisitn") is not None:
        visits = pd.concat([pd.to_numeric(t.loc[t["PARAMCD"] == paramcd, "AVISITN"], errors="coerce")
                            for t in bds.values() if "AVISITN" in t], ignore_index=True).dropna()
        try:
            wanted = float(ep["avisitn"])
        except (TypeError, ValueError):
            wanted = None
        if wanted is None or wanted not in set(visits):
            shown = ", ".join(f"{v:g}" for v in sorted(set(visits))[:12])
            notes.append(f"trial.toml: [endpoint] avisitn {ep['avisitn']!r} is no visit of {paramcd} "
                         f"(visits: {shown or 'none'}); its last well-attended visit is used")
    tte_p = str(ep.get("tte_paramcd", "") or "").upper()
    tte_params = sorted({str(p) for p in tte["PARAMCD"].dropna().unique()}) if tte is not None else []
    if tte_p and tte_p not in tte_params:
        notes.append(f"trial.toml: [endpoint] tte_paramcd '{ep['tte_paramcd']}' is no time-to-event parameter "
                     f"of the trial ({', '.join(tte_params) or 'no ADTTE'}); the first one is used")
    return notes
