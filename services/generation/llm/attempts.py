"""One twin's calls: the retry loop that turns each outcome of a chat completion (a reply,
an invalid reply, HTTP 429 / 5xx / 4xx, a timeout, a connection failure, a refused
``response_format``) into the next step, and the circuit breaker.

:class:`TwinAttempts` is a part of :class:`~services.generation.llm.writer.LLMTwinWriter`: it
uses the writer's ``settings``, ``cache``, ``_pacer``, ``_limiter``, ``_structured``,
``_mode``, ``_fatal`` / ``_fatal_lock``, ``_prepare``, ``_http``, ``_max_tokens`` and
``_wait_until_idle``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import openai

from services.generation.llm.errors import connection_reason, retry_after_seconds, status_message
from services.generation.llm.pacing import Cancelled, Tripped
from services.generation.llm.prompt import PROMPT_VERSION, PrivacyError, TwinRequest, build_messages
from services.generation.llm.results import (
    CACHED,
    CANCELLED,
    ERROR,
    INVALID,
    OK,
    RATE_LIMITED,
    REFUSED,
    REJECTED,
    TIMEOUT,
    UNREACHABLE,
    Prepared,
    TwinResult,
)
from services.generation.llm.schema import validate_reply
from services.generation.llm.settings import redact_url
from services.generation.llm.structured import is_response_format_rejection

log = logging.getLogger("twinarm.llm")


class TwinAttempts:
    """The per-twin half of the writer (see the module docstring)."""

    _fatal: str | None
    _fatal_lock: threading.Lock

    def _run_one(self, request: TwinRequest, stop: threading.Event,
                 prepared: Prepared | None = None) -> TwinResult:
        t0 = time.perf_counter()
        res = TwinResult(request, ok=False)
        try:
            self._attempts(request, stop, res, prepared)
        except Cancelled:
            res.ok, res.reason = False, CANCELLED
            res.errors = ["cancelled"] + res.notes
        except PrivacyError as exc:
            res.reason, res.errors = REFUSED, [str(exc)]
        except Exception as exc:  # a twin never takes the run down
            log.exception("twin %s/%s failed unexpectedly", request.source_key,
                          request.twin_index)
            res.reason, res.errors = ERROR, [f"{type(exc).__name__}: {exc}"]
        res.seconds = time.perf_counter() - t0
        if not res.ok and res.reason != CANCELLED and not (
                self._fatal and res.errors[:1] == [self._fatal]):
            log.warning("twin %s#%s failed (%s): %s", request.source_key, request.twin_index,
                        res.reason, "; ".join(res.errors)[:500])
        return res

    def _attempts(self, request: TwinRequest, stop: threading.Event, res: TwinResult,
                  prepared: Prepared | None = None) -> None:
        s = self.settings
        pacer = self._pacer
        if prepared is None:
            prepared = self._prepare(request)
        base_messages, key = prepared.messages, prepared.key
        if prepared.cached is not None:
            res.ok, res.reply, res.cached, res.reason = True, prepared.cached, True, CACHED
            return
        messages = base_messages
        max_tokens = self._max_tokens(request)
        invalid = transport = limited = 0
        endpoint = redact_url(s.effective_base_url)
        while True:
            if stop.is_set():
                raise Cancelled
            if self._fatal:
                res.reason, res.errors = UNREACHABLE, [self._fatal]
                return
            res.wait_seconds += self._limiter.acquire(stop)
            res.attempts += 1
            meta: dict[str, Any] = {}
            try:
                try:
                    text, refusal, tin, tout, finish = self._http(messages, request,
                                                                  max_tokens, stop, meta)
                finally:
                    mode = res.structured = meta.get("mode", self._mode)
            except Cancelled:
                res.attempts -= 1
                raise
            except Tripped:
                res.attempts -= 1
                continue
            except openai.RateLimitError as exc:
                res.http_seconds += meta.get("seconds", 0.0)
                pacer.answered(meta.get("seconds", 0.0), meta.get("in_flight", 1), False)
                limited += 1
                after = retry_after_seconds(exc)
                note = f"HTTP 429 rate limited (attempt {res.attempts})"
                if limited > s.max_rate_limit_retries:
                    res.reason = RATE_LIMITED
                    res.errors = [(f"rate limited: HTTP 429 after {limited} attempts "
                                   f"({status_message(exc)})")]
                    return
                if after is None:
                    after = min(2.0 ** (limited - 1), s.max_retry_after_s)
                if after > s.max_retry_after_s:
                    res.reason = RATE_LIMITED
                    res.errors = [(f"rate limited: the endpoint asks to wait {after:.0f} s "
                                   f"(more than {s.max_retry_after_s:.0f} s)")]
                    return
                res.notes.append(note)
                self._limiter.pause(after)
                continue
            except openai.APITimeoutError:
                res.http_seconds += meta.get("seconds", 0.0)
                transport += 1
                in_a_row = pacer.timed_out()
                msg = f"timeout: no reply within {meta.get('timeout', s.timeout_s):.0f} s"
                if in_a_row >= s.max_connection_failures:
                    self._trip(f"the LLM endpoint {endpoint} did not answer {in_a_row} calls "
                               f"in a row (last: no reply within "
                               f"{meta.get('timeout', s.timeout_s):.0f} s)")
                    res.reason, res.errors = TIMEOUT, [self._fatal or msg]
                    return
                if transport > s.max_retries:
                    res.reason, res.errors = TIMEOUT, [f"{msg} ({res.attempts} attempts)"]
                    return
                res.notes.append(msg)
                # the server may still be computing the abandoned call: do not queue the same
                # work behind it
                self._wait_until_idle(pacer.timeout(), stop)
                continue
            except openai.APIConnectionError as exc:
                res.http_seconds += meta.get("seconds", 0.0)
                transport += 1
                failures = pacer.connection_failed()
                msg = f"connection error: {connection_reason(exc)}"
                if failures >= s.max_connection_failures:
                    self._trip(f"cannot reach the LLM endpoint {endpoint}: "
                               f"{connection_reason(exc)} ({failures} attempts in a row); "
                               "is the server running?")
                    res.reason, res.errors = UNREACHABLE, [self._fatal or msg]
                    return
                if transport > s.max_retries:
                    res.reason, res.errors = ERROR, [f"{msg} ({res.attempts} attempts)"]
                    return
                res.notes.append(msg)
                if stop.wait(min(0.5 * transport, 5.0)):
                    raise Cancelled
                continue
            except (openai.AuthenticationError, openai.PermissionDeniedError,
                    openai.NotFoundError) as exc:
                res.http_seconds += meta.get("seconds", 0.0)
                what = {401: "authentication failed", 403: "permission denied",
                        404: "model or endpoint not found"}.get(exc.status_code, "refused")
                self._trip(f"{what} (HTTP {exc.status_code}) at {endpoint}: "
                           f"{status_message(exc)}")
                res.reason, res.errors = ERROR, [self._fatal]
                return
            except openai.APIStatusError as exc:
                res.http_seconds += meta.get("seconds", 0.0)
                pacer.answered(meta.get("seconds", 0.0), meta.get("in_flight", 1), False)
                if is_response_format_rejection(exc):
                    res.notes.append(f"response_format {mode} rejected: {status_message(exc)}")
                    if self._structured.downgrade(mode):  # not counted as a retry
                        continue
                    res.reason = REJECTED
                    res.errors = [
                        f"the endpoint rejected response_format {mode} (HTTP "
                        f"{exc.status_code}): {status_message(exc)}"
                        + ("; set structured='auto' to fall back to JSON mode"
                           if s.structured != "auto" else "")
                    ]
                    return
                if exc.status_code >= 500 or exc.status_code == 408:
                    transport += 1
                    msg = f"HTTP {exc.status_code}: {status_message(exc)}"
                    if transport > s.max_retries:
                        res.reason, res.errors = ERROR, [f"{msg} ({res.attempts} attempts)"]
                        return
                    res.notes.append(msg)
                    if stop.wait(min(0.5 * transport, 5.0)):
                        raise Cancelled
                    continue
                res.reason = REJECTED
                res.errors = [f"HTTP {exc.status_code}: {status_message(exc)}"]
                return
            except openai.LengthFinishReasonError:
                res.http_seconds += meta.get("seconds", 0.0)
                text, refusal, tin, tout, finish = None, None, 0, 0, "length"
                errs = ["The reply was cut off (length limit); answer more concisely."]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # not an OpenAI chat completion (an HTML page, a missing "choices"...)
                res.http_seconds += meta.get("seconds", 0.0)
                pacer.answered(meta.get("seconds", 0.0), meta.get("in_flight", 1), False)
                transport += 1
                msg = ("unexpected response from the endpoint (not an OpenAI chat "
                       f"completion): {str(exc)[:200]}")
                if transport > s.max_retries:
                    res.reason, res.errors = ERROR, [f"{msg} ({res.attempts} attempts)"]
                    return
                res.notes.append(msg)
                continue
            else:
                res.http_seconds += meta["seconds"]
                pacer.answered(meta["seconds"], meta["in_flight"], True)
                res.input_tokens += tin
                res.output_tokens += tout
                if refusal:
                    errs = [f"The model refused: {str(refusal)[:200]}"]
                else:
                    reply, errs = validate_reply(text, request)
                    if reply is not None:
                        res.ok, res.reply, res.reason, res.errors = True, reply, OK, []
                        if self.cache is not None:
                            self.cache.put(
                                key, reply.model_dump(), model=s.model,
                                prompt_version=PROMPT_VERSION,
                                input_tokens=res.input_tokens,
                                output_tokens=res.output_tokens,
                            )
                        return
                    if finish == "length" and max_tokens is not None:
                        errs = [(f"The reply was cut off at {max_tokens} tokens: give only "
                                 "the JSON object, each value once, a one-sentence rationale.")]
            # invalid reply: feed the errors back
            invalid += 1
            if invalid > s.max_retries:
                res.reason, res.errors = INVALID, list(errs)
                return
            res.notes.append(f"attempt {res.attempts}: " + " ".join(errs)[:300])
            messages = build_messages(request, feedback_errors=errs, previous_reply=text)

    def _trip(self, message: str) -> None:
        """Stop the run (circuit breaker): every twin not finished fails with ``message``."""
        with self._fatal_lock:
            if self._fatal is None:
                self._fatal = message
                log.info("LLM run stopped: %s", message)
