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
- `ae`: `USUBJID`, `SRCSUBJID`, `AEDECOD` and, where the knowledge base has them, `AEBODSYS`,
  `ASTDY`, `AESEV`, `AESER` when the knowledge base has adverse events and the generator
  made them, else None (runs written before AE twins load with None).
- `manifest`: a JSON-able dict (see `MANIFEST_KEYS`).

`write_run(run, out_dir)` writes the contract's folder (adsl, one file per BDS dataset, adtte,
adae, manifest.json, plus a `trial.toml` with title, units and labels so the folder loads with
labels); `read_run(dir)` reads it back; `run.as_trial()` loads the twins through
`services.data.loading.load_trial_files`, exactly as the app loads any trial.

Saved runs: `services.generation.saved_runs`; building the frames:
`services.generation.assembly`.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from services.data.loading import load_trial_files
from services.data.readers import RawFile
from services.data.trial import Trial
from services.jsonable import jsonable

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
    ae: pd.DataFrame | None = None

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
        if self.ae is not None:
            out.append(RawFile(f"adae.{fmt}", _to_bytes(self.ae, fmt)))
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
    """Write the contract's folder: adsl, one file per BDS dataset, adtte, adae, trial.toml,
    manifest.json. Returns the folder.

    Every byte is built before the folder is touched (a run that cannot be written leaves the old
    one whole). Over a run folder, the old manifest then goes first and the new one is written
    last, so an interrupted write leaves a folder without a manifest, which nothing reads as a
    run (an outside review stopped `generate` and found a new run's data beside an old run's
    manifest); each file is written under a temporary name and renamed into place; the old run's
    datasets and any dataset of the new run's names in the other format (a CSV run over a
    Parquet one) are removed. Only files named exactly `<dataset>.<csv|parquet>` are: a user's
    own files stay."""
    files = run.files(fmt) + [RawFile("manifest.json", (json.dumps(jsonable(run.manifest), indent=1,
                                                                    ensure_ascii=False) + "\n").encode("utf-8"))]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = [Path(raw.name) for raw in files if raw.name.split(".")[-1] in FORMATS]
    stale = {f.name for f in run_data_files(out)} | {f"{d.stem}.{other}" for d in data for other in FORMATS}
    (out / "manifest.json").unlink(missing_ok=True)
    for raw in files[:-1]:
        _replace(out / raw.name, raw.data)
    for name in stale - {raw.name for raw in files}:
        if (out / name).is_file():
            (out / name).unlink()
    _replace(out / "manifest.json", files[-1].data)
    return out


def _replace(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder (never half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.writing")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_data_files(folder: Path, manifest: dict | None = None) -> list[Path]:
    """The run's own data files in `folder`, by the manifest's dataset list (`manifest`, else
    the folder's manifest.json): adsl, adtte, adae and each listed dataset, named exactly
    `<name>.csv` or `<name>.parquet` (a user's adsl.old.csv was read as the twins' adsl). A
    manifest without the list (written before it existed) takes every such data file."""
    folder = Path(folder)
    if manifest is None:
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
    listed = manifest.get("datasets")
    wanted = None if listed is None else {"adsl", "adtte", "adae"} | {str(n).lower() for n in listed}
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                  and f.suffix.lower().lstrip(".") in FORMATS and "." not in f.stem
                  and (wanted is None or f.stem.lower() in wanted))


def read_run(path: str | os.PathLike) -> TwinRun:
    """Read a folder written by `write_run` (CSV or Parquet) back into a `TwinRun`."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{folder}: no manifest.json (not a twin run folder)")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    # the run's own datasets only: a summary.csv a user kept beside them was read as a BDS
    # dataset and exported with the twins (an outside review); a manifest without the list
    # (written before it existed) reads every data file
    tables: dict[str, pd.DataFrame] = {}
    for file in run_data_files(folder, manifest):
        stem = file.stem.lower()
        if stem in tables:
            raise ValueError(f"{folder}: {stem} is there as CSV and as Parquet: keep the run's own format only")
        tables[stem] = _read_table(file, file.suffix.lower().lstrip("."))
    if "adsl" not in tables:
        xpt = " (SAS transport files are an export for other tools: read the run folder `generate` wrote)" \
            if any(f.suffix.lower() == ".xpt" for f in folder.iterdir()) else ""
        raise FileNotFoundError(f"{folder}: no adsl.csv / adsl.parquet{xpt}")
    adsl = tables.pop("adsl")
    adsl["TWINIDX"] = pd.to_numeric(adsl["TWINIDX"]).astype(int)
    tte = tables.pop("adtte", None)
    if tte is not None:
        tte["CNSR"] = pd.to_numeric(tte["CNSR"]).astype(int)
        tte["AVAL"] = pd.to_numeric(tte["AVAL"]).astype(float)
    ae = tables.pop("adae", None)
    if ae is not None and "ASTDY" in ae:
        ae["ASTDY"] = pd.to_numeric(ae["ASTDY"]).astype(float)
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
    return TwinRun(adsl=adsl, bds=bds, tte=tte, manifest=manifest, ae=ae)


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
