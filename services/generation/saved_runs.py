"""Runs saved by the app under `$TWINARM_HOME/runs/<run_id>/`, and run ids.

A run id is `YYYYMMDD-HHMMSS-<6 hex>` (`new_run_id`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from services.config import home_subdir
from services.generation.run import TwinRun, read_run, write_run


def utc_now() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")


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
        if folder.name.startswith(".") or not manifest.is_file():     # hidden: not a saved run
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
