"""One way to turn results into JSON-able values (manifests, `evaluate --json`, the report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def jsonable(value, arrays: str = "list"):
    """`value` with numpy scalars made Python numbers, non-finite floats None, paths text and
    mapping keys text. `arrays="list"` turns numpy arrays into lists; `"drop"` replaces them
    by None (evaluation results carry raw arrays for plots that do not belong in JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, arrays) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), arrays) if arrays == "list" else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value
