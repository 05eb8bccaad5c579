"""Every page of the app runs without exception, on the default demo, on every bundled trial
and on the CDISC pilot (Streamlit AppTest: the real script runner, no browser)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = ["pages/overview.py", "pages/cohort.py", "pages/similar.py", "pages/whatif.py",
         "pages/compare.py", "pages/validate.py", "pages/export.py"]


def test_every_page_is_in_the_navigation():
    text = (ROOT / "app.py").read_text()
    for page in PAGES:
        assert (ROOT / page).exists(), page
        assert f'"{page}"' in text, page


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_runs_on_the_default_demo(page):
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception
    at.switch_page(page).run()
    assert not at.exception, f"{page}: {at.exception}"


@pytest.mark.parametrize("name", ["epilepsy", "btheb"])
def test_switching_trials_in_the_sidebar(name):
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.sidebar.selectbox(key="demo_choice").set_value(name).run()
    assert not at.exception
    for page in ("pages/overview.py", "pages/cohort.py", "pages/similar.py"):
        at.switch_page(page).run()
        assert not at.exception, f"{name} {page}: {at.exception}"
    assert at.session_state["trial"].name == name


def test_pages_on_the_cdisc_pilot(pilot):
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.session_state["trial"] = pilot
    at.session_state["trial_source"] = "upload"
    for page in ("pages/cohort.py", "pages/similar.py", "pages/overview.py"):
        at.switch_page(page).run()
        assert not at.exception, f"pilot {page}: {at.exception}"
    assert {m.label: m.value for m in at.metric}["Subjects"] == "254"
