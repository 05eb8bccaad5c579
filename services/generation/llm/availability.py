"""Whether the `llm` generator can run here, and the messages that say why not: endpoint or
embedded model (:func:`llm_status`), consent for a non-local endpoint
(:func:`consent_message`), a connection test that sends no patient data
(:func:`check_endpoint`). No network call except in :func:`check_endpoint`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.generation.llm.settings import LLMConfigError, LLMSettings, redact_url

UNAVAILABLE_MESSAGE = (
    "LLM generator unavailable: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (any "
    "OpenAI-compatible server: vLLM, Ollama, llama.cpp, Azure) and optionally TWINARM_LLM_MODEL, "
    "or use the local generator"
)

EMBEDDED_MESSAGE = (
    "no endpoint configured: the embedded model (Gemma 3 270M on this CPU, for demos and "
    "pipelines, not quality; about a minute per twin) is used")


def consent_message(settings: LLMSettings) -> str:
    return (f"the LLM endpoint {redact_url(settings.effective_base_url)} is not on this machine: "
            "pseudonymised baselines and neighbour trajectories would be sent to it. Give consent "
            "first (--allow-remote on the command line, the consent box in the app, "
            "allow_remote=True in code) or use a local endpoint")


def llm_status(secrets: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Whether the `llm` generator can run with the environment (and `secrets`): a dict with
    `available`, `local` (endpoint on this machine), `model`, `base_url` (redacted),
    `message`; never the key. Bad settings give `available=False` with the reason."""
    try:
        s = LLMSettings.from_env(secrets, **overrides)
    except LLMConfigError as exc:
        return {"available": False, "local": False, "model": None, "base_url": None,
                "message": f"LLM settings are invalid: {exc}"}
    pub = s.public_dict()
    if not s.available:
        from services.generation.llm.embedded import MODEL_ALIAS, embedded_available

        if embedded_available():
            return {"available": True, "local": True, "model": MODEL_ALIAS, "base_url": None,
                    "embedded": True, "message": EMBEDDED_MESSAGE}
    return {"available": s.available, "local": s.is_local, "model": s.model,
            "base_url": pub["base_url"] or (None if not s.available else s.effective_base_url),
            "embedded": False, "message": "ok" if s.available else UNAVAILABLE_MESSAGE}


def check_endpoint(settings: LLMSettings) -> dict[str, Any]:
    """`{"ok", "models", "message"}` from the endpoint's model list (GET /models: no patient
    data is sent, so no consent is needed); never raises."""
    from services.generation.llm.writer import LLMTwinWriter

    try:
        with LLMTwinWriter(settings, allow_remote=True, use_cache=False) as writer:
            return writer.check_endpoint()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer, shown to the user
        return {"ok": False, "models": [], "message": f"{type(exc).__name__}: {exc}"}
