"""Bundled demo trials and resolution of `PATH_OR_DEMO` arguments.

The demo trials are small ADaM-lite folders under `services/data/demo_data/` built from public R
datasets by `scripts/build_demo_data.py` (see each folder's PROVENANCE.md).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from services.data.loading import load_trial
from services.data.trial import Trial, TrialValidationError

DEMO_ROOT = Path(__file__).parent / "demo_data"
DEFAULT_DEMO = "pbc"


def demo_names() -> list[str]:
    """Names of the bundled trials, the default demo first."""
    if not DEMO_ROOT.is_dir():
        return []
    names = sorted(p.name for p in DEMO_ROOT.iterdir() if (p / "trial.toml").exists())
    if DEFAULT_DEMO in names:
        names.remove(DEFAULT_DEMO)
        names.insert(0, DEFAULT_DEMO)
    return names


@lru_cache(maxsize=16)
def load_demo(name: str) -> Trial:
    """Load a bundled trial (cached per process: demo files never change at run time)."""
    if name not in demo_names():
        raise TrialValidationError([f"unknown demo trial '{name}'; bundled: {', '.join(demo_names())}"])
    return load_trial(DEMO_ROOT / name, name=name)


def resolve_trial(path_or_demo: str) -> Trial:
    """A folder path, or the name of a bundled demo trial."""
    path = Path(path_or_demo).expanduser()
    if path.is_dir():
        return load_trial(path)
    if path_or_demo in demo_names():
        return load_demo(path_or_demo)
    raise TrialValidationError([
        f"'{path_or_demo}' is neither a folder nor a bundled trial ({', '.join(demo_names()) or 'none bundled'})"
    ])
