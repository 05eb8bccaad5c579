"""What the model must return for one twin, and its validation against the request.

The reply is checked against the request's *required block* (see
:meth:`services.generation.llm.prompt.TwinRequest.required`)::

    {"visits": [{"paramcd": "ADAS11", "avisitn": [4, 8, 12], "min": 0, "max": 70}, ...],
     "events": [{"paramcd": "TTDISC", "max_days": 365}, ...]}

Rules: every required (paramcd, avisitn) exactly once with a finite value inside
[min, max]; every required time-to-event parameter exactly once with 0 < aval <= max_days and
cnsr in {0, 1}. Entries that were not asked for are dropped (not an error). Errors are short
sentences naming the parameter, visit and value, meant to be fed back to the model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.generation.llm.numbers import number_pattern

RATIONALE_MAX_CHARS = 500
MAX_ERRORS = 20  # feedback is truncated beyond this many sentences


class VisitValue(BaseModel):
    model_config = ConfigDict(extra="ignore")
    paramcd: str
    avisitn: float
    aval: float


class EventValue(BaseModel):
    model_config = ConfigDict(extra="ignore")
    paramcd: str
    aval: float = Field(description="days from randomisation to event or censoring")
    cnsr: int = Field(description="0 = event observed, 1 = censored at aval")


class AEValue(BaseModel):
    model_config = ConfigDict(extra="ignore")
    term: str
    day: float | None = Field(default=None, description="study day of onset")


class TwinReply(BaseModel):
    """One generated twin: post-baseline visit values, time-to-event outcomes and adverse
    events."""

    model_config = ConfigDict(extra="ignore")
    visits: list[VisitValue] = Field(default_factory=list)
    events: list[EventValue] = Field(default_factory=list)
    adverse_events: list[AEValue] | None = None   # None: the reply has no such field
    rationale: str = ""

    @field_validator("rationale", mode="before")
    @classmethod
    def _short_rationale(cls, v: Any) -> str:
        if v is None:
            return ""
        s = str(v).strip()
        return s if len(s) <= RATIONALE_MAX_CHARS else s[: RATIONALE_MAX_CHARS - 3] + "..."

    def visit_values(self) -> dict[tuple[str, float], float]:
        """{(paramcd, avisitn): aval}."""
        return {(v.paramcd, v.avisitn): v.aval for v in self.visits}

    def event_values(self) -> dict[str, tuple[float, int]]:
        """{paramcd: (aval, cnsr)}."""
        return {e.paramcd: (e.aval, e.cnsr) for e in self.events}


def _strict_object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


# Strict JSON schema (OpenAI structured outputs: every property required, no extras).
TWIN_REPLY_JSON_SCHEMA: dict[str, Any] = _strict_object(
    {
        "visits": {
            "type": "array",
            "items": _strict_object(
                {
                    "paramcd": {"type": "string"},
                    "avisitn": {"type": "number"},
                    "aval": {"type": "number"},
                }
            ),
        },
        "events": {
            "type": "array",
            "items": _strict_object(
                {
                    "paramcd": {"type": "string"},
                    "aval": {"type": "number", "description": "days"},
                    "cnsr": {"type": "integer", "enum": [0, 1]},
                }
            ),
        },
        "adverse_events": {
            "type": "array",
            "items": _strict_object(
                {
                    "term": {"type": "string"},
                    "day": {"type": ["number", "null"], "description": "study day of onset"},
                }
            ),
        },
        "rationale": {"type": "string", "description": "one or two short sentences"},
    }
)

SCHEMA_NAME = "twin_reply"


def response_format_json_schema() -> dict[str, Any]:
    """``response_format`` for OpenAI structured outputs (strict)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": TWIN_REPLY_JSON_SCHEMA},
    }


RESPONSE_FORMAT_JSON_MODE: dict[str, Any] = {"type": "json_object"}

# The rationale asked of a grammar-constrained model (JSON mode with a schema) is short: every
# character is a token the server has to decode, at a few tokens per second on a small CPU.
CONSTRAINED_RATIONALE_MAX_CHARS = 120


def _bounded_number(lo: float | None, hi: float | None) -> dict[str, Any]:
    """A number as the reply's schema asks a grammar-constrained model for it: a string of
    bounded digits (read back as a number by the validation), else a JSON number."""
    pattern = number_pattern(lo, hi)
    return {"type": "string", "pattern": pattern} if pattern else {"type": "number"}


def request_json_schema(request: Any) -> dict[str, Any]:
    """A JSON schema of the one reply that fits ``request``: every required visit and event as a
    fixed tuple entry whose ``paramcd`` / ``avisitn`` are constants, so that a server that turns a
    schema into a grammar (llama.cpp, llama-cpp-python: ``{"type": "json_object", "schema": ...}``)
    can only produce a complete, parseable reply; the model chooses the numbers (with digits
    bounded by the plausible range, :func:`number_pattern`; the range itself is still checked
    by :func:`validate_reply`) and a short rationale."""
    req = _required_block(request)
    visits: list[dict[str, Any]] = []
    for spec in req.get("visits", []) or []:
        avs = spec["avisitn"] if isinstance(spec["avisitn"], (list, tuple)) else [spec["avisitn"]]
        for av in avs:
            visits.append(_strict_object({"paramcd": {"const": str(spec["paramcd"])},
                                          "avisitn": {"const": av},
                                          "aval": _bounded_number(spec.get("min"),
                                                                  spec.get("max"))}))
    events = [_strict_object({"paramcd": {"const": str(spec["paramcd"])},
                              "aval": _bounded_number(1, spec.get("max_days")),
                              "cnsr": {"enum": [0, 1]}})
              for spec in req.get("events", []) or []]
    properties: dict[str, Any] = {
        "visits": {"type": "array", "prefixItems": visits,
                   "minItems": len(visits), "maxItems": len(visits)},
        "events": {"type": "array", "prefixItems": events,
                   "minItems": len(events), "maxItems": len(events)},
    }
    aes = req.get("adverse_events") or None
    if aes and aes.get("terms"):   # only when asked: llama.cpp's grammar of an empty array
        day = (_bounded_number(1, aes["max_day"]) if aes.get("max_day") else {"type": "null"})
        properties["adverse_events"] = {   # without items let Gemma write ["-", "-", ...]
            "type": "array", "maxItems": int(aes.get("max_count") or 15),
            "items": _strict_object({"term": {"enum": list(aes["terms"])}, "day": day})}
    properties["rationale"] = {"type": "string", "maxLength": CONSTRAINED_RATIONALE_MAX_CHARS}
    return _strict_object(properties)


def response_format_json_mode(request: Any | None = None) -> dict[str, Any]:
    """``{"type": "json_object"}``, with the request's schema (:func:`request_json_schema`)
    when a request is given: servers that know the ``schema`` key constrain the reply with it,
    the others ignore it."""
    if request is None:
        return dict(RESPONSE_FORMAT_JSON_MODE)
    return {"type": "json_object", "schema": request_json_schema(request)}


# tokens of one visit / event entry in a reply (``{"paramcd":"ALB","avisitn":12,"aval":3.41},``)
# with common tokenizers: ~15-20; bounded generously
_TOKENS_PER_ENTRY = 28
_TOKENS_RATIONALE = 160


def reply_token_budget(request: Any) -> int:
    """``max_tokens`` for one reply: about twice the size of a complete reply to ``request``,
    so that a model that loops stops long before it fills its context, while a valid reply
    (with whitespace and a rationale) always fits."""
    req = _required_block(request)
    entries = sum(
        len(s["avisitn"]) if isinstance(s["avisitn"], (list, tuple)) else 1
        for s in req.get("visits", []) or []
    ) + len(req.get("events", []) or [])
    aes = req.get("adverse_events") or {}
    if aes.get("terms"):
        entries += int(aes.get("max_count") or 15)  # an AE entry is no longer than a visit's
    return int(64 + _TOKENS_RATIONALE + _TOKENS_PER_ENTRY * entries)


# -- parsing ---------------------------------------------------------------------------------
_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def parse_json_text(text: str) -> Any:
    """JSON from a model's text: tolerates a markdown fence or prose around one object.

    Raises ``ValueError`` with a short reason when no JSON object can be read.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected text, got {type(text).__name__}")
    s = text.strip()
    if not s:
        raise ValueError("the reply is empty")
    m = _FENCE.match(s)
    if m:
        s = m.group(1).strip()
    try:
        return json.loads(s)
    except json.JSONDecodeError as exc:
        first_error = exc
    start, end = s.find("{"), s.rfind("}")
    if 0 <= start < end:
        try:
            return json.loads(s[start : end + 1])
        except json.JSONDecodeError:
            pass
    raise ValueError(f"the reply is not valid JSON ({first_error.msg} at char {first_error.pos})")


# -- validation ------------------------------------------------------------------------------
def _required_block(request: Any) -> Mapping[str, Any]:
    if hasattr(request, "required") and callable(request.required):
        return request.required()
    if isinstance(request, Mapping):
        if "required" in request and isinstance(request["required"], Mapping):
            return request["required"]
        return request
    raise TypeError("request must be a TwinRequest or a required-block mapping")


def _vkey(x: float) -> float:
    return round(float(x), 6)


def _fmt(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def validate_reply(obj: Any, request: Any) -> tuple[TwinReply | None, list[str]]:
    """Check a reply (raw text, dict or :class:`TwinReply`) against the request.

    Returns ``(reply, [])`` with a reply restricted to the requested entries, in request
    order, or ``(None, errors)``.
    """
    req = _required_block(request)
    if isinstance(obj, TwinReply):
        reply = obj
    else:
        data = obj
        if isinstance(obj, (str, bytes)):
            try:
                data = parse_json_text(obj.decode() if isinstance(obj, bytes) else obj)
            except (ValueError, UnicodeDecodeError) as exc:
                msg = str(exc)
                return None, [msg[:1].upper() + msg[1:] + "."]
        if not isinstance(data, Mapping):
            return None, [f"The reply must be a JSON object, got {type(data).__name__}."]
        if not req.get("adverse_events") and "adverse_events" in data:
            # not asked for: whatever the model wrote there is ignored, not an error
            data = {k: v for k, v in data.items() if k != "adverse_events"}
        try:
            reply = TwinReply.model_validate(data)
        except ValidationError as exc:
            errs = []
            for e in exc.errors()[:MAX_ERRORS]:
                loc = ".".join(str(p) for p in e["loc"])
                errs.append(f"Field {loc}: {e['msg']} (got {e.get('input')!r:.60}).")
            return None, errs

    errors: list[str] = []
    # visits
    seen: dict[tuple[str, float], list[float]] = {}
    for v in reply.visits:
        seen.setdefault((v.paramcd.strip().upper(), _vkey(v.avisitn)), []).append(v.aval)
    kept_visits: list[VisitValue] = []
    for spec in req.get("visits", []) or []:
        pcd = str(spec["paramcd"])
        lo, hi = spec.get("min"), spec.get("max")
        visits = spec["avisitn"]
        if not isinstance(visits, (list, tuple)):
            visits = [visits]
        for av in visits:
            vals = seen.get((pcd.upper(), _vkey(av)))
            where = f"{pcd} at visit {_fmt(float(av))}"
            if not vals:
                errors.append(f"Missing value for {where}.")
                continue
            if len(vals) > 1:
                errors.append(
                    f"{where} appears {len(vals)} times ({', '.join(_fmt(x) for x in vals)}); "
                    "give it exactly once."
                )
                continue
            val = vals[0]
            if not math.isfinite(val):
                errors.append(f"Value for {where} is not a finite number ({val}).")
                continue
            if (lo is not None and val < lo) or (hi is not None and val > hi):
                errors.append(
                    f"Value {_fmt(val)} for {where} is outside the plausible range "
                    f"[{_fmt(float(lo)) if lo is not None else '-inf'}, "
                    f"{_fmt(float(hi)) if hi is not None else 'inf'}]."
                )
                continue
            kept_visits.append(VisitValue(paramcd=pcd, avisitn=float(av), aval=val))
    # events
    ev_seen: dict[str, list[EventValue]] = {}
    for e in reply.events:
        ev_seen.setdefault(e.paramcd.strip().upper(), []).append(e)
    kept_events: list[EventValue] = []
    for spec in req.get("events", []) or []:
        pcd = str(spec["paramcd"])
        max_days = spec.get("max_days")
        evs = ev_seen.get(pcd.upper())
        if not evs:
            errors.append(f"Missing time-to-event outcome {pcd}.")
            continue
        if len(evs) > 1:
            errors.append(f"Time-to-event outcome {pcd} appears {len(evs)} times; give it once.")
            continue
        e = evs[0]
        bad = False
        if not math.isfinite(e.aval) or e.aval <= 0 or (
            max_days is not None and e.aval > float(max_days)
        ):
            limit = _fmt(float(max_days)) if max_days is not None else "inf"
            errors.append(
                f"Time-to-event {pcd}: aval {_fmt(e.aval)} days must be in (0, {limit}]."
            )
            bad = True
        if e.cnsr not in (0, 1):
            errors.append(
                f"Time-to-event {pcd}: cnsr must be 0 (event) or 1 (censored), got {e.cnsr}."
            )
            bad = True
        if not bad:
            kept_events.append(EventValue(paramcd=pcd, aval=e.aval, cnsr=e.cnsr))

    kept_aes = _check_adverse_events(reply, req, kept_events, errors)

    if errors:
        if len(errors) > MAX_ERRORS:
            extra = len(errors) - MAX_ERRORS
            errors = errors[:MAX_ERRORS] + [f"... and {extra} more problems."]
        return None, errors
    return TwinReply(visits=kept_visits, events=kept_events, adverse_events=kept_aes,
                     rationale=reply.rationale), []


def _check_adverse_events(reply: TwinReply, req: Mapping[str, Any], events: list[EventValue],
                          errors: list[str]) -> list[AEValue]:
    """The reply's adverse events when the request asks for them (else none): terms of the
    request's list only (spelling as listed, case aside), onset days in [1, max_day] and not
    after the twin's own last event or censoring time, at most max_count. Appends errors."""
    spec = req.get("adverse_events") or None
    if not spec:
        return []
    canonical = {str(t).strip().upper(): str(t) for t in spec.get("terms") or []}
    max_day, max_count = spec.get("max_day"), int(spec.get("max_count") or 15)
    end = max((e.aval for e in events), default=None)
    if reply.adverse_events is None:   # a forgotten field would count as "no AE" silently
        errors.append("Missing adverse_events: list the twin's adverse events ([] when it has none).")
        return []
    if len(reply.adverse_events) > max_count:
        errors.append(f"{len(reply.adverse_events)} adverse events listed; give at most "
                      f"{max_count} (the first onset of each term).")
        return []
    kept: list[AEValue] = []
    for ae in reply.adverse_events:
        term = canonical.get(ae.term.strip().upper())
        if term is None:
            errors.append(f"Adverse event {ae.term!r:.60} is not a term of this trial; use one of "
                          "required.adverse_events.terms exactly.")
            continue
        day = ae.day
        if max_day is not None:
            if day is None or not math.isfinite(day) or day < 1 or day > float(max_day):
                errors.append(f"Adverse event {term}: onset day {_fmt(day) if day is not None else 'null'} "
                              f"must be in [1, {_fmt(float(max_day))}].")
                continue
            if end is not None and day > end:
                errors.append(f"Adverse event {term}: onset day {_fmt(day)} is after the twin's end of "
                              f"follow-up (day {_fmt(float(end))}, its last event or censoring time).")
                continue
            day = float(round(day))
        else:
            day = None
        kept.append(AEValue(term=term, day=day))
    # the first onset of each term (as the neighbours' histories show them)
    first: dict[str, AEValue] = {}
    for ae in sorted(kept, key=lambda a: (a.day is None, a.day or 0.0)):
        first.setdefault(ae.term, ae)
    return list(first.values())
