"""Export a twin arm as ADaM-lite files (CSV, SAS XPORT v5 with variable labels, Parquet).

Every exported dataset starts with STUDYID: the knowledge base's STUDYID (ADSL) when it has
one, else the knowledge base's name. Given the knowledge base, generated values (AVAL of the
BDS datasets and ADTTE) are rounded to the source's precision per parameter: the most decimals
any AVAL of that PARAMCD has in the knowledge base, capped at `MAX_DECIMALS`.

XPORT v5 (what regulators accept) limits variable names to 8 characters and labels to 40:
longer names (e.g. `SRCSUBJID`) are shortened uniquely (`SRCSUBJ`) and the original name is kept
in the variable label and in `manifest.json` under `export.xpt_renamed`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from services.data.readers import RawFile, write_table

MAX_DECIMALS = 4

EXPORT_FORMATS = ("csv", "xpt", "parquet")

# CDISC-style labels of the contract's twin columns (covariates take the trial's own labels).
VARIABLE_LABELS = {
    "STUDYID": "Study Identifier",
    "USUBJID": "Unique Subject Identifier (twin)",
    "SRCSUBJID": "Source Subject Identifier",
    "ARM": "Description of Planned Arm (target)",
    "TWINIDX": "Twin Index within Source Subject",
    "PARAMCD": "Parameter Code",
    "PARAM": "Parameter",
    "AVAL": "Analysis Value",
    "ADY": "Analysis Relative Day",
    "AVISITN": "Analysis Visit (N)",
    "AVISIT": "Analysis Visit",
    "ABLFL": "Baseline Record Flag",
    "CNSR": "Censor (0 event, 1 censored)",
    "AEDECOD": "Dictionary-Derived Term",
    "AEBODSYS": "Body System or Organ Class",
    "ASTDY": "Analysis Start Relative Day",
    "AESEV": "Severity/Intensity",
    "AESER": "Serious Event",
    "AGE": "Age",
    "SEX": "Sex",
}


# Short names of the contract's long columns (others are cut to 8 characters).
XPT_SHORT_NAMES = {"SRCSUBJID": "SRCSUBJ"}


def xpt_names(columns) -> dict[str, str]:
    """Map column names to unique XPORT v5 names (<= 8 characters, upper case)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for col in columns:
        name = XPT_SHORT_NAMES.get(str(col).upper(), str(col).upper()[:8])
        stem, n = name, 1
        while name in used:
            suffix = str(n)
            name = stem[: 8 - len(suffix)] + suffix
            n += 1
        used.add(name)
        out[str(col)] = name
    return out


def _xpt_bytes(frame: pd.DataFrame, dataset: str, labels: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    names = xpt_names(frame.columns)
    renamed = {old: new for old, new in names.items() if old != new}
    out = frame.rename(columns=names)
    col_labels = {}
    for old, new in names.items():
        label = labels.get(old) or VARIABLE_LABELS.get(old) or old
        if old != new:
            label = f"{label} ({old})"
        col_labels[new] = label[:40]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_table(out, Path(tmp) / f"{dataset}.xpt", fmt="xpt", labels=col_labels)
        return path.read_bytes(), renamed


def _decimals(value: float) -> int:
    text = np.format_float_positional(float(value), trim="-")
    return len(text.split(".")[1]) if "." in text else 0


def source_precision(knowledge_base) -> dict[str, int]:
    """PARAMCD -> the most decimals of any AVAL of that parameter in the knowledge base (BDS and
    ADTTE records, and the values as analysed: a visit's or baseline's mean over several time
    points, which twins copy or continue, has more than its integer readings; rounding a
    baseline of 78.67 to 79 exported another value than the app analysed), capped at MAX_DECIMALS."""
    frames = list(knowledge_base.bds.values()) + ([knowledge_base.tte] if knowledge_base.tte is not None else [])
    frames += [knowledge_base.baseline_long, knowledge_base.visit_values]
    out: dict[str, int] = {}
    for frame in frames:
        for paramcd, values in frame.groupby("PARAMCD", sort=False)["AVAL"]:
            finite = pd.to_numeric(values, errors="coerce").dropna().unique()
            finite = finite[np.isfinite(finite)]
            digits = 0
            for v in finite:
                digits = max(digits, _decimals(v))
                if digits >= MAX_DECIMALS:
                    break
            out[str(paramcd)] = max(out.get(str(paramcd), 0), min(digits, MAX_DECIMALS))
    return out


def study_id(knowledge_base=None, manifest: dict | None = None) -> str:
    """The knowledge base's STUDYID (ADSL) when present, else its name (from the run's manifest
    when the knowledge base is not given)."""
    if knowledge_base is not None:
        subjects = knowledge_base.subjects
        if "STUDYID" in subjects.columns:
            ids = [str(v).strip() for v in subjects["STUDYID"].dropna() if str(v).strip()]
            if ids:
                return ids[0]
        return str(knowledge_base.name)
    return str(((manifest or {}).get("knowledge_base") or {}).get("name") or "")


def _with_studyid(frame: pd.DataFrame, studyid: str) -> pd.DataFrame:
    out = frame.drop(columns=[c for c in frame.columns if str(c).upper() == "STUDYID"])
    out.insert(0, "STUDYID", studyid)
    return out


def _rounded(frame: pd.DataFrame, precision: dict[str, int]) -> pd.DataFrame:
    if not precision or "AVAL" not in frame.columns or "PARAMCD" not in frame.columns:
        return frame
    out = frame.copy()
    digits = out["PARAMCD"].astype(str).map(precision)
    for d in digits.dropna().unique():
        rows = digits == d
        out.loc[rows, "AVAL"] = out.loc[rows, "AVAL"].astype(float).round(int(d))
    return out


def prepare_run(run, knowledge_base=None):
    """The run as exported: STUDYID first in every dataset and, with the knowledge base, AVAL
    rounded to the source's precision per PARAMCD (the run itself is left unchanged)."""
    sid = study_id(knowledge_base, run.manifest)
    precision = source_precision(knowledge_base) if knowledge_base is not None else {}
    tte = None if run.tte is None else _with_studyid(_rounded(run.tte, precision), sid)
    ae = None if getattr(run, "ae", None) is None else _with_studyid(run.ae, sid)
    return dataclasses.replace(run, adsl=_with_studyid(run.adsl, sid), tte=tte, ae=ae,
                               bds={k: _with_studyid(_rounded(v, precision), sid) for k, v in run.bds.items()})


def export_files(run, fmt: str = "csv", labels: dict[str, str] | None = None,
                 knowledge_base=None) -> list[RawFile]:
    """The twin arm's files in one format, plus trial.toml and manifest.json. With the
    knowledge base the run came from, values take the source's precision (see `prepare_run`)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format '{fmt}': use one of {', '.join(EXPORT_FORMATS)}")
    manifest = dict(run.manifest)
    run = prepare_run(run, knowledge_base)
    if fmt in ("csv", "parquet"):
        files = run.files(fmt)
    else:
        # the knowledge base's own variable labels unless given (the CLI gave none: AGEGR1 was
        # labelled "AGEGR1", not "Pooled Age Group 1", where the app's export had it right)
        kb_labels = dict(getattr(knowledge_base, "labels", None) or {})
        labels = {**kb_labels, **(labels or {})}
        files, renames = [], {}
        tables = [("adsl", run.adsl), *run.bds.items()] + ([("adtte", run.tte)] if run.tte is not None else [])
        tables += [("adae", run.ae)] if getattr(run, "ae", None) is not None else []
        for name, frame in tables:
            data, renamed = _xpt_bytes(frame, name, labels)
            files.append(RawFile(f"{name}.xpt", data))
            if renamed:
                renames[name] = renamed
        files += [f for f in run.files("csv") if f.name == "trial.toml"]
        manifest["export"] = {"format": "xpt", "xpt_version": 5, "xpt_renamed": renames}
    manifest.setdefault("export", {"format": fmt})
    manifest["export"] = {**manifest["export"], "studyid": study_id(knowledge_base, manifest),
                           "decimals": source_precision(knowledge_base) if knowledge_base is not None else None}
    files.append(RawFile("manifest.json", (json.dumps(manifest, indent=1, default=str) + "\n").encode()))
    return files


def export_zip(run, fmt: str = "csv", labels: dict[str, str] | None = None, knowledge_base=None) -> bytes:
    """A zip of the twin arm (one folder named after the run) for download."""
    folder = f"twinarm-{run.run_id or 'run'}"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for raw in export_files(run, fmt, labels, knowledge_base):
            zf.writestr(f"{folder}/{raw.name}", raw.data)
    return buf.getvalue()


def export_folder(run, out_dir, fmt: str = "csv", labels: dict[str, str] | None = None,
                  knowledge_base=None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for raw in export_files(run, fmt, labels, knowledge_base):
        (out / raw.name).write_bytes(raw.data)
    return out
