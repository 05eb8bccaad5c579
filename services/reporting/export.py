"""Export a twin arm as ADaM-lite files (CSV, SAS XPORT v5 with variable labels, Parquet).

XPORT v5 (what regulators accept) limits variable names to 8 characters and labels to 40:
longer names (e.g. `SRCSUBJID`) are shortened uniquely (`SRCSUBJ`) and the original name is kept
in the variable label and in `manifest.json` under `export.xpt_renamed`.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from services.data.readers import RawFile, write_table

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


def export_files(run, fmt: str = "csv", labels: dict[str, str] | None = None) -> list[RawFile]:
    """The twin arm's files in one format, plus trial.toml and manifest.json."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format '{fmt}': use one of {', '.join(EXPORT_FORMATS)}")
    manifest = dict(run.manifest)
    if fmt in ("csv", "parquet"):
        files = run.files(fmt)
    else:
        labels = {**(labels or {})}
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
    files.append(RawFile("manifest.json", (json.dumps(manifest, indent=1, default=str) + "\n").encode()))
    return files


def export_zip(run, fmt: str = "csv", labels: dict[str, str] | None = None) -> bytes:
    """A zip of the twin arm (one folder named after the run) for download."""
    folder = f"twinarm-{run.run_id or 'run'}"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for raw in export_files(run, fmt, labels):
            zf.writestr(f"{folder}/{raw.name}", raw.data)
    return buf.getvalue()


def export_folder(run, out_dir, fmt: str = "csv", labels: dict[str, str] | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for raw in export_files(run, fmt, labels):
        (out / raw.name).write_bytes(raw.data)
    return out
