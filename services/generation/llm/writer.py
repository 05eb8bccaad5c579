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

The parts: :mod:`.results` (what a twin and a run produce), :mod:`.pacing` (rate limit, calls
in flight, timeouts), :mod:`.structured` (structured-output negotiation), :mod:`.attempts`
(one twin's retry loop, circuit breaker), :mod:`.lanes` (scheduling), :mod:`.errors`.
"""


from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self

import httpx
import openai
from langchain_openai import ChatOpenAI

from services.generation.llm.attempts import TwinAttempts
from services.generation.llm.cache import ReplyCache, cache_key
from services.generation.llm.errors import LLMUnavailableError, RemoteEndpointError, status_message
from services.generation.llm.lanes import cancel_checker, run_lanes
from services.generation.llm.pacing import (
    FIRST_CALL_S_PER_TOKEN,
    FIRST_CALL_TIMEOUT_S,
    Pacer,
    RateLimiter,
    Tripped,
)
from services.generation.llm.prompt import PROMPT_VERSION, TwinRequest, build_messages
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
    RunUsage,
    TwinResult,
)
from services.generation.llm.schema import TWIN_REPLY_JSON_SCHEMA, validate_reply
from services.generation.llm.settings import LLMSettings, redact_url
from services.generation.llm.structured import StructuredMode, content_text
from services.generation.llm.structured import max_tokens as reply_max_tokens

log = logging.getLogger("twinarm.llm")

__all__ = [
    "CACHED", "CANCELLED", "ERROR", "FIRST_CALL_S_PER_TOKEN", "FIRST_CALL_TIMEOUT_S", "INVALID",
    "OK", "RATE_LIMITED", "REFUSED", "REJECTED", "TIMEOUT", "UNREACHABLE", "LLMTwinWriter",
    "LLMUnavailableError", "RemoteEndpointError", "RunUsage", "TwinResult",
]


class LLMTwinWriter(TwinAttempts):
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
        self._structured = StructuredMode(settings)
        self._fatal_lock = threading.Lock()
        self._limiter = RateLimiter(settings.requests_per_minute)
        self._fatal: str | None = None
        self._pacer = Pacer(settings, FIRST_CALL_TIMEOUT_S)
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
        return self._structured.current

    @property
    def _mode(self) -> str:
        return self._structured.current

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
                    "message": f"HTTP {exc.status_code}: {status_message(exc)}"}
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
        stop = threading.Event()
        is_cancelled = cancel_checker(cancel)
        log.info(
            "LLM run: %d twins, model=%s, endpoint=%s, concurrency=%d",
            n, self.settings.model, redact_url(self.settings.effective_base_url),
            self.settings.concurrency,
        )
        if reqs and not self._pacer.warmed:
            budget = max((self._max_tokens(r) or 0) for r in reqs)
            self._pacer.first_timeout = max(self._pacer.first_timeout,
                                            FIRST_CALL_S_PER_TOKEN * budget)
        workers = max(1, min(self.settings.concurrency, n))
        results, sched = run_lanes(reqs, workers, self._run_one, self._prepare, stop,
                                   is_cancelled, progress)
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

    # -- one call -----------------------------------------------------------------------------
    def _max_tokens(self, request: TwinRequest) -> int | None:
        return reply_max_tokens(self.settings, request)

    def _call(self, messages: list[tuple[str, str]], seed: int | None, mode: str,
              request: TwinRequest | None = None, max_tokens: int | None = None,
              timeout: float | None = None):
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if seed is not None:
            kwargs["seed"] = int(seed)
        rf = self._structured.response_format(mode, request)
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
        text = content_text(msg)
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
        :class:`Pacer`)."""
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
            raise Tripped
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

    def _prepare(self, request: TwinRequest) -> Prepared:
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
        return Prepared(messages, key, cached)
