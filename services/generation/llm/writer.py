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
    RESPONSE_FORMAT_JSON_MODE,
    TWIN_REPLY_JSON_SCHEMA,
    TwinReply,
    response_format_json_schema,
    validate_reply,
)
from .settings import LLMSettings, redact_url

log = logging.getLogger("twinarm.llm")

# reasons (TwinResult.reason)
OK, CACHED = "ok", "cached"
TIMEOUT, RATE_LIMITED, INVALID = "timeout", "rate limited", "invalid reply"
CANCELLED, REFUSED, REJECTED, ERROR = "cancelled", "refused", "rejected", "error"

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
    if not isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError)):
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
        done = 0
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
                    try:
                        item = finished.get_nowait()
                    except queue.Empty:
                        item = None
                done += got
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
    def _response_format(self, mode: str) -> dict[str, Any] | None:
        if mode == "json_schema":
            return response_format_json_schema()
        if mode == "json_mode":
            return RESPONSE_FORMAT_JSON_MODE
        return None

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
            log.warning("endpoint rejected response_format %s; falling back to %s",
                        used, self._mode)
            return True

    def _call(self, messages: list[tuple[str, str]], seed: int | None, mode: str):
        kwargs: dict[str, Any] = {}
        if seed is not None:
            kwargs["seed"] = int(seed)
        rf = self._response_format(mode)
        if rf is not None:
            # The same JSON on the wire as `response_format=rf`, but passed through untouched:
            # given as a parameter, the OpenAI client walks the whole schema with its type
            # transforms and LangChain takes the `parse` path, together about 1.5 ms of CPU
            # per call under the interpreter lock that the concurrent calls share. Replies
            # are parsed and validated here whatever the mode.
            kwargs["extra_body"] = {"response_format": rf}
        msg = self._llm.invoke(messages, **kwargs)
        refusal = (getattr(msg, "additional_kwargs", None) or {}).get("refusal")
        text = _content_text(msg)
        usage = getattr(msg, "usage_metadata", None) or {}
        return text, refusal, int(usage.get("input_tokens") or 0), int(
            usage.get("output_tokens") or 0
        )

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
        if not res.ok and res.reason != CANCELLED:
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
        if prepared is None:
            prepared = self._prepare(request)
        base_messages, key = prepared.messages, prepared.key
        if prepared.cached is not None:
            res.ok, res.reply, res.cached, res.reason = True, prepared.cached, True, CACHED
            return
        messages = base_messages
        invalid = transport = limited = 0
        while True:
            if stop.is_set():
                raise _Cancelled
            if self._fatal:
                res.reason, res.errors = ERROR, [self._fatal]
                return
            res.wait_seconds += self._limiter.acquire(stop)
            mode = self._mode
            res.structured = mode
            res.attempts += 1
            th = time.perf_counter()
            try:
                text, refusal, tin, tout = self._call(messages, request.seed, mode)
            except openai.RateLimitError as exc:
                res.http_seconds += time.perf_counter() - th
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
                res.http_seconds += time.perf_counter() - th
                transport += 1
                msg = f"timeout: no reply within {s.timeout_s:g} s"
                if transport > s.max_retries:
                    res.reason, res.errors = TIMEOUT, [f"{msg} ({res.attempts} attempts)"]
                    return
                res.notes.append(msg)
                continue
            except openai.APIConnectionError as exc:
                res.http_seconds += time.perf_counter() - th
                transport += 1
                msg = f"connection error: {exc}"
                if transport > s.max_retries:
                    res.reason, res.errors = ERROR, [f"{msg} ({res.attempts} attempts)"]
                    return
                res.notes.append(msg)
                if stop.wait(min(0.5 * transport, 5.0)):
                    raise _Cancelled
                continue
            except (openai.AuthenticationError, openai.PermissionDeniedError,
                    openai.NotFoundError) as exc:
                res.http_seconds += time.perf_counter() - th
                what = {401: "authentication failed", 403: "permission denied",
                        404: "model or endpoint not found"}.get(exc.status_code, "refused")
                self._fatal = (f"{what} (HTTP {exc.status_code}) at "
                               f"{redact_url(s.effective_base_url)}: {_status_message(exc)}")
                res.reason, res.errors = ERROR, [self._fatal]
                return
            except openai.APIStatusError as exc:
                res.http_seconds += time.perf_counter() - th
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
                res.http_seconds += time.perf_counter() - th
                text, refusal, tin, tout = None, None, 0, 0
                errs = ["The reply was cut off (length limit); answer more concisely."]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # not an OpenAI chat completion (an HTML page, a missing "choices"...)
                res.http_seconds += time.perf_counter() - th
                transport += 1
                msg = ("unexpected response from the endpoint (not an OpenAI chat "
                       f"completion): {str(exc)[:200]}")
                if transport > s.max_retries:
                    res.reason, res.errors = ERROR, [f"{msg} ({res.attempts} attempts)"]
                    return
                res.notes.append(msg)
                continue
            else:
                res.http_seconds += time.perf_counter() - th
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
            # invalid reply: feed the errors back
            invalid += 1
            if invalid > s.max_retries:
                res.reason, res.errors = INVALID, list(errs)
                return
            res.notes.append(f"attempt {res.attempts}: " + " ".join(errs)[:300])
            messages = build_messages(request, feedback_errors=errs, previous_reply=text)


def _cancel_checker(cancel: threading.Event | Callable[[], bool] | None) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise TypeError("cancel must be a threading.Event or a callable returning bool")
