"""What-if page and the LLM endpoint (Streamlit AppTest, real script runner): a failed
"Test the endpoint" disables Generate until a test succeeds; without an endpoint the embedded
model is offered (when the local-llm extra is installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from llm_server import ScriptedOpenAIServer
from test_page_whatif import open_page

from services.generation.llm.embedded import embedded_available, free_port


def test_dead_endpoint_test_disables_generate(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("TWINARM_LLM_MODEL", "scripted-model")
    at = open_page()
    at.radio(key="whatif_generator").set_value("llm").run()
    assert not at.exception, at.exception
    assert not at.button(key="whatif_generate").disabled  # not tested yet
    at.button(key="whatif_llm_test").click().run()
    assert not at.exception, at.exception
    assert at.button(key="whatif_generate").disabled
    assert any(url in e.value for e in at.error)
    assert any("endpoint test failed" in c.value for c in at.caption)
    # the endpoint comes up: a successful test enables Generate again
    with ScriptedOpenAIServer() as srv:
        at.sidebar.text_input(key="whatif_llm_base_url").set_value(srv.base_url).run()
        assert not at.button(key="whatif_generate").disabled  # other settings, no failed test
        at.sidebar.text_input(key="whatif_llm_base_url").set_value(url).run()
        assert at.button(key="whatif_generate").disabled  # the failure is remembered
        at.sidebar.text_input(key="whatif_llm_base_url").set_value(srv.base_url).run()
        at.button(key="whatif_llm_test").click().run()
        assert not at.exception, at.exception
        assert any("ok" in s.value for s in at.success)
        assert not at.button(key="whatif_generate").disabled


@pytest.mark.skipif(not embedded_available(), reason="the local-llm extra is not installed")
def test_embedded_model_is_offered_without_an_endpoint(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    at = open_page()
    at.radio(key="whatif_generator").set_value("llm").run()
    assert not at.exception, at.exception
    assert any("Embedded model" in i.value for i in at.info)
    assert not at.button(key="whatif_generate").disabled
