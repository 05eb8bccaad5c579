"""Shared fixtures: an isolated TWINARM_HOME per test session, the bundled trials, the CDISC pilot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_PILOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cdiscpilot01"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_shared(path: Path = SHARED_PILOT) -> Path:
    """`path` under ../shared, or: a failure in CI (CI always has ../shared, so a missing folder
    is a broken set-up, not a reason to pass), a skip elsewhere."""
    if not path.exists():
        message = f"{path} is not present (the CDISC pilot of ../shared)"
        if in_ci():
            pytest.fail(f"{message}: CI must have it", pytrace=False)
        pytest.skip(message)
    return path


def pytest_configure(config):
    # Never touch the user's ~/.twinarm from tests; never let a developer's LLM keys leak in.
    home = Path(config.rootpath) / ".pytest_cache" / "twinarm_home"
    os.environ.setdefault("TWINARM_HOME", str(home))
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CHROMA_HOST", "CHROMA_PORT"):
        os.environ.pop(var, None)
    os.environ["ANONYMIZED_TELEMETRY"] = "False"


@pytest.fixture(scope="session")
def demo_trials():
    from services.data.demo import demo_names, load_demo

    names = demo_names()
    assert {"pbc", "epilepsy", "btheb"} <= set(names), names
    return [load_demo(n) for n in names]


@pytest.fixture(scope="session")
def pbc():
    from services.data.demo import demo_names, load_demo

    assert "pbc" in demo_names()
    return load_demo("pbc")


@pytest.fixture(scope="session")
def pbc_events(pbc):
    """The PBC demo as a user with ADSL and ADTTE only (no BDS) would load it."""
    from services.data.loading import load_trial_files
    from services.data.readers import RawFile

    return load_trial_files([RawFile("adsl.csv", pbc.subjects.to_csv(index=False).encode()),
                             RawFile("adtte.csv", pbc.tte.to_csv(index=False).encode())],
                            name="pbc events only")


@pytest.fixture(scope="session")
def pilot():
    from services.data.loading import load_trial

    return load_trial(require_shared(), name="cdiscpilot01")


@pytest.fixture(scope="session")
def pilot_dir() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def pbc_twins(pbc):
    """A small local twin arm of the PBC demo: placebo twins (2 each) of 40 treated patients."""
    from services.generation import get_generator

    treated = pbc.subjects.loc[pbc.subjects.ARM == "D-penicillamine", "USUBJID"][:40]
    return get_generator("local").fit(pbc).generate(pbc.subset(treated), "Placebo", twins_per_patient=2, seed=5)
