"""Where TwinArm keeps its state (contract section 4): `TWINARM_HOME`, default `~/.twinarm`."""

from __future__ import annotations

import os
from pathlib import Path


def twinarm_home() -> Path:
    """The folder for the Chroma store, caches and generation runs (created on demand)."""
    home = Path(os.environ.get("TWINARM_HOME") or Path.home() / ".twinarm").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def home_subdir(name: str) -> Path:
    path = twinarm_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
