"""LLM service layer of the TWIN-GPT style generator (works on plain dicts, no data model).

- :mod:`.settings`: :class:`LLMSettings` (endpoint, model, limits; the API key never leaves
  it), :func:`is_local_endpoint`, :func:`load_secrets_file`.
- :mod:`.prompt`: :class:`TwinRequest` (one twin, pseudonymous) and :func:`build_messages`.
- :mod:`.schema`: :class:`TwinReply`, the strict JSON schema and :func:`validate_reply`.
- :mod:`.cache`: :class:`ReplyCache`, validated replies on disk.
- :mod:`.writer`: :class:`LLMTwinWriter` (bounded concurrency, retries, cache, fallback), with
  :mod:`.results`, :mod:`.pacing`, :mod:`.structured`, :mod:`.attempts`, :mod:`.lanes`.
- :mod:`.errors`: the exceptions (one :class:`LLMUnavailableError`, a ``GeneratorError``).
- :mod:`.generator`: the `llm` generator, with :mod:`.availability`, :mod:`.facts`,
  :mod:`.prompting` and :mod:`.replies`.
"""

from .cache import ReplyCache, cache_key, default_cache_dir
from .prompt import PROMPT_VERSION, PrivacyError, TwinRequest, build_messages
from .schema import (
    TWIN_REPLY_JSON_SCHEMA,
    EventValue,
    TwinReply,
    VisitValue,
    parse_json_text,
    response_format_json_schema,
    validate_reply,
)
from .settings import (
    LLMConfigError,
    LLMSettings,
    is_local_endpoint,
    load_secrets_file,
)

# The writer pulls in LangChain (slow to import): loaded on first use; so are the errors and
# results (they import the generator base and the OpenAI client).
_LAZY = {"LLMTwinWriter": "writer", "LLMUnavailableError": "errors",
         "RemoteEndpointError": "errors", "RunUsage": "results", "TwinResult": "results"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "PROMPT_VERSION",
    "TWIN_REPLY_JSON_SCHEMA",
    "EventValue",
    "LLMConfigError",
    "LLMSettings",
    "LLMTwinWriter",
    "LLMUnavailableError",
    "PrivacyError",
    "RemoteEndpointError",
    "ReplyCache",
    "RunUsage",
    "TwinReply",
    "TwinRequest",
    "TwinResult",
    "VisitValue",
    "build_messages",
    "cache_key",
    "default_cache_dir",
    "is_local_endpoint",
    "load_secrets_file",
    "parse_json_text",
    "response_format_json_schema",
    "validate_reply",
]
