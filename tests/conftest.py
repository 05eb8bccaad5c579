"""Shared fixtures: an isolated TWINARM_HOME per test session, the bundled trials, the CDISC pilot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_PILOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cdiscpilot01"


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
    if not names:
        pytest.skip("no bundled demo trials")
    return [load_demo(n) for n in names]


@pytest.fixture(scope="session")
def pbc():
    from services.data.demo import demo_names, load_demo

    if "pbc" not in demo_names():
        pytest.skip("bundled pbc demo not present")
    return load_demo("pbc")


@pytest.fixture(scope="session")
def pilot():
    from services.data.trial import load_trial

    if not SHARED_PILOT.exists():
        pytest.skip("../shared/data/cdiscpilot01 not present")
    return load_trial(SHARED_PILOT, name="cdiscpilot01")


@pytest.fixture(scope="session")
def pbc_twins(pbc):
    """A small local twin arm of the PBC demo: placebo twins (2 each) of 40 treated patients."""
    from services.generation import get_generator

    treated = pbc.subjects.loc[pbc.subjects.ARM == "D-penicillamine", "USUBJID"][:40]
    return get_generator("local").fit(pbc).generate(pbc.subset(treated), "Placebo", twins_per_patient=2, seed=5)
