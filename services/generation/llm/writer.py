"""Writes twins with an OpenAI-compatible chat endpoint through LangChain.

One :class:`TwinRequest` -> one chat completion -> one validated :class:`TwinReply`.

- Structured output: ``json_schema`` (strict) when the endpoint accepts it. In ``auto`` mode an
  HTTP 400/422 that rejects ``response_format`` makes the writer fall back to JSON mode
  (``{"type": "json_object"}``), then to plain prompting, and remember the choice. Replies are
  always parsed and validated here (Pydantic + ranges), whatever the mode.
- Retries: an invalid reply (malformed JSON, missing or implausible values) is sent back to
  the model with the errors, up to ``max_retries`` times; timeouts, connection errors and
  HTTP 5xx are retried up to ``max_retries`` times; HTTP 429 waits for ``Retry-After``
  (shared by all threads) up to ``max_rate_limit_retries`` times, then the twin fails with
  reason "rate limited".
- Scheduling: ``concurrency`` worker threads ("lanes") each take the next twin as soon as
  their previous one is done, while the calling thread prepares prompts ahead; at most
  ``concurrency`` calls are in flight. Against the tests' server (200 ms per call, 8 lanes,
  2 cores) the run takes 1.08-1.1x the ideal wall time (``bench/generate.py``).
- Failures are per twin; results keep the order of the requests. ``cancel`` stops scheduling:
  a twin in flight finishes and is kept, twins not started are returned as "cancelled".
  Validated replies are cached on disk.
- ``progress`` and ``cancel`` are called from the calling thread only (safe for Streamlit).
- The API key is never logged, never put in results or usage summaries.
"""

from __future__ import annotations

import email.utils
import gc
import logging
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import openai
from langchain_openai import ChatOpenAI

from .cache import ReplyCache, cache_key
from .prompt import PROMPT_VERSION, PrivacyError, TwinRequest, build_messages
from .schema import (
    TWIN_REPLY_JSON_SCHEMA,
    TwinReply,
    reply_token_budget,
    response_format_json_mode,
    response_format_json_schema,
    validate_reply,
)
from .settings import LLMSettings, redact_url

log = logging.getLogger("twinarm.llm")

# reasons (TwinResult.reason)
OK, CACHED = "ok", "cached"
TIMEOUT, RATE_LIMITED, INVALID = "timeout", "rate limited", "invalid reply"
CANCELLED, REFUSED, REJECTED, ERROR = "cancelled", "refused", "rejected", "error"
UNREACHABLE = "endpoint unreachable"

# before any reply, a call to a local endpoint may take this long (a small model on a small
# CPU: about a minute per twin), or longer when the reply may be long (seconds per token)
FIRST_CALL_TIMEOUT_S = 300.0
FIRST_CALL_S_PER_TOKEN = 0.35
# OpenAI reasoning models: their hidden reasoning counts against max_completion_tokens
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")

# structured-output ladder used in "auto" mode
_MODES = ("json_schema", "json_mode", "plain")


class LLMUnavailableError(RuntimeError):
    """No endpoint is configured."""


class RemoteEndpointError(PermissionError):
    """Patient data would leave this machine and the user has not agreed."""


@dataclass
class TwinResult:
    """Outcome of one twin.

    ``attempts``: HTTP calls made for it in this run (0 when cached). Tokens are those spent in
    this run (0 when cached). ``errors``: why it failed (empty when ``ok``); ``notes``: problems
    of earlier attempts that a retry fixed. ``seconds`` = ``http_seconds`` (waiting on the
    endpoint, including the client library) + ``wait_seconds`` (rate limit, Retry-After) + own
    overhead.
    """

    request: TwinRequest
    ok: bool
    reply: TwinReply | None = None
    errors: list[str] = field(default_factory=list)
    attempts: int = 0
    cached: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    reason: str = ""
    http_seconds: float = 0.0
    wait_seconds: float = 0.0
    structured: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def overhead_seconds(self) -> float:
        return max(0.0, self.seconds - self.http_seconds - self.wait_seconds)

    def to_manifest(self) -> dict[str, Any]:
        """Summary for a manifest (no reply values, no identifiers beyond the pseudonym)."""
        return {
            "source_key": self.request.source_key,
            "twin_index": self.request.twin_index,
            "ok": self.ok,
            "reason": self.reason,
            "errors": list(self.errors),
            "attempts": self.attempts,
            "cached": self.cached,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "seconds": round(self.seconds, 3),
            "structured": self.structured,
        }


@dataclass
class RunUsage:
    """Summary of one :meth:`LLMTwinWriter.write_many` run."""

    model: str
    base_url: str | None
    prompt_version: str
    structured: str
    twins: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    calls: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    estimated_cost_usd: float = 0.0
    wall_seconds: float = 0.0
    http_seconds: float = 0.0
    wait_seconds: float = 0.0
    overhead_seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_results(
        cls, results: list[TwinResult], settings: LLMSettings, structured: str,
        wall_seconds: float, scheduling_seconds: float = 0.0,
    ) -> RunUsage:
        u = cls(
            model=settings.model,
            base_url=redact_url(settings.base_url),
            prompt_version=PROMPT_VERSION,
            structured=structured,
            twins=len(results),
            wall_seconds=wall_seconds,
        )
        for r in results:
            u.ok += r.ok
            u.cancelled += r.reason == CANCELLED
            u.calls += r.attempts
            u.cache_hits += r.cached
            u.input_tokens += r.input_tokens
            u.output_tokens += r.output_tokens
            u.http_seconds += r.http_seconds
            u.wait_seconds += r.wait_seconds
            u.overhead_seconds += r.overhead_seconds
        u.overhead_seconds += scheduling_seconds
        u.failed = u.twins - u.ok - u.cancelled
        u.reasons = dict(Counter(r.reason for r in results))
        u.estimated_cost_usd = settings.estimate_cost(u.input_tokens, u.output_tokens)
        return u

    @property
    def overhead_ms_per_twin(self) -> float:
        return 1000 * self.overhead_seconds / self.twins if self.twins else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["overhead_ms_per_twin"] = round(self.overhead_ms_per_twin, 3)
        for k in ("wall_seconds", "http_seconds", "wait_seconds", "overhead_seconds"):
            d[k] = round(d[k], 4)
        d["estimated_cost_usd"] = round(d["estimated_cost_usd"], 6)
        return d


class _Cancelled(Exception):
    pass


class _Tripped(Exception):
    """The circuit breaker tripped: no more calls in this run."""


@dataclass
class _Prepared:
    """What a twin needs before its first call (see :meth:`LLMTwinWriter._prepare`)."""

    messages: list[tuple[str, str]]
    key: str
    cached: TwinReply | None = None


class _RateLimiter:
    """Token bucket (requests per minute, ~1 s of burst) plus a shared pause after a 429."""

    def __init__(self, rpm: float | None) -> None:
        self.rate = rpm / 60.0 if rpm else None
        self.capacity = max(1.0, self.rate) if self.rate else 0.0
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.pause_until = 0.0
        self.lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        with self.lock:
            self.pause_until = max(self.pause_until, time.monotonic() + seconds)

    def acquire(self, stop: threading.Event) -> float:
        """Block until a call may start; returns seconds waited. Raises _Cancelled."""
        waited = 0.0
        while True:
            with self.lock:
                now = time.monotonic()
                if now < self.pause_until:
                    delay = self.pause_until - now
                elif self.rate is None:
                    return waited
                else:
                    self.tokens = min(
                        self.capacity, self.tokens + (now - self.updated) * self.rate
                    )
                    self.updated = now
                    if self.tokens >= 1.0:
                        self.tokens -= 1.0
                        return waited
                    delay = (1.0 - self.tokens) / self.rate
            t = time.perf_counter()
            if stop.wait(delay):
                raise _Cancelled
            waited += time.perf_counter() - t


class _Pacer:
    """How many calls may be in flight and how long one may take, learned from the endpoint.

    - The first call to a local endpoint runs alone: it negotiates the structured-output mode
      and measures the server. While it runs, ``GET /models`` is asked once: a server that
      answers it only after the completion (llama-cpp-python holds one lock for both) serves
      one request at a time, and the run keeps one call in flight. Otherwise (and for remote
      endpoints from the start) up to ``concurrency`` calls are in flight.
    - Timeouts follow the observed latency: before any reply, a local endpoint gets
      ``max(timeout_s, first_call_timeout_s)`` (a small CPU model takes a minute per twin);
      then ``max(timeout_s, 3 x the slowest seconds per call and slot x slots in use)``. Each
      timeout doubles that (the server was slower than measured) and drops to one call in
      flight.
    - ``max_connection_failures`` connection failures in a row (no HTTP answer at all) trip
      the breaker: the run stops with one message naming the endpoint.
    """

    def __init__(self, settings: LLMSettings, first_call_timeout_s: float) -> None:
        self.settings = settings
        self.max_limit = max(1, settings.concurrency)
        self.limit = 1 if settings.is_local else self.max_limit
        self.warmed = not settings.is_local  # local: wait for the first reply
        self.one_slot: bool | None = None
        self.in_flight = 0
        self.cond = threading.Condition()
        self.first_timeout = max(settings.timeout_s, first_call_timeout_s
                                 if settings.is_local else settings.timeout_s)
        self.per_slot_s: float | None = None  # slowest observed seconds per call per slot
        self.first_latency_s: float | None = None
        self.slow_factor = 1.0
        self.conn_failures = 0
        self.timeouts_in_a_row = 0

    # -- slots ------------------------------------------------------------------------------
    def acquire(self, stop: threading.Event) -> int:
        """Wait for a free slot; returns the number of calls in flight including this one."""
        with self.cond:
            while self.in_flight >= self.limit:
                if stop.is_set():
                    raise _Cancelled
                self.cond.wait(0.1)
            if stop.is_set():
                raise _Cancelled
            self.in_flight += 1
            return self.in_flight

    def release(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.cond.notify_all()

    def timeout(self) -> float:
        with self.cond:
            if self.per_slot_s is None:
                t = self.first_timeout
            else:
                t = max(self.settings.timeout_s, 3.0 * self.per_slot_s * self.limit)
            return min(t * self.slow_factor, 3600.0)

    # -- what the endpoint showed -----------------------------------------------------------
    def answered(self, seconds: float, in_flight: int, completed: bool = True) -> None:
        """An HTTP answer came back after ``seconds`` with ``in_flight`` calls in flight;
        ``completed``: a chat completion (not an error status, which says nothing of speed)."""
        with self.cond:
            self.conn_failures = 0
            if not completed:
                return
            self.timeouts_in_a_row = 0
            per = seconds / max(1, in_flight)
            if self.first_latency_s is None:
                self.first_latency_s = seconds
            self.per_slot_s = per if self.per_slot_s is None else max(self.per_slot_s, per)
            if not self.warmed:
                self.warmed = True
                self.limit = 1 if self.one_slot else self.max_limit
            self.cond.notify_all()

    def saw_one_slot(self, one_slot: bool) -> None:
        with self.cond:
            if self.one_slot is None:
                self.one_slot = one_slot
                if one_slot:
                    self.limit = 1
                    self.max_limit = 1
                    log.info("the endpoint serves one request at a time: one call in flight")

    def timed_out(self) -> int:
        with self.cond:
            self.slow_factor = min(self.slow_factor * 2.0, 16.0)
            self.limit = 1
            self.timeouts_in_a_row += 1
            return self.timeouts_in_a_row

    def connection_failed(self) -> int:
        with self.cond:
            self.conn_failures += 1
            return self.conn_failures


def _retry_after_seconds(exc: openai.APIStatusError) -> float | None:
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


def _status_message(exc: openai.APIStatusError) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    msg = " ".join(str(msg).split())
    return msg[:300]


def _is_response_format_rejection(exc: Exception) -> bool:
    """A 4xx/5xx whose message names the structured-output request. Servers differ in the
    status: OpenAI-style 400, FastAPI's 422, llama-cpp-python's 500 (its request validation
    error is wrapped as an internal error)."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code in (401, 403, 404, 429):
        return False
    text = f"{getattr(exc, 'message', '')} {getattr(exc, 'body', '')} {getattr(exc, 'param', '')}"
    text = text.lower()
    return any(s in text for s in ("response_format", "json_schema", "json_object",
                                   "structured output", "response format"))


def _content_text(message: Any) -> str:
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


class LLMTwinWriter:
    """Generates twins from :class:`TwinRequest` objects with bounded concurrency.

    ``cache_dir``: where the reply cache lives (default ``TWINARM_HOME/llm_cache``);
    ``use_cache=False`` disables it. ``allow_remote``: the user agreed that pseudonymised
    patient data may be sent to a non-local endpoint; without it such endpoints are refused.
    """

    def __init__(
        self,
        settings: LLMSettings,
        cache_dir: str | Path | None = None,
        allow_remote: bool = False,
        *,
        use_cache: bool = True,
    ) -> None:
        if not settings.available:
            raise LLMUnavailableError(
                "no LLM endpoint configured: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL "
                "(a local or OpenAI-compatible server), or use the local generator"
            )
        if not settings.is_local and not allow_remote:
            raise RemoteEndpointError(
                f"refusing to send patient data to the non-local endpoint "
                f"{redact_url(settings.effective_base_url)}: the user must first agree that "
                "pseudonymised baselines and neighbour trajectories leave this machine "
                "(pass allow_remote=True once consent is given), or use a local endpoint"
            )
        self.settings = settings
        self.allow_remote = allow_remote
        self.cache = ReplyCache(cache_dir) if use_cache else None
        self._mode_lock = threading.Lock()
        self._mode = "json_mode" if settings.structured == "json_mode" else "json_schema"
        self._limiter = _RateLimiter(settings.requests_per_minute)
        self._fatal: str | None = None
        self._pacer = _Pacer(settings, FIRST_CALL_TIMEOUT_S)
        self._http_client: httpx.Client | None = None
        kwargs: dict[str, Any] = {}
        if settings.is_local:
            # never route local traffic through a proxy from the environment
            self._http_client = httpx.Client(
                trust_env=False,
                timeout=settings.timeout_s,
                limits=httpx.Limits(max_connections=settings.concurrency + 2,
                                    max_keepalive_connections=settings.concurrency + 2),
            )
            kwargs["http_client"] = self._http_client
        self._llm = ChatOpenAI(
            model=settings.model,
            base_url=settings.effective_base_url,
            api_key=settings.api_key or "not-needed",
            timeout=settings.timeout_s,
            max_retries=0,
            temperature=settings.temperature,
            use_responses_api=False,
            **kwargs,
        )
        self.last_usage: RunUsage | None = None

    # -- public -------------------------------------------------------------------------------
    @property
    def stopped_reason(self) -> str | None:
        """Why the run was stopped before its end (circuit breaker: endpoint unreachable, not
        answering, authentication...), else None."""
        return self._fatal

    @property
    def structured_mode(self) -> str:
        """The structured-output mode currently used: json_schema, json_mode or plain."""
        return self._mode

    def __repr__(self) -> str:
        return f"LLMTwinWriter({self.settings!r}, allow_remote={self.allow_remote})"

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        if self._http_client is not None:
            self._http_client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_endpoint(self) -> dict[str, Any]:
        """``{"ok": bool, "models": [...], "message": str}`` from GET /models (no patient data)."""
        try:
            page = self._llm.root_client.models.list(timeout=min(self.settings.timeout_s, 10))
            models = [m.id for m in page.data]
        except openai.APIStatusError as exc:
            return {"ok": False, "models": [],
                    "message": f"HTTP {exc.status_code}: {_status_message(exc)}"}
        except openai.APIError as exc:
            return {"ok": False, "models": [], "message": f"{type(exc).__name__}: {exc}"}
        msg = "ok"
        if models and self.settings.model not in models:
            msg = f"model {self.settings.model!r} not listed by the endpoint"
        return {"ok": True, "models": models, "message": msg}

    def write_one(self, request: TwinRequest) -> TwinResult:
        return self.write_many([request])[0]

    def write_many(
        self,
        requests: Iterable[TwinRequest],
        progress: Callable[[int, int], Any] | None = None,
        cancel: threading.Event | Callable[[], bool] | None = None,
    ) -> list[TwinResult]:
        """Generate all twins; results in request order. See the module docstring."""
        reqs = list(requests)
        n = len(reqs)
        t0 = time.perf_counter()
        results: list[TwinResult | None] = [None] * n
        stop = threading.Event()
        is_cancelled = _cancel_checker(cancel)
        log.info(
            "LLM run: %d twins, model=%s, endpoint=%s, concurrency=%d",
            n, self.settings.model, redact_url(self.settings.effective_base_url),
            self.settings.concurrency,
        )
        sched = 0.0  # own time in this thread outside waits
        done = 0  # twins written (failed twins are not progress)
        if reqs and not self._pacer.warmed:
            budget = max((self._max_tokens(r) or 0) for r in reqs)
            self._pacer.first_timeout = max(self._pacer.first_timeout,
                                            FIRST_CALL_S_PER_TOKEN * budget)
        if progress is not None and n:
            progress(0, n)
        workers = max(1, min(self.settings.concurrency, n))
        # Each worker is a lane that takes the next twin itself as soon as its previous one
        # is done: no hand-off through this thread between two calls, whose wake-ups would
        # wait on the interpreter lock. This thread reports progress, watches cancel and, in
        # the time the lanes wait on the endpoint, prepares the prompts of the next twins
        # (`_prepare`) so that a lane sends its next request as soon as a reply is in.
        claim = threading.Lock()
        next_i = 0
        prepared: list[_Prepared | None] = [None] * n
        finished: queue.SimpleQueue[tuple[int, TwinResult]] = queue.SimpleQueue()

        def lane() -> None:
            nonlocal next_i
            while not stop.is_set():
                with claim:
                    i = next_i
                    if i >= n:
                        return
                    next_i += 1
                    ready, prepared[i] = prepared[i], None
                try:
                    res = self._run_one(reqs[i], stop, ready)
                except Exception as exc:  # noqa: BLE001  (_run_one catches already)
                    res = TwinResult(reqs[i], ok=False, reason=ERROR,
                                     errors=[f"{type(exc).__name__}: {exc}"])
                finished.put((i, res))

        def prepare_ahead() -> bool:
            """Prepare one twin that no lane has taken yet, at most `workers` ahead."""
            nonlocal ahead
            with claim:
                ahead = max(ahead, next_i)
                if ahead >= min(n, next_i + workers):
                    return False
                i = ahead
                ahead += 1
            try:
                ready = self._prepare(reqs[i])
            except Exception:  # noqa: BLE001  (the lane redoes it and reports the error)
                return True
            with claim:
                if i >= next_i:  # a lane that took it meanwhile prepared it itself
                    prepared[i] = ready
            return True

        ahead = 0
        if is_cancelled():
            stop.set()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="twinarm-llm")
        lanes = [pool.submit(lane) for _ in range(workers if n else 0)]
        completed = not lanes
        # A full collection of the whole heap (the trial, the libraries: ~10^5 objects in the
        # app) stops every lane for ~0.15 s; during the run only new objects are collected.
        gc.freeze()
        try:
            while not completed:
                ts = time.perf_counter()
                if not stop.is_set() and is_cancelled():
                    stop.set()
                try:
                    item: tuple[int, TwinResult] | None = finished.get_nowait()
                except queue.Empty:
                    item = None
                    if not stop.is_set() and prepare_ahead():
                        sched += time.perf_counter() - ts
                        continue
                    sched += time.perf_counter() - ts
                    try:
                        item = finished.get(timeout=0.1)
                    except queue.Empty:
                        item = None
                    ts = time.perf_counter()
                got = 0
                while item is not None:
                    results[item[0]] = item[1]
                    got += 1
                    done += bool(item[1].ok)
                    try:
                        item = finished.get_nowait()
                    except queue.Empty:
                        item = None
                # a lane queues its results before it ends: all ended + queue empty = complete
                completed = all(f.done() for f in lanes) and finished.empty()
                sched += time.perf_counter() - ts
                if got and progress is not None:
                    progress(done, n)
        finally:
            if not completed:  # progress or cancel raised: stop, keep what is done
                stop.set()
            pool.shutdown(wait=True)
            gc.unfreeze()
            while not finished.empty():
                i, res = finished.get_nowait()
                results[i] = res
        out: list[TwinResult] = []
        for i, r in enumerate(results):
            if r is None:
                r = TwinResult(reqs[i], ok=False, reason=CANCELLED,
                               errors=["cancelled before it started"])
            out.append(r)
        self.last_usage = RunUsage.from_results(
            out, self.settings, self._mode, time.perf_counter() - t0, sched
        )
        u = self.last_usage
        log.info(
            "LLM run done: %d ok, %d failed, %d cancelled; %d calls, %d cache hits, "
            "%d+%d tokens, %.1f s",
            u.ok, u.failed, u.cancelled, u.calls, u.cache_hits, u.input_tokens,
            u.output_tokens, u.wall_seconds,
        )
        return out

    # -- one twin -----------------------------------------------------------------------------
    def _response_format(self, mode: str, request: TwinRequest | None = None
                         ) -> dict[str, Any] | None:
        if mode == "json_schema":
            return response_format_json_schema()
        if mode == "json_mode":
            # with the request's own schema for servers that turn it into a grammar
            # (llama.cpp, llama-cpp-python); the OpenAI cloud gets plain JSON mode
            return response_format_json_mode(None if self.settings.is_openai_cloud else request)
        return None

    def _max_tokens(self, request: TwinRequest) -> int | None:
        s = self.settings
        if s.max_tokens is not None:
            return s.max_tokens
        if s.is_openai_cloud and _REASONING_MODEL.match(s.model.lower()):
            return None  # reasoning tokens count against the bound: leave it to the service
        return reply_token_budget(request)

    def _downgrade(self, used: str) -> bool:
        """After a rejection of ``used``: move down the ladder (auto mode only)."""
        if self.settings.structured != "auto":
            return False
        with self._mode_lock:
            if self._mode != used:  # another thread already moved on
                return True
            i = _MODES.index(used)
            if i + 1 >= len(_MODES):
                return False
            self._mode = _MODES[i + 1]
            log.info("endpoint %s rejected response_format %s; using %s for this run",
                     redact_url(self.settings.effective_base_url), used, self._mode)
            return True

    def _call(self, messages: list[tuple[str, str]], seed: int | None, mode: str,
              request: TwinRequest | None = None, max_tokens: int | None = None,
              timeout: float | None = None):
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if seed is not None:
            kwargs["seed"] = int(seed)
        rf = self._response_format(mode, request)
        if rf is not None:
            # The same JSON on the wire as `response_format=rf`, but passed through untouched:
            # given as a parameter, the OpenAI client walks the whole schema with its type
            # transforms and LangChain takes the `parse` path, together about 1.5 ms of CPU
            # per call under the interpreter lock that the concurrent calls share. Replies
            # are parsed and validated here whatever the mode.
            extra["response_format"] = rf
        if max_tokens is not None:
            # the OpenAI service has moved to max_completion_tokens; every compatible server
            # (llama.cpp, vLLM, Ollama) knows max_tokens, not all the new name
            extra["max_completion_tokens" if self.settings.is_openai_cloud
                  else "max_tokens"] = int(max_tokens)
        if extra:
            kwargs["extra_body"] = extra
        if timeout is not None:
            kwargs["timeout"] = float(timeout)
        msg = self._llm.invoke(messages, **kwargs)
        refusal = (getattr(msg, "additional_kwargs", None) or {}).get("refusal")
        text = _content_text(msg)
        usage = getattr(msg, "usage_metadata", None) or {}
        finish = (getattr(msg, "response_metadata", None) or {}).get("finish_reason")
        return text, refusal, int(usage.get("input_tokens") or 0), int(
            usage.get("output_tokens") or 0
        ), finish

    def _wait_until_idle(self, timeout: float, stop: threading.Event) -> None:
        """After a timeout: wait until the endpoint answers ``GET /models`` before sending
        more. A one-slot server (llama-cpp-python) answers it only once it has finished the
        completion it is still computing for the abandoned call; other servers answer at
        once."""
        if stop.is_set():
            return
        try:
            self._llm.root_client.models.list(timeout=timeout)
        except Exception as exc:  # noqa: BLE001  (an unreachable endpoint shows on the next call)
            log.debug("endpoint not idle: %s", type(exc).__name__)

    def _probe_slots(self, call_done: threading.Event, call_end: list[float]) -> None:
        """While the first call is in flight: does ``GET /models`` wait for it? (see
        :class:`_Pacer`)."""
        if call_done.wait(0.3):
            return  # a fast call: nothing to learn, nothing to fear
        t0 = time.monotonic()
        try:
            self._llm.root_client.models.list(timeout=self._pacer.first_timeout)
        except Exception:  # noqa: BLE001
            return
        t1 = time.monotonic()
        if t1 - t0 < 0.2 and not call_done.is_set():
            self._pacer.saw_one_slot(False)  # answered at once while the completion runs
            return
        # A one-slot server answers the probe when it releases its lock, i.e. together with
        # the completion (a few ms before or after the client has read it).
        if call_done.wait(1.0) and call_end and abs(call_end[0] - t1) < 1.0:
            self._pacer.saw_one_slot(True)

    def _http(self, messages, request: TwinRequest, max_tokens: int | None,
              stop: threading.Event, meta: dict[str, Any]):
        """One chat completion through the pacer: a slot, the current timeout and structured
        mode (read once the slot is granted: a refusal may have changed it meanwhile), the
        slot probe on the first call to a local endpoint. ``meta`` receives ``mode``,
        ``seconds``, ``in_flight`` and ``timeout`` (also when the call raises)."""
        pacer = self._pacer
        in_flight = pacer.acquire(stop)
        if self._fatal:  # the breaker tripped while this call waited for its slot
            pacer.release()
            raise _Tripped
        meta["mode"] = mode = self._mode
        probe = None
        call_done, call_end = threading.Event(), []
        if not pacer.warmed and pacer.one_slot is None and self.settings.is_local:
            probe = threading.Thread(target=self._probe_slots, args=(call_done, call_end),
                                     name="twinarm-llm-probe", daemon=True)
            probe.start()
        meta["in_flight"] = in_flight
        meta["timeout"] = timeout = pacer.timeout()
        th = time.perf_counter()
        try:
            return self._call(messages, request.seed, mode, request, max_tokens, timeout)
        finally:
            meta["seconds"] = time.perf_counter() - th
            call_end.append(time.monotonic())
            call_done.set()
            if probe is not None:
                probe.join(5.0)
            pacer.release()

    def _run_one(self, request: TwinRequest, stop: threading.Event,
                 prepared: _Prepared | None = None) -> TwinResult:
        t0 = time.perf_counter()
        res = TwinResult(request, ok=False)
        try:
            self._attempts(request, stop, res, prepared)
        except _Cancelled:
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

    def _prepare(self, request: TwinRequest) -> _Prepared:
        """Messages, cache key and a valid cached reply (if any) of one twin. Raises
        :class:`PrivacyError` for a payload that is not pseudonymous."""
        s = self.settings
        messages = build_messages(request)
        key = cache_key(
            model=s.model, prompt_version=PROMPT_VERSION, messages=messages,
            schema=TWIN_REPLY_JSON_SCHEMA, temperature=s.temperature, seed=request.seed,
        )
        cached = None
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                cached, _ = validate_reply(hit["reply"], request)
        return _Prepared(messages, key, cached)

    def _attempts(self, request: TwinRequest, stop: threading.Event, res: TwinResult,
                  prepared: _Prepared | None = None) -> None:
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
                raise _Cancelled
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
            except _Cancelled:
                res.attempts -= 1
                raise
            except _Tripped:
                res.attempts -= 1
                continue
            except openai.RateLimitError as exc:
                res.http_seconds += meta.get("seconds", 0.0)
                pacer.answered(meta.get("seconds", 0.0), meta.get("in_flight", 1), False)
                limited += 1
                after = _retry_after_seconds(exc)
                note = f"HTTP 429 rate limited (attempt {res.attempts})"
                if limited > s.max_rate_limit_retries:
                    res.reason = RATE_LIMITED
                    res.errors = [(f"rate limited: HTTP 429 after {limited} attempts "
                                   f"({_status_message(exc)})")]
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
                msg = f"connection error: {_connection_reason(exc)}"
                if failures >= s.max_connection_failures:
                    self._trip(f"cannot reach the LLM endpoint {endpoint}: "
                               f"{_connection_reason(exc)} ({failures} attempts in a row); "
                               "is the server running?")
                    res.reason, res.errors = UNREACHABLE, [self._fatal or msg]
                    return
                if transport > s.max_retries:
                    res.reason, res.errors = ERROR, [f"{msg} ({res.attempts} attempts)"]
                    return
                res.notes.append(msg)
                if stop.wait(min(0.5 * transport, 5.0)):
                    raise _Cancelled
                continue
            except (openai.AuthenticationError, openai.PermissionDeniedError,
                    openai.NotFoundError) as exc:
                res.http_seconds += meta.get("seconds", 0.0)
                what = {401: "authentication failed", 403: "permission denied",
                        404: "model or endpoint not found"}.get(exc.status_code, "refused")
                self._trip(f"{what} (HTTP {exc.status_code}) at {endpoint}: "
                           f"{_status_message(exc)}")
                res.reason, res.errors = ERROR, [self._fatal]
                return
            except openai.APIStatusError as exc:
                res.http_seconds += meta.get("seconds", 0.0)
                pacer.answered(meta.get("seconds", 0.0), meta.get("in_flight", 1), False)
                if _is_response_format_rejection(exc):
                    res.notes.append(f"response_format {mode} rejected: {_status_message(exc)}")
                    if self._downgrade(mode):  # not counted as a retry
                        continue
                    res.reason = REJECTED
                    res.errors = [
                        f"the endpoint rejected response_format {mode} (HTTP "
                        f"{exc.status_code}): {_status_message(exc)}"
                        + ("; set structured='auto' to fall back to JSON mode"
                           if s.structured != "auto" else "")
                    ]
                    return
                if exc.status_code >= 500 or exc.status_code == 408:
                    transport += 1
                    msg = f"HTTP {exc.status_code}: {_status_message(exc)}"
                    if transport > s.max_retries:
                        res.reason, res.errors = ERROR, [f"{msg} ({res.attempts} attempts)"]
                        return
                    res.notes.append(msg)
                    if stop.wait(min(0.5 * transport, 5.0)):
                        raise _Cancelled
                    continue
                res.reason = REJECTED
                res.errors = [f"HTTP {exc.status_code}: {_status_message(exc)}"]
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
        with self._mode_lock:
            if self._fatal is None:
                self._fatal = message
                log.info("LLM run stopped: %s", message)


def _connection_reason(exc: Exception) -> str:
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


def _cancel_checker(cancel: threading.Event | Callable[[], bool] | None) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise TypeError("cancel must be a threading.Event or a callable returning bool")
