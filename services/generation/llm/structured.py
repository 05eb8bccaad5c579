"""Structured-output negotiation: what a request asks of the server's reply format and
length, and the ladder ``json_schema`` -> ``json_mode`` -> ``plain`` that ``auto`` mode walks
down on the first refusal (the choice then holds for the run)."""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

import openai

from services.generation.llm.prompt import TwinRequest
from services.generation.llm.schema import (
    reply_token_budget,
    response_format_json_mode,
    response_format_json_schema,
)
from services.generation.llm.settings import LLMSettings, redact_url

log = logging.getLogger("twinarm.llm")

# OpenAI reasoning models: their hidden reasoning counts against max_completion_tokens
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")

# structured-output ladder used in "auto" mode
_MODES = ("json_schema", "json_mode", "plain")


def is_response_format_rejection(exc: Exception) -> bool:
    """A 4xx/5xx whose message names the structured-output request. Servers differ in the
    status: OpenAI-style 400, FastAPI's 422, llama-cpp-python's 500 (its request validation
    error is wrapped as an internal error)."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code in (401, 403, 404, 429):
        return False
    text = f"{getattr(exc, 'message', '')} {getattr(exc, 'body', '')} {getattr(exc, 'param', '')}"
    text = text.lower()
    return any(s in text for s in ("response_format", "json_schema", "json_object",
                                   "structured output", "response format"))


def content_text(message: Any) -> str:
    content = getattr(message, "content", message)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "".join(parts)
    return str(content)


def max_tokens(settings: LLMSettings, request: TwinRequest) -> int | None:
    """The bound of one reply's tokens: the setting, else about twice a complete reply
    (none for OpenAI reasoning models, whose hidden reasoning counts against it)."""
    s = settings
    if s.max_tokens is not None:
        return s.max_tokens
    if s.is_openai_cloud and _REASONING_MODEL.match(s.model.lower()):
        return None  # reasoning tokens count against the bound: leave it to the service
    return reply_token_budget(request)


class StructuredMode:
    """The structured-output mode of one writer: ``json_schema`` (``json_mode`` when forced)
    to start with; in ``auto`` mode a refusal moves it down the ladder (thread-safe)."""

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.current = "json_mode" if settings.structured == "json_mode" else "json_schema"

    def response_format(self, mode: str, request: TwinRequest | None = None
                        ) -> dict[str, Any] | None:
        if mode == "json_schema":
            return response_format_json_schema()
        if mode == "json_mode":
            # with the request's own schema for servers that turn it into a grammar
            # (llama.cpp, llama-cpp-python); the OpenAI cloud gets plain JSON mode
            return response_format_json_mode(None if self.settings.is_openai_cloud else request)
        return None

    def downgrade(self, used: str) -> bool:
        """After a rejection of ``used``: move down the ladder (auto mode only)."""
        if self.settings.structured != "auto":
            return False
        with self.lock:
            if self.current != used:  # another thread already moved on
                return True
            i = _MODES.index(used)
            if i + 1 >= len(_MODES):
                return False
            self.current = _MODES[i + 1]
            log.info("endpoint %s rejected response_format %s; using %s for this run",
                     redact_url(self.settings.effective_base_url), used, self.current)
            return True
