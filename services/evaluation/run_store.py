"""Results computed once per run and kept in the run's folder (`<name>.json`), so that the
app, the report and `twinarm evaluate` reuse them across pages, sessions and processes.

A stored result is reused only when its key (knowledge base content hash, run id, settings,
and the digest of the folder's data files) equals the one asked for; a run without a folder, or
a read-only one, is computed every time (and said nothing about: caching must never make a
result wrong or fail a page). The data digest is added here, once for every result: twin files
edited after generation, or a folder rewritten under the same run id, got the old run's metrics
(an outside review)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from services.generation.run import run_data_files


def data_digest(run_dir) -> str:
    """SHA-256 of what a run folder's results are computed from: the datasets `read_run` reads
    (`run_data_files`) and the manifest; "" without a folder. Files are hashed in chunks; a
    digest is reused while no file's inode, size, mtime or ctime changed (a copy that keeps
    mtimes changes ctime)."""
    folder = Path(run_dir) if run_dir else None
    if folder is None or not (folder / "manifest.json").is_file():
        return ""
    files = sorted([*run_data_files(folder), folder / "manifest.json"])
    stamp = tuple((f.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                  for f in files for st in [f.stat()])
    return _digest(str(folder), stamp)


@lru_cache(maxsize=64)
def _digest(folder: str, stamp: tuple) -> str:
    """The digest of the files `stamp` names: read again only when one of them changes."""
    h = hashlib.sha256()
    for name, *_ in stamp:
        h.update(name.encode() + b"\0")
        with open(Path(folder) / name, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def cached_in_run(run_dir, name: str, key: dict, compute: Callable[[], Any]) -> Any:
    """`compute()`, or the result kept as `<run_dir>/<name>.json` under the same `key` and the
    same data files."""
    path = Path(run_dir) / f"{name}.json" if run_dir else None
    if path is not None:
        try:
            key = {**key, "data": data_digest(run_dir)}
        except OSError:
            path = None                            # unreadable: computed, not kept
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("key") == key:
                return stored["result"]
        except (OSError, ValueError, KeyError):
            pass
    result = compute()
    if path is not None:
        try:
            if data_digest(run_dir) != key["data"]:
                return result                      # the files changed meanwhile: not kept under either
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"key": key, "result": result}, indent=1), encoding="utf-8")
            tmp.replace(path)                      # a reader never sees half a file
        except (OSError, TypeError, ValueError):
            pass                                   # not kept: computed, still correct
    return result
