"""Twin-trial output: the frames of a generation run, its folder on disk, and saved runs.

A `TwinRun` holds what section 2 of the contract (`../shared/CONTRACT.md`) asks for:

- `adsl`: one row per twin: `USUBJID` (twin id), `SRCSUBJID` (source subject), `ARM` (target
  arm), `TWINIDX` (1..K), then the source's baseline covariates (ADSL columns of the source
  that are baseline covariates of the knowledge base or of the sources).
  **Twin id**: `<SRCSUBJID>-T<k>` with k = TWINIDX, not zero-padded (`01-701-1015-T1`,
  `01-701-1015-T12`); rows are ordered by source (in the sources' ADSL order) then TWINIDX.
- `bds`: one frame per BDS dataset of the knowledge base, same name: `USUBJID`, `SRCSUBJID`,
  `PARAMCD`, `PARAM`, `AVAL`, `ADY`, `AVISITN`, `AVISIT`, `ABLFL`. The source's baseline (the
  contract's baseline value: the mean of its `ABLFL="Y"` records, else its last record with
  `ADY <= 1`) is copied as one record per parameter with `ABLFL="Y"`; generated records (one
  per scheduled visit) have an empty `ABLFL` and `ADY` = the visit's nominal day.
- `tte`: `USUBJID`, `SRCSUBJID`, `PARAMCD`, `PARAM`, `AVAL` (days), `CNSR` when the knowledge
  base has time-to-event data, else None.
- `manifest`: a JSON-able dict (see `MANIFEST_KEYS`).

`write_run(run, out_dir)` writes the contract's folder (adsl, one file per BDS dataset, adtte,
manifest.json, plus a `trial.toml` with title, units and labels so the folder loads with
labels); `read_run(dir)` reads it back; `run.as_trial()` loads the twins through
`services.data.trial.load_trial_files`, exactly as the app loads any trial.

Runs saved by the app live under `$TWINARM_HOME/runs/<run_id>/` (`runs_root()`, `save_run`,
`list_runs`, `load_run`); a run id is `YYYYMMDD-HHMMSS-<6 hex>` (`new_run_id`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from services.config import home_subdir
from services.data.readers import RawFile
from services.data.trial import Trial, load_trial_files

ADSL_FRONT = ["USUBJID", "SRCSUBJID", "ARM", "TWINIDX"]
BDS_COLUMNS = ["USUBJID", "SRCSUBJID", "PARAMCD", "PARAM", "AVAL", "ADY", "AVISITN", "AVISIT", "ABLFL"]
TTE_COLUMNS = ["USUBJID", "SRCSUBJID", "PARAMCD", "PARAM", "AVAL", "CNSR"]
FORMATS = ("csv", "parquet")

# Keys every manifest carries (values may be None/empty when they do not apply).
MANIFEST_KEYS = (
    "run_id", "created", "tool_version", "generator", "settings", "model", "prompt_version",
    "seed", "target_arm", "twins_per_patient", "knowledge_base", "sources", "retriever",
    "neighbours", "donors", "tte_donors", "counts", "failures", "timings", "cancelled", "notes", "trial",
)


def twin_id(source: str, index: int) -> str:
    """The twin id of twin `index` (1-based) of `source`: `<source>-T<index>`."""
    return f"{source}-T{int(index)}"


def twin_ids(sources, indexes) -> np.ndarray:
    """Vectorised `twin_id` for many (source, index) pairs (object array)."""
    sources = np.asarray(sources, dtype=object)
    indexes = np.asarray(indexes)
    if len(sources) == 0:
        return np.array([], dtype=object)
    # build each distinct id once, then gather
    codes, labels = pd.factorize(sources)
    idx = indexes.astype(np.int64)
    key = codes.astype(np.int64) * (int(idx.max()) + 1) + idx
    inv, uniq = pd.factorize(key)
    width = int(idx.max()) + 1
    ids = np.array([twin_id(labels[u // width], u % width) for u in uniq], dtype=object)
    return ids[inv]


@dataclass
class TwinRun:
    """The output of one generation run (see the module docstring for the columns)."""

    adsl: pd.DataFrame
    bds: dict[str, pd.DataFrame]
    tte: pd.DataFrame | None
    manifest: dict = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id", ""))

    @property
    def target_arm(self) -> str:
        return str(self.manifest.get("target_arm", ""))

    @property
    def n_twins(self) -> int:
        return len(self.adsl)

    @property
    def failures(self) -> list[dict]:
        return list(self.manifest.get("failures", []))

    def values(self) -> pd.DataFrame:
        """Generated post-baseline records of every dataset in one frame (no baseline copies)."""
        frames = [df[~df["ABLFL"].fillna("").astype(str).str.upper().eq("Y")].assign(DATASET=name)
                  for name, df in self.bds.items()]
        if not frames:
            return pd.DataFrame(columns=BDS_COLUMNS + ["DATASET"])
        return pd.concat(frames, ignore_index=True)

    def files(self, fmt: str = "csv") -> list[RawFile]:
        """The run as in-memory files of the contract's folder (without manifest.json)."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown format '{fmt}': use one of {', '.join(FORMATS)}")
        out = [RawFile(f"adsl.{fmt}", _to_bytes(self.adsl, fmt))]
        for name, frame in self.bds.items():
            out.append(RawFile(f"{name}.{fmt}", _to_bytes(frame, fmt)))
        if self.tte is not None:
            out.append(RawFile(f"adtte.{fmt}", _to_bytes(self.tte, fmt)))
        out.append(RawFile("trial.toml", _trial_toml(self.manifest).encode("utf-8")))
        return out

    def as_trial(self, name: str | None = None) -> Trial:
        """The twins as a `Trial`, loaded through the same code path as any uploaded trial."""
        name = name or f"twins {self.run_id}".strip()
        return load_trial_files(self.files("csv"), name=name)

    def summary(self) -> dict:
        m = self.manifest
        return {
            "run_id": self.run_id, "created": m.get("created"), "generator": m.get("generator"),
            "target_arm": self.target_arm, "twins": self.n_twins,
            "sources": int(self.adsl["SRCSUBJID"].nunique()) if len(self.adsl) else 0,
            "twins_per_patient": m.get("twins_per_patient"), "seed": m.get("seed"),
            "failures": len(m.get("failures", [])), "cancelled": bool(m.get("cancelled", False)),
            "knowledge_base": (m.get("knowledge_base") or {}).get("name"),
        }


# ------------------------------------------------------------------------------------------
# writing and reading the folder


def write_run(run: TwinRun, out_dir: str | os.PathLike, fmt: str = "csv") -> Path:
    """Write the contract's folder: adsl, one file per BDS dataset, adtte, trial.toml,
    manifest.json. Existing files of the same names are replaced. Returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for raw in run.files(fmt):
        (out / raw.name).write_bytes(raw.data)
    (out / "manifest.json").write_text(json.dumps(_jsonable(run.manifest), indent=1,
                                                  ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def read_run(path: str | os.PathLike) -> TwinRun:
    """Read a folder written by `write_run` (CSV or Parquet) back into a `TwinRun`."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{folder}: no manifest.json (not a twin run folder)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    tables: dict[str, pd.DataFrame] = {}
    for file in sorted(folder.iterdir()):
        ext = file.suffix.lower().lstrip(".")
        if file.is_file() and ext in FORMATS and not file.name.startswith("."):
            tables[file.name.split(".")[0].lower()] = _read_table(file, ext)
    if "adsl" not in tables:
        raise FileNotFoundError(f"{folder}: no adsl.csv / adsl.parquet")
    adsl = tables.pop("adsl")
    adsl["TWINIDX"] = pd.to_numeric(adsl["TWINIDX"]).astype(int)
    tte = tables.pop("adtte", None)
    if tte is not None:
        tte["CNSR"] = pd.to_numeric(tte["CNSR"]).astype(int)
        tte["AVAL"] = pd.to_numeric(tte["AVAL"]).astype(float)
    order = manifest.get("datasets") or []
    names = [n for n in order if n in tables] + [n for n in tables if n not in order]
    bds = {}
    for name in names:
        frame = tables[name]
        for col in ("AVAL", "ADY", "AVISITN"):
            if col in frame:
                frame[col] = pd.to_numeric(frame[col]).astype(float)
        frame["ABLFL"] = frame.get("ABLFL", pd.Series("", index=frame.index)).fillna("")
        bds[name] = frame
    return TwinRun(adsl=adsl, bds=bds, tte=tte, manifest=manifest)


def _read_table(file: Path, ext: str) -> pd.DataFrame:
    if ext == "parquet":
        frame = pd.read_parquet(file)
    else:
        frame = pd.read_csv(file, dtype={"USUBJID": str, "SRCSUBJID": str, "ABLFL": str},
                            keep_default_na=False, na_values=[""])
    for col in ("USUBJID", "SRCSUBJID"):
        if col in frame:
            frame[col] = frame[col].astype(str)
    return frame


def _to_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "parquet":
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        return buf.getvalue()
    return frame.to_csv(index=False, float_format="%.10g", lineterminator="\n").encode("utf-8")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value)) if np.isfinite(value) else '""'
    return json.dumps(str(value), ensure_ascii=False)  # JSON string escapes are valid TOML


def _trial_toml(manifest: dict) -> str:
    """trial.toml of the twin folder: title, units, labels, endpoint of the knowledge base."""
    meta = manifest.get("trial") or {}
    kb = (manifest.get("knowledge_base") or {}).get("name", "")
    title = f"Twins under {manifest.get('target_arm', '')}" + (f" (knowledge base: {kb})" if kb else "")
    lines = [f"title = {_toml_value(title)}",
             f"description = {_toml_value('Synthetic patients generated by TwinArm, run ' + str(manifest.get('run_id', '')))}"]
    if meta.get("indication"):
        lines.append(f"indication = {_toml_value(meta['indication'])}")
    if manifest.get("target_arm"):
        lines.append(f"control_arm = {_toml_value(manifest['target_arm'])}")
    for table in ("units", "labels", "endpoint"):
        values = {k: v for k, v in (meta.get(table) or {}).items() if v is not None and v != ""}
        if values:
            lines += ["", f"[{table}]"] + [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


# ------------------------------------------------------------------------------------------
# saved runs


def runs_root() -> Path:
    """Where the app saves generation runs: `$TWINARM_HOME/runs` (created on demand)."""
    return home_subdir("runs")


def new_run_id(*parts, when: float | None = None) -> str:
    """`YYYYMMDD-HHMMSS-<6 hex>`: the UTC time, then a short hash of `parts` and the time
    (so two runs started in the same second with different inputs get different ids)."""
    when = time.time() if when is None else when
    stamp = datetime.fromtimestamp(when, tz=UTC).strftime("%Y%m%d-%H%M%S")
    digest = hashlib.sha256(("|".join(str(p) for p in parts) + f"|{when!r}|{os.getpid()}").encode())
    return f"{stamp}-{digest.hexdigest()[:6]}"


def save_run(run: TwinRun, fmt: str = "csv", root: str | os.PathLike | None = None) -> Path:
    """Write the run under `<root or runs_root()>/<run_id>/` and return that folder."""
    if not run.run_id:
        run.manifest["run_id"] = new_run_id(run.manifest.get("generator"), run.manifest.get("seed"))
    base = Path(root) if root is not None else runs_root()
    return write_run(run, base / run.run_id, fmt=fmt)


def load_run(run_id: str, root: str | os.PathLike | None = None) -> TwinRun:
    base = Path(root) if root is not None else runs_root()
    return read_run(base / run_id)


def list_runs(root: str | os.PathLike | None = None) -> list[dict]:
    """Saved runs, newest first: their manifest summaries plus `path`. Folders without a
    readable manifest are skipped."""
    base = Path(root) if root is not None else runs_root()
    if not base.is_dir():
        return []
    out = []
    for folder in base.iterdir():
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            continue
        try:
            m = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        counts = m.get("counts") or {}
        out.append({
            "run_id": m.get("run_id", folder.name), "created": m.get("created"),
            "generator": m.get("generator"), "target_arm": m.get("target_arm"),
            "twins": counts.get("twins"), "sources": counts.get("sources"),
            "twins_per_patient": m.get("twins_per_patient"), "seed": m.get("seed"),
            "knowledge_base": (m.get("knowledge_base") or {}).get("name"),
            "failures": len(m.get("failures") or []), "cancelled": bool(m.get("cancelled")),
            "path": str(folder),
        })
    out.sort(key=lambda r: (str(r.get("created") or ""), str(r["run_id"])), reverse=True)
    return out


# ------------------------------------------------------------------------------------------
# building the frames (used by every generator)


def utc_now() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")


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
