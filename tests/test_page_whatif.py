"""What-if page (Streamlit AppTest: the real script runner, no browser): generate a local twin
arm on the PBC demo, see it saved and current, reopen a saved run; the LLM settings without an
endpoint; an LLM twin arm against the scripted OpenAI-compatible server."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

sys.path.insert(0, str(Path(__file__).parent))

from llm_server import ScriptedOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


def open_page(cohort: list[str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception
    if cohort is not None:
        at.session_state["cohort_spec"] = None
        at.session_state["cohort_ids"] = cohort
    at.switch_page("pages/whatif.py").run()
    assert not at.exception, at.exception
    return at


def wait_for_run(at: AppTest, seconds: float = 120.0):
    """Rerun the page (as the polling fragment does in a browser) until the run is current."""
    deadline = time.time() + seconds
    while "twin_run" not in at.session_state and time.time() < deadline:
        time.sleep(0.5)
        at.run()
        assert not at.exception, at.exception
    try:
        return at.session_state["twin_run"]
    except KeyError:
        return None


def test_generate_a_local_twin_arm_on_the_cohort(pbc):
    cohort = list(pbc.subjects.loc[pbc.subjects["ARM"] == "D-penicillamine", "USUBJID"])[:12]
    at = open_page(cohort)
    assert at.selectbox(key=f"whatif_target_{pbc.content_hash[:12]}").value == "Placebo"
    source = at.selectbox(key=f"whatif_source_{pbc.content_hash[:12]}")
    assert "12 patients" in source.format_func(source.value)
    button = at.button(key="whatif_generate")
    assert button.label == "Generate twin arm"
    button.click().run()
    assert not at.exception, at.exception
    run = wait_for_run(at)
    assert run is not None
    assert run.manifest["generator"] == "local" and run.n_twins == 12 * 5
    assert set(run.adsl["SRCSUBJID"]) == set(cohort) and set(run.adsl["ARM"]) == {"Placebo"}
    run_dir = Path(at.session_state["twin_run_dir"])
    assert (run_dir / "manifest.json").exists() and (run_dir / "adsl.csv").exists()
    assert run_dir.name == run.run_id
    assert any("Twin arm ready: 60 twins of 12 source patients" in s.value for s in at.success)
    assert at.get("plotly_chart"), "no trajectory chart"
    assert at.session_state["whatif_job"] is None

    # another parameter redraws without error; the run is listed among saved runs
    param = at.selectbox(key=f"whatif_param_{pbc.content_hash[:12]}")
    param.set_value("ALB").run()
    assert not at.exception
    assert run.run_id in at.selectbox(key="whatif_saved_choice").options


def test_reopen_a_saved_run(pbc_twins):
    from services.generation.saved_runs import save_run

    folder = save_run(pbc_twins)
    at = open_page()
    at.selectbox(key="whatif_saved_choice").set_value(pbc_twins.run_id).run()
    at.button(key="whatif_open").click().run()
    assert not at.exception, at.exception
    assert at.session_state["twin_run"].run_id == pbc_twins.run_id
    assert Path(at.session_state["twin_run_dir"]) == folder
    assert any("Current run" in i.value for i in at.info)
    assert at.get("plotly_chart")


def test_llm_not_configured_is_explained(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TWINARM_LLM_EMBEDDED", "0")  # else the embedded model is the default
    at = open_page()
    at.radio(key="whatif_generator").set_value("llm").run()
    assert not at.exception, at.exception
    assert any("LLM not configured" in i.value for i in at.info)
    assert at.button(key="whatif_generate").disabled


def test_remote_endpoint_needs_consent(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "https://llm.example.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-page-secret-0000")
    at = open_page()
    at.radio(key="whatif_generator").set_value("llm").run()
    assert not at.exception, at.exception
    assert any("Patient data would leave this machine" in w.value for w in at.warning)
    assert at.button(key="whatif_generate").disabled
    at.checkbox(key="whatif_llm_consent").check().run()
    assert not at.button(key="whatif_generate").disabled
    # the key is never echoed back into the page
    assert at.sidebar.text_input(key="whatif_llm_key").value in ("", None)
    shown = " ".join(str(e.value) for kind in ("markdown", "caption", "info", "warning")
                     for e in at.get(kind) if hasattr(e, "value"))
    assert "sk-page-secret" not in shown


@pytest.mark.timeout(300)
def test_generate_an_llm_twin_arm_against_a_local_server(pbc, monkeypatch):
    cohort = list(pbc.subjects.loc[pbc.subjects["ARM"] == "D-penicillamine", "USUBJID"])[:3]
    with ScriptedOpenAIServer() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("TWINARM_LLM_MODEL", "scripted-model")
        at = open_page(cohort)
        at.radio(key="whatif_generator").set_value("llm").run()
        assert not at.exception, at.exception
        at.button(key="whatif_generate").click().run()
        assert not at.exception, at.exception
        run = wait_for_run(at)
    assert run is not None and run.manifest["generator"] == "llm"
    assert run.n_twins == 3 and run.manifest["model"] == "scripted-model"
    usage = run.manifest["llm"]["usage"]  # replies cached by an earlier session count as hits
    assert usage["ok"] == 3 and usage["calls"] + usage["cache_hits"] == 3
    assert len(srv.calls) == usage["calls"]
