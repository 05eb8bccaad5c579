"""The LLM layer's exceptions, and what an endpoint's error response says.

One class per situation, raised by the writer (``LLMTwinWriter``) and the generator alike:

- :class:`LLMUnavailableError`: no endpoint is configured (and no embedded model);
- :class:`LLMEndpointError`: the endpoint could not be used at all (unreachable,
  authentication, no answer);
- :class:`ConsentRequiredError` (generator) and :class:`RemoteEndpointError` (writer): patient
  data would go to a non-local endpoint without the user's consent.
"""

from __future__ import annotations

import email.utils
import time

import openai

from services.generation.base import GeneratorError


class LLMUnavailableError(GeneratorError):
    """No LLM endpoint is configured."""


class LLMEndpointError(GeneratorError):
    """The endpoint could not be used at all (unreachable, authentication, no answer)."""


class ConsentRequiredError(GeneratorError):
    """Patient data would go to a non-local endpoint and the user has not agreed."""


class RemoteEndpointError(PermissionError):
    """Patient data would leave this machine and the user has not agreed."""


def retry_after_seconds(exc: openai.APIStatusError) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_message(exc: openai.APIStatusError) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    msg = " ".join(str(msg).split())
    return msg[:300]


def connection_reason(exc: Exception) -> str:
    """The root cause of a connection error in a few words (connection refused, name not
    resolved...), without the URL (the caller names the redacted endpoint)."""
    cause = exc
    seen = 0
    while getattr(cause, "__cause__", None) is not None and seen < 5:
        cause = cause.__cause__
        seen += 1
    text = " ".join(str(cause).split()) or type(cause).__name__
    low = text.lower()
    if "refused" in low:
        return "connection refused"
    if "name or service not known" in low or "nodename nor servname" in low or \
            "temporary failure in name resolution" in low:
        return "host name not resolved"
    if "timed out" in low:
        return "connection timed out"
    return text[:160]
