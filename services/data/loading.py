"""Loading a trial: files (a folder or an upload) read, validated and turned into a `Trial`.

Every problem is collected and raised at once as `TrialValidationError`, each message naming
the file, the column and the first offending rows (contract section 1).
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from services.data.adverse import derive_study_day
from services.data.meta_check import meta_notes
from services.data.readers import (
    DataFileError,
    RawFile,
    raw_files_from_folder,
    read_table,
    unread_data_files,
)
from services.data.trial import (
    AE_REQUIRED,
    ARM_COLUMNS,
    BDS_REQUIRED,
    IGNORED_FILES,
    TTE_REQUIRED,
    Trial,
    TrialMeta,
    TrialValidationError,
)

BDS_NAMES = ("advs", "adlb", "adeg", "adex", "adpc", "adpp", "adbm", "adqs")   # ADaM BDS datasets, by name prefix
MISSING_CODES = {".", "NA", "N/A", "NAN", "NULL", "MISSING"}    # SAS's "." and the usual spellings of missing


def load_trial(path: str | Path, name: str | None = None) -> Trial:
    """Load a trial folder. Raises TrialValidationError with every problem found."""
    path = Path(path)
    try:
        files = raw_files_from_folder(path)
    except DataFileError as exc:
        raise TrialValidationError([str(exc)]) from None
    try:
        return load_trial_files(files, name=name or path.name)
    except TrialValidationError as exc:
        unread = unread_data_files(path)
        if not unread:
            raise
        # say why a dataset seems absent
        note = (f"not read: {', '.join(unread)} (a trial's files are CSV, Parquet, SAS XPORT or sas7bdat; "
                "save them as one of these)")
        raise TrialValidationError([*exc.messages, note]) from None


def upload_name(files: list[RawFile], subjects: pd.DataFrame | None) -> str:
    """The name of an uploaded trial: ADSL's STUDYID when present, else the folder the files
    came from (when their names carry one), else the ADSL file's stem."""
    if subjects is not None and "STUDYID" in subjects.columns:
        ids = [str(v).strip() for v in subjects["STUDYID"].dropna().unique() if str(v).strip()]
        if ids:
            return " / ".join(ids[:3]) + (f" (+{len(ids) - 3} more)" if len(ids) > 3 else "")
    folders = {Path(f.name).parent.name for f in files}
    if len(folders) == 1 and (folder := folders.pop()):
        return folder
    adsl = next((f for f in files if f.stem == "adsl"), files[0] if files else None)
    return Path(adsl.name).name.split(".")[0] if adsl is not None else "uploaded trial"


def load_trial_files(files: list[RawFile], name: str | None = None) -> Trial:
    """Load a trial from files as received (folder or upload). Without a `name`, the trial is
    named by `upload_name` (STUDYID, else folder, else the ADSL file's stem)."""
    errors: list[str] = []
    warnings: list[str] = []
    if not files:
        raise TrialValidationError(["no files given: a trial needs at least adsl.csv/.xpt/.parquet/.sas7bdat"])

    meta, meta_doc = TrialMeta(), {}
    tables: dict[str, tuple[RawFile, pd.DataFrame]] = {}
    broken: list[tuple[str, list[str]]] = []       # files named as BDS datasets without their columns
    for raw in files:
        if Path(raw.name).name.lower() == "trial.toml":
            try:
                meta, meta_doc = _parse_meta(raw)
            except ValueError as exc:
                errors.append(str(exc))
            continue
        if Path(raw.name).name.lower() in IGNORED_FILES or raw.extension in ("md", "txt"):
            warnings.append(f"{raw.name}: ignored (not a data file)")
            continue
        try:
            frame = read_table(raw)
        except DataFileError as exc:
            errors.append(str(exc))
            continue
        if raw.stem in tables:
            errors.append(f"{raw.name}: a second file for dataset '{raw.stem}' "
                          f"(already have {tables[raw.stem][0].name})")
            continue
        tables[raw.stem] = (raw, frame)

    if "adsl" not in tables:
        if not any(e.lower().startswith("adsl") for e in errors):
            errors.append("no ADSL file: a trial needs adsl.csv, adsl.parquet, adsl.xpt or adsl.sas7bdat "
                          f"(got {', '.join(f.name for f in files)})")
        raise TrialValidationError(errors)

    adsl_raw, adsl = tables.pop("adsl")
    subjects = _validate_adsl(adsl_raw.name, adsl, errors, warnings)
    known = set(subjects["USUBJID"]) if subjects is not None else set()
    labels = dict(adsl.attrs.get("labels", {}))

    bds: dict[str, pd.DataFrame] = {}
    tte = ae = None
    for stem, (raw, frame) in tables.items():
        labels.update({k: v for k, v in frame.attrs.get("labels", {}).items() if k not in labels})
        if stem == "adtte":
            tte = _validate_tte(raw.name, frame, known, errors)
        elif stem == "adae":
            ae = _validate_ae(raw.name, frame, known, errors, warnings, subjects)
        elif "PARAMCD" in frame.columns or "AVAL" in frame.columns:
            table = _validate_bds(raw.name, frame, known, errors, warnings)
            if table is not None:
                bds[stem] = table
        elif stem.startswith(BDS_NAMES):
            broken.append((raw.name, list(frame.columns)))
        else:
            warnings.append(f"{raw.name}: ignored (not ADSL, ADTTE, ADAE, and no PARAMCD/AVAL columns "
                            "of a BDS dataset)")

    if broken:
        if bds or tte is not None:      # the trial has data without it: a loud note, not a lost load
            warnings.extend(f"{name}: not read: named as a BDS dataset but without PARAMCD and AVAL"
                            for name, _ in broken)
        else:                           # nothing to twin without it (a broken advs replaced a loaded trial)
            errors.extend(f"{name}: missing columns PARAMCD, AVAL (a BDS dataset needs both); found: "
                          f"{', '.join(cols[:12])}" for name, cols in broken)

    seen: dict[str, str] = {}
    for stem, table in bds.items():
        for paramcd in table["PARAMCD"].unique():
            if paramcd in seen:
                errors.append(f"{stem}: parameter {paramcd} also appears in {seen[paramcd]}; "
                              "PARAMCD must be unique across BDS files")
            seen[paramcd] = stem

    if errors:
        raise TrialValidationError(errors)

    arm_of = subjects.set_index("USUBJID")["ARM"]
    for table in bds.values():
        table["ARM"] = table["USUBJID"].map(arm_of)
    if tte is not None:
        tte["ARM"] = tte["USUBJID"].map(arm_of)
    if ae is not None:
        ae["ARM"] = ae["USUBJID"].map(arm_of)

    warnings.extend(meta_notes(meta_doc, subjects, bds, tte))
    digest = hashlib.sha256()
    for raw in sorted(files, key=lambda f: f.name.lower()):
        digest.update(raw.name.lower().encode() + b"\0" + raw.sha256.encode() + b"\0")
    return Trial(name=name or upload_name(files, subjects), subjects=subjects, bds=bds, tte=tte, ae=ae, meta=meta,
                 content_hash=digest.hexdigest(), warnings=warnings, labels=labels)


def _note_duplicates(fname: str, table: pd.DataFrame, warnings: list[str]) -> None:
    """Records repeated for one patient, parameter and time with no time point to tell them apart
    are averaged like a visit's several time points; say so, with the file's rows (`table` keeps
    the file's row index: an outside review found ten conflicting copies of a record moving a
    baseline from 2.6 to 14.3 unsaid)."""
    keys = [c for c in ("USUBJID", "PARAMCD", "AVISITN", "ADY", "ATPT", "ATPTN", "ABLFL") if c in table.columns]
    used = table["ABLFL"].astype(str).str.upper().eq("Y") | table["AVISITN"].notna()   # what the analysis reads
    dup = table.duplicated(subset=keys, keep=False) & used
    if not dup.any():
        return
    same = table[dup].duplicated(subset=[*keys, "AVAL"], keep=False)  # exact copies among them
    rows = np.zeros(int(table.index.max()) + 1, dtype=bool)
    rows[table.index[dup]] = True
    warnings.append(f"{fname}: {int(dup.sum())} records repeat a patient, parameter and time "
                    f"({int((~same).sum())} with different values), {_rows(rows)}; they are averaged as one "
                    "visit's records: check for duplicated rows")


def _parse_meta(raw: RawFile) -> tuple[TrialMeta, dict]:
    """trial.toml as a TrialMeta, and the parsed document (`meta_check` reads its keys)."""
    try:
        doc = tomllib.loads(raw.data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"trial.toml: not valid TOML ({exc})") from None
    cov = doc.get("covariates", {}) or {}
    meta = TrialMeta(
        title=str(doc.get("title", "")), indication=str(doc.get("indication", "")),
        description=str(doc.get("description", "")), source=str(doc.get("source", "")),
        control_arm=str(doc.get("control_arm", "")),
        arm_descriptions={str(k): str(v) for k, v in (doc.get("arms", {}) or {}).items()},
        units={str(k).upper(): str(v) for k, v in (doc.get("units", {}) or {}).items()},
        labels={str(k).upper(): str(v) for k, v in (doc.get("labels", {}) or {}).items()},
        endpoint=dict(doc.get("endpoint", {}) or {}),
        covariates_include=[str(c).upper() for c in cov.get("include", [])],
        covariates_exclude=[str(c).upper() for c in cov.get("exclude", [])],
    )
    return meta, doc


def _rows(mask: pd.Series, limit: int = 5) -> str:
    """'rows 3, 8, 12 (and 40 more)': 1-based data row numbers, header not counted."""
    idx = np.flatnonzero(np.asarray(mask, dtype=bool)) + 1
    shown = ", ".join(str(i) for i in idx[:limit])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"row{'s' if len(idx) > 1 else ''} {shown}{more}"


def _missing_columns(fname: str, frame: pd.DataFrame, required, errors: list[str]) -> bool:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        errors.append(f"{fname}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                      f"(found: {', '.join(frame.columns[:12])}{'...' if len(frame.columns) > 12 else ''})")
    return bool(missing)


def _check_ids(fname: str, frame: pd.DataFrame, known: set, errors: list[str]) -> None:
    blank = frame["USUBJID"].isna()
    if blank.any():
        errors.append(f"{fname}: column USUBJID: {int(blank.sum())} empty subject ids, {_rows(blank)}")
    if known:
        unknown = frame["USUBJID"].notna() & ~frame["USUBJID"].astype(str).isin(known)
        if unknown.any():
            ids = list(dict.fromkeys(frame.loc[unknown, "USUBJID"].astype(str)))[:3]
            errors.append(f"{fname}: column USUBJID: {int(unknown.sum())} rows for subjects not in ADSL "
                          f"(e.g. {', '.join(ids)}), {_rows(unknown)}")


def _numeric(fname: str, frame: pd.DataFrame, col: str, errors: list[str], warnings: list[str] | None,
             what: str = "rows ignored") -> pd.Series:
    values = pd.to_numeric(frame[col], errors="coerce")
    bad = values.isna() & frame[col].notna()
    if bad.any():
        examples = ", ".join(repr(v) for v in list(dict.fromkeys(frame.loc[bad, col].astype(str)))[:3])
        msg = (f"{fname}: column {col}: {int(bad.sum())} non-numeric values ({examples}), {_rows(bad)}")
        if warnings is None or values.notna().sum() == 0:
            errors.append(msg + ("" if warnings is None else "; no numeric value at all"))
        else:
            warnings.append(msg + f"; {what}")
    return values


def _validate_adsl(fname: str, adsl: pd.DataFrame, errors: list[str],
                   warnings: list[str] | None = None) -> pd.DataFrame | None:
    if "USUBJID" not in adsl.columns:
        errors.append(f"{fname}: missing column USUBJID (the subject id); found: "
                      f"{', '.join(adsl.columns[:12])}")
        return None
    arm_col = next((c for c in ARM_COLUMNS if c in adsl.columns and adsl[c].notna().any()), None)
    if arm_col is None:
        errors.append(f"{fname}: no arm column: need one of {', '.join(ARM_COLUMNS)}")
        return None
    adsl = adsl.copy()
    adsl["USUBJID"] = adsl["USUBJID"].map(lambda v: v if pd.isna(v) else _as_id(v))
    blank = adsl["USUBJID"].isna()
    if blank.any():
        errors.append(f"{fname}: column USUBJID: {int(blank.sum())} empty subject ids, {_rows(blank)}")
    dup = adsl["USUBJID"].notna() & adsl["USUBJID"].duplicated(keep=False)
    if dup.any():
        ids = list(dict.fromkeys(adsl.loc[dup, "USUBJID"]))[:3]
        errors.append(f"{fname}: column USUBJID: {adsl.loc[dup, 'USUBJID'].nunique()} subject ids appear more "
                      f"than once (e.g. {', '.join(ids)}), {_rows(dup)}")
    no_arm = adsl[arm_col].isna()
    if no_arm.any():
        errors.append(f"{fname}: column {arm_col}: {int(no_arm.sum())} subjects without an arm, {_rows(no_arm)}")
    if arm_col != "ARM":
        if "ARM" in adsl.columns:
            adsl = adsl.rename(columns={"ARM": "ARM_ORIG"})
        adsl["ARM"] = adsl[arm_col]
    adsl["ARM"] = adsl["ARM"].astype(str)
    if fname.lower().endswith(".csv"):      # XPT, sas7bdat and Parquet declare their types
        adsl = _numeric_covariates(fname, adsl, warnings)
    front = ["USUBJID", "ARM"]
    return adsl[front + [c for c in adsl.columns if c not in front]].reset_index(drop=True)


def _numeric_covariates(fname: str, adsl: pd.DataFrame, warnings: list[str] | None) -> pd.DataFrame:
    """A text column whose values are numbers but for missing codes (SAS's "."), or but for a
    few stray entries among many numbers, is numeric: one "." had turned AGE into text and
    dropped it from Table 1, the filters and the patient vectors without a word (an outside
    review). Missing codes become missing quietly; other entries are named in a load note."""
    for col in adsl.columns:
        series = adsl[col]
        if col in ("USUBJID", "ARM") or not (series.dtype == object or pd.api.types.is_string_dtype(series)):
            continue
        present = series.dropna()
        if present.empty or present.map(lambda v: not isinstance(v, str)).any():
            continue
        values = pd.to_numeric(present, errors="coerce")
        bad = values.isna()
        codes = present[bad].str.upper().isin(MISSING_CODES)
        stray = bad & ~codes
        if not bad.any() or values.notna().sum() < 5 or (
                stray.sum() and (stray.mean() > 0.02 or values.nunique() < 10)):
            continue                 # a text column with a few numbers, or a coded categorical one
        adsl[col] = pd.to_numeric(series.where(~series.index.isin(present.index[bad])), errors="coerce")
        if stray.any() and warnings is not None:
            shown = ", ".join(repr(v) for v in list(dict.fromkeys(present[stray]))[:3])
            warnings.append(f"{fname}: column {col}: {int(stray.sum())} non-numeric values ({shown}) among "
                            f"numbers, {_rows(series.index.isin(present.index[stray]))}; read as missing")
    return adsl


def _as_id(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _validate_bds(fname, frame, known, errors, warnings) -> pd.DataFrame | None:
    if _missing_columns(fname, frame, BDS_REQUIRED, errors):
        return None
    if "ADY" not in frame.columns and "AVISITN" not in frame.columns:
        errors.append(f"{fname}: no time column: a BDS file needs ADY (study day) and/or AVISITN (visit)")
        return None
    frame = frame.copy()
    frame["USUBJID"] = frame["USUBJID"].map(lambda v: v if pd.isna(v) else _as_id(v))
    _check_ids(fname, frame, known, errors)
    for col in ("ADY", "AVISITN"):
        if col in frame.columns:
            frame[col] = _numeric(fname, frame, col, errors, None)
        else:
            frame[col] = np.nan
    # a visit number is a label: pandas.read_sas gives the pilot's visit 0 as 5.4e-79 (IBM float
    # residue), which a CSV written from it keeps and which then was no visit 0 (an outside review)
    frame["AVISITN"] = frame["AVISITN"].round(6) + 0.0                # + 0.0: no visit "-0"
    if "AVISIT" not in frame.columns:
        frame["AVISIT"] = frame["AVISITN"].map(lambda v: np.nan if pd.isna(v) else f"Visit {v:g}")
    if "ABLFL" not in frame.columns:
        frame["ABLFL"] = np.nan
    if frame["ABLFL"].isna().all() and frame["ADY"].isna().all():
        frame = _baseline_from_visit(fname, frame, warnings)
    no_param = frame["PARAMCD"].isna()
    if no_param.any():
        warnings.append(f"{fname}: column PARAMCD: {int(no_param.sum())} rows without a parameter code, "
                        f"{_rows(no_param)}; rows ignored")
    frame["PARAMCD"] = frame["PARAMCD"].astype(str).str.upper()
    frame["AVAL"] = _numeric(fname, frame, "AVAL", errors, warnings)
    keep = ~no_param & frame["AVAL"].notna()
    if "DTYPE" in frame.columns:
        derived = frame["DTYPE"].notna()
        if derived.any():
            kinds = ", ".join(sorted(frame.loc[derived, "DTYPE"].astype(str).unique())[:4])
            warnings.append(f"{fname}: {int(derived.sum())} derived rows (DTYPE {kinds}) left out of "
                            "learning and evaluation")
        keep &= ~derived
    frame = frame[keep]
    if frame.empty:
        errors.append(f"{fname}: no usable records (every row is derived or has no numeric AVAL)")
        return None
    _note_duplicates(fname, frame, warnings)
    return frame.reset_index(drop=True)


def _baseline_from_visit(fname: str, frame: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    """Without ABLFL and ADY nothing says which record is the baseline: every visit was
    follow-up and no patient had a baseline (an outside review, on the pilot without both). The
    visit named "Baseline" (else numbered 0, when later visits are positive) is flagged, and the
    load notes say so; with neither, the notes say the trial has no baselines."""
    label = frame["AVISIT"].fillna("").astype(str).str.strip().str.lower()
    flag = label.str.startswith("baseline")
    how = 'the visit named "Baseline"'
    if not flag.any() and (frame["AVISITN"] > 0).any():
        flag, how = frame["AVISITN"].eq(0), "visit number 0"
    if flag.any():
        frame["ABLFL"] = np.where(flag, "Y", None)
        warnings.append(f"{fname}: no ABLFL and no ADY: baseline records are those of {how} "
                        f"({int(flag.sum())} records)")
    else:
        warnings.append(f"{fname}: no ABLFL, no ADY and no visit named Baseline or numbered 0: no baseline "
                        "can be identified, so the twins have no baseline of these parameters to start from")
    return frame


def _validate_tte(fname, frame, known, errors) -> pd.DataFrame | None:
    if _missing_columns(fname, frame, TTE_REQUIRED, errors):
        return None
    frame = frame.copy()
    frame["USUBJID"] = frame["USUBJID"].map(lambda v: v if pd.isna(v) else _as_id(v))
    frame["PARAMCD"] = frame["PARAMCD"].astype(str).str.upper()
    _check_ids(fname, frame, known, errors)
    frame["AVAL"] = _numeric(fname, frame, "AVAL", errors, None)
    negative = frame["AVAL"] < 0
    if negative.any():
        errors.append(f"{fname}: column AVAL: {int(negative.sum())} negative times, {_rows(negative)}")
    cnsr = pd.to_numeric(frame["CNSR"], errors="coerce")
    bad = ~cnsr.isin([0, 1])
    if bad.any():
        errors.append(f"{fname}: column CNSR: {int(bad.sum())} values that are not 0 (event) or 1 (censored), "
                      f"{_rows(bad)}")
    frame["CNSR"] = cnsr
    dup = frame.duplicated(["USUBJID", "PARAMCD"], keep=False)
    if dup.any():
        errors.append(f"{fname}: {int(dup.sum())} rows repeat a subject and parameter (one row per subject "
                      f"and event type expected), {_rows(dup)}")
    if bad.any() or dup.any() or negative.any() or frame["AVAL"].isna().any():
        return None
    frame["CNSR"] = frame["CNSR"].astype(int)
    return frame.reset_index(drop=True)


def _validate_ae(fname, frame, known, errors, warnings=None, subjects=None) -> pd.DataFrame | None:
    """ADAE: subject ids checked; rows without a preferred term (AEDECOD) left out with a note;
    `ASTDY` numeric, derived from `ASTDT` and the treatment start when absent
    (`services.data.adverse`); `AESEV` upper case, `AESER` "Y"/"N"."""
    if _missing_columns(fname, frame, AE_REQUIRED, errors):
        return None
    frame = frame.copy()
    frame["USUBJID"] = frame["USUBJID"].map(lambda v: v if pd.isna(v) else _as_id(v))
    _check_ids(fname, frame, known, errors)
    no_term = frame["AEDECOD"].isna()
    if no_term.any() and warnings is not None:
        warnings.append(f"{fname}: column AEDECOD: {int(no_term.sum())} records without a preferred term, "
                        f"{_rows(no_term)}; left out")
    frame = frame[~no_term].copy()
    frame["AEDECOD"] = frame["AEDECOD"].astype(str).str.strip()
    if "ASTDY" in frame.columns:
        frame["ASTDY"] = pd.to_numeric(frame["ASTDY"], errors="coerce")
    if "ASTDT" in frame.columns:
        start = frame["TRTSDT"] if "TRTSDT" in frame.columns else None
        if subjects is not None:
            by_subject = next((subjects.set_index("USUBJID")[c] for c in ("TRTSDT", "RFSTDTC")
                               if c in subjects.columns), None)
            if by_subject is not None:
                mapped = frame["USUBJID"].map(by_subject)
                start = mapped if start is None else start.fillna(mapped)
        if start is not None:
            derived = derive_study_day(frame["ASTDT"], start)
            before = frame["ASTDY"] if "ASTDY" in frame.columns else pd.Series(np.nan, index=frame.index)
            filled = before.isna() & derived.notna()
            frame["ASTDY"] = before.fillna(derived)
            if filled.any() and warnings is not None:
                warnings.append(f"{fname}: column ASTDY: {int(filled.sum())} onset days derived from ASTDT and "
                                "the treatment start (TRTSDT)")
    if "AESEV" in frame.columns:
        frame["AESEV"] = frame["AESEV"].where(frame["AESEV"].isna(), frame["AESEV"].astype(str).str.upper())
    if "AESER" in frame.columns:
        ser = frame["AESER"].astype(str).str.upper().str[:1]
        frame["AESER"] = ser.where(ser.isin(["Y", "N"]))
    return frame.reset_index(drop=True)
