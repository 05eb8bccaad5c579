"""Pacing of the calls to one endpoint: the rate limit (requests per minute, a shared pause
after HTTP 429), how many calls may be in flight and how long one may take (learned from the
endpoint), and the circuit breaker's counters."""

from __future__ import annotations

import logging
import threading
import time

from services.generation.llm.settings import LLMSettings

log = logging.getLogger("twinarm.llm")

# before any reply, a call to a local endpoint may take this long (a small model on a small
# CPU: about a minute per twin), or longer when the reply may be long (seconds per token)
FIRST_CALL_TIMEOUT_S = 300.0
FIRST_CALL_S_PER_TOKEN = 0.35


class Cancelled(Exception):
    """The run was cancelled (or stopped) while this call waited."""


class Tripped(Exception):
    """The circuit breaker tripped: no more calls in this run."""


class RateLimiter:
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
        """Block until a call may start; returns seconds waited. Raises Cancelled."""
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
                raise Cancelled
            waited += time.perf_counter() - t


class Pacer:
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
                    raise Cancelled
                self.cond.wait(0.1)
            if stop.is_set():
                raise Cancelled
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
