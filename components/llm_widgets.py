"""Widgets of the What-if page for generators that write through an endpoint (`llm`): the
endpoint and its options, consent before patient data leave the machine, and the endpoint
test that keeps Generate disabled while it fails. The API key is never shown back."""

from __future__ import annotations

from dataclasses import dataclass, field

import streamlit as st

from services.generation.llm import LLMConfigError, LLMSettings
from services.generation.llm.generator import check_endpoint
from services.generation.llm.settings import redact_url


def _secrets() -> dict:
    try:
        return dict(st.secrets)
    except Exception:  # noqa: BLE001 - no secrets.toml (Streamlit raises several types)
        return {}


@dataclass
class LLMChoice:
    settings: LLMSettings | None
    consent: bool
    ready: bool
    message: str = ""
    extra: dict = field(default_factory=dict)


def llm_panel() -> LLMChoice:
    """Endpoint (environment / secrets, overridable in the sidebar), LLM options, and consent
    before patient data go to a non-local endpoint. The key is never shown back."""
    secrets = _secrets()
    try:
        env = LLMSettings.from_env(secrets)
    except LLMConfigError as exc:
        env = None
        st.error(f"LLM settings in the environment are invalid: {exc}")
    with st.sidebar:
        st.markdown("### LLM endpoint")
        st.caption("Defaults come from OPENAI_BASE_URL, OPENAI_API_KEY, TWINARM_LLM_MODEL "
                   "(environment or .streamlit/secrets.toml). Fields left empty keep them.")
        model = st.text_input("Model", key="whatif_llm_model",
                              placeholder=env.model if env else "gpt-4o-mini")
        base_url = st.text_input("Base URL", key="whatif_llm_base_url",
                                 placeholder=(redact_url(env.base_url) if env and env.base_url
                                              else "https://api.openai.com/v1 or http://localhost:11434/v1"))
        key = st.text_input("API key", type="password", key="whatif_llm_key",
                            placeholder="set in the environment" if env and env.api_key else "",
                            help="Kept in this browser session only; never shown, logged or "
                                 "written to a manifest.")
    overrides = {"model": model.strip() or None, "base_url": base_url.strip() or None,
                 "api_key": key.strip() or None}
    try:
        settings = LLMSettings.from_env(secrets, **overrides)
    except LLMConfigError as exc:
        st.error(f"LLM settings are invalid: {exc}")
        return LLMChoice(None, False, False, str(exc))
    if not settings.available:
        from services.generation.llm.embedded import embedded_available

        if embedded_available():
            from services.generation.llm.generator import EMBEDDED_MESSAGE

            st.info(f"**Embedded model.** {EMBEDDED_MESSAGE[:1].upper() + EMBEDDED_MESSAGE[1:]}. "
                    "For real twins set `OPENAI_BASE_URL` / `OPENAI_API_KEY` or fill in the "
                    "*LLM endpoint* fields in the sidebar; for speed try fewer patients, K = 1 "
                    "or the local generator.")
            return LLMChoice(settings, True, True, "", {"hybrid": True})
        st.info("**LLM not configured.** Set `OPENAI_BASE_URL` (a local server such as Ollama, "
                "vLLM or llama.cpp) and/or `OPENAI_API_KEY` before starting the app, or fill in "
                "the *LLM endpoint* fields in the sidebar. The local generator needs none of this.")
        return LLMChoice(settings, False, False, "LLM not configured")
    endpoint = redact_url(settings.effective_base_url)
    c1, c2 = st.columns(2)
    temperature = c1.slider("Temperature", 0.0, 1.5, float(settings.temperature or 0.0), 0.1,
                            key="whatif_llm_temperature",
                            help="0 = most repeatable; higher = more varied twins.")
    concurrency = c2.number_input("Parallel requests", 1, 64, int(settings.concurrency), 1,
                                  key="whatif_llm_concurrency")
    hybrid = st.checkbox("Anchor on the local generator's forecast (hybrid)", value=True,
                         key="whatif_llm_hybrid",
                         help="Adds the offline model's mean forecast for the patient to the "
                              "prompt as a reference.")
    settings = settings.with_(temperature=float(temperature), concurrency=int(concurrency))
    st.caption(f"Endpoint: `{endpoint}` · model `{settings.model}` · "
               f"{'local endpoint' if settings.is_local else 'remote endpoint'}"
               f"{' · API key set' if settings.api_key else ''}")
    consent = True
    if not settings.is_local:
        st.warning(f"**Patient data would leave this machine.** The endpoint `{endpoint}` is not "
                   "local. Each request carries one patient's baseline covariates and values and "
                   "the post-baseline trajectories of similar patients, under pseudonymous keys "
                   "(no subject ids, no dates). Only continue if your data agreement allows it.")
        consent = st.checkbox(f"I agree that pseudonymised patient data are sent to {endpoint}",
                              key="whatif_llm_consent")
    ready = settings.available and consent
    why = "" if ready else "tick the consent box to use this endpoint"
    failed = _failed_endpoint_test(settings)
    if ready and failed:
        ready, why = False, (f"the endpoint test failed ({failed}); fix the endpoint and "
                             "test it again")
    return LLMChoice(settings, consent, ready, why, {"hybrid": hybrid})


ENDPOINT_TEST = "whatif_llm_test_result"


def _endpoint_signature(settings: LLMSettings) -> str:
    import hashlib

    key = hashlib.sha256((settings.api_key or "").encode()).hexdigest()[:12]
    return f"{redact_url(settings.effective_base_url)}|{settings.model}|{key}"


def _failed_endpoint_test(settings: LLMSettings) -> str | None:
    """The message of the last "Test the endpoint" of these settings when it failed."""
    last = st.session_state.get(ENDPOINT_TEST)
    if last and last["signature"] == _endpoint_signature(settings) and not last["ok"]:
        return last["message"]
    return None


def check_endpoint_button(settings: LLMSettings, allow_remote: bool) -> None:
    """Lists the endpoint's models (GET /models: no patient data). The result is kept for these
    settings: while it is a failure, `llm_panel` reports the LLM as not ready (Generate is
    disabled) until a test succeeds or the settings change."""
    sig = _endpoint_signature(settings)
    if st.button("Test the endpoint", key="whatif_llm_test",
                 help="Asks the endpoint for its model list; sends no patient data."):
        result = check_endpoint(settings)
        if not result["ok"]:
            result["message"] = (f"{redact_url(settings.effective_base_url)}: "
                                 f"{result['message']}")
        before = st.session_state.get(ENDPOINT_TEST)
        st.session_state[ENDPOINT_TEST] = {"signature": sig, **result}
        was_failed = bool(before and before["signature"] == sig and not before["ok"])
        if was_failed != (not result["ok"]):
            st.rerun()  # the Generate button above follows the new result
    last = st.session_state.get(ENDPOINT_TEST)
    if not last or last["signature"] != sig:
        return
    (st.success if last["ok"] and last["message"] == "ok" else
     st.warning if last["ok"] else st.error)(
        f"{last['message']}" + (f" · models: {', '.join(last['models'][:8])}"
                                if last["models"] else ""))
