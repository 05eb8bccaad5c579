"""What one twin and one run of the writer produce: the reasons, :class:`TwinResult`,
:class:`RunUsage`, and :class:`Prepared` (what a twin needs before its first call)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from services.generation.llm.prompt import PROMPT_VERSION, TwinRequest
from services.generation.llm.schema import TwinReply
from services.generation.llm.settings import LLMSettings, redact_url

# reasons (TwinResult.reason)
OK, CACHED = "ok", "cached"
TIMEOUT, RATE_LIMITED, INVALID = "timeout", "rate limited", "invalid reply"
CANCELLED, REFUSED, REJECTED, ERROR = "cancelled", "refused", "rejected", "error"
UNREACHABLE = "endpoint unreachable"


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


@dataclass
class Prepared:
    """What a twin needs before its first call (see ``LLMTwinWriter._prepare``)."""

    messages: list[tuple[str, str]]
    key: str
    cached: TwinReply | None = None
