"""Results computed once per run and kept in the run's folder (`<name>.json`), so that the
app, the report and `twinarm evaluate` reuse them across pages, sessions and processes.

A stored result is reused only when its key (knowledge base content hash, run id, settings)
equals the one asked for; a run without a folder, or a read-only one, is computed every time
(and said nothing about: caching must never make a result wrong or fail a page)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cached_in_run(run_dir, name: str, key: dict, compute: Callable[[], Any]) -> Any:
    """`compute()`, or the result kept as `<run_dir>/<name>.json` under the same `key`."""
    path = Path(run_dir) / f"{name}.json" if run_dir else None
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
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"key": key, "result": result}, indent=1), encoding="utf-8")
            tmp.replace(path)                      # a reader never sees half a file
        except (OSError, TypeError, ValueError):
            pass                                   # not kept: computed, still correct
    return result


def is_cached(run_dir, name: str, key: dict) -> bool:
    """The run's folder holds `name` under `key`."""
    path = Path(run_dir) / f"{name}.json" if run_dir else None
    if path is None or not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError):
        return False
