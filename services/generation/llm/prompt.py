"""Prompt of the TWIN-GPT style generator: one request per twin, as plain data.

A :class:`TwinRequest` carries only pseudonymous keys ("P17", "N1", ...) and study days: the
caller maps real subject ids to keys and keeps the mapping. :func:`build_messages` refuses a
payload that contains a calendar date (2014-01-02, 02/01/2014, 02JAN2014) or a date object.

The user message is compact JSON with a machine-readable ``required`` block (see
:meth:`TwinRequest.required`) that the validator (:func:`services.generation.llm.schema.validate_reply`)
and the scripted test server both read.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PROMPT_VERSION = "twin-gpt-v2"  # v2: adverse events

SYSTEM_PROMPT = """\
You are a clinical trial simulation engine that generates digital twins (TWIN-GPT method).
You receive ONE real patient, identified only by a pseudonymous key, with baseline covariates \
and baseline measurements; the trial and the target arm; a data dictionary; and similar \
patients ("neighbours") from the same trial with their observed post-baseline trajectories \
under the target arm.
Task: produce one plausible post-baseline course of THIS patient as if treated in the target arm.
Rules:
- Start from the patient's own baseline. Values evolve from it the way the neighbours' values \
evolve from theirs (change from baseline), giving more weight to more similar neighbours.
- Keep realistic visit-to-visit variability and measurement noise. Do not smooth everything to \
a mean and never copy a neighbour's values exactly.
- If "reference_forecast" is given (a statistical model's prediction), use it as an anchor for \
the expected value and add individual variability around it.
- Respect units and stay inside each parameter's plausible range.
- Fill every entry of "required": each (paramcd, avisitn) exactly once; each time-to-event \
parameter exactly once with aval = days from randomisation (0 < aval <= max_days) and \
cnsr = 0 if the event occurs at aval or 1 if the patient is censored at aval.
- If "required" has "adverse_events": list the twin's adverse events after randomisation, \
each as {"term": one of required.adverse_events.terms spelt exactly, "day": study day of onset, \
1 <= day <= max_day}, at most max_count; an empty list when the twin has none. The neighbours' \
"adverse_events" ([term, onset day]) show what similar patients had under the target arm.
- "twin_index" numbers independent twins of the same patient: each is an independent draw.
- rationale: one or two short sentences, no identifiers.
Answer with one JSON object only, no prose and no markdown:
{"visits":[{"paramcd":str,"avisitn":number,"aval":number}],\
"events":[{"paramcd":str,"aval":number,"cnsr":0|1}],\
"adverse_events":[{"term":str,"day":number}],"rationale":str}"""

FEEDBACK_TEMPLATE = """\
Your previous reply was rejected:
{errors}
Return the complete corrected JSON object (all required entries), nothing else."""

DATE_PATTERNS = (
    re.compile(r"(?<!\d)(1[89]|20)\d{2}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(?!\d)"),
    re.compile(r"(?<!\d)(0?[1-9]|[12]\d|3[01])[/.](0?[1-9]|1[0-2])[/.](1[89]|20)\d{2}(?!\d)"),
    re.compile(r"(?<!\d)(0?[1-9]|1[0-2])/(0?[1-9]|[12]\d|3[01])/(1[89]|20)\d{2}(?!\d)"),
    re.compile(
        r"(?<![0-9A-Za-z])\d{1,2}(JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)"
        r"(1[89]|20)\d{2}(?![0-9A-Za-z])",
        re.IGNORECASE,
    ),
)


class PrivacyError(ValueError):
    """The payload would send something that is not pseudonymous (a calendar date...)."""


@dataclass
class TwinRequest:
    """Everything the model sees about one twin (plain data, JSON-serialisable).

    - ``data_dictionary``: ``[{paramcd, label, unit, min, max, visits: [{avisitn, avisit,
      ady}]}]``; ``min``/``max`` are observed in the knowledge base; ``visits`` are the
      post-baseline visits to generate (a visit without ``avisitn`` is keyed by ``ady``).
    - ``plausible_ranges``: ``{paramcd: (lo, hi)}``; when a parameter is missing, the range is
      the observed [min, max] widened by half its span on each side (not below 0 when the
      observed minimum is >= 0).
    - ``baseline``: ``{"covariates": {...}, "values": {paramcd: value}}``.
    - ``neighbours``: ``[{key, similarity, covariates, baseline, trajectory: {paramcd:
      [[avisitn, aval], ...]}, events: {paramcd: [aval, cnsr]}}]``.
    - ``tte``: ``[{paramcd, label, max_days}]``.
    - ``reference_forecast``: optional ``{paramcd: [[avisitn, aval], ...]}`` (hybrid mode).
    - ``adverse_events``: optional ``{terms: [...], max_day, max_count}``: the twin lists its
      AEs from these terms (`services.generation.llm.adverse`).
    """

    source_key: str
    twin_index: int
    target_arm: str
    trial: dict[str, Any] = field(default_factory=dict)
    data_dictionary: list[dict[str, Any]] = field(default_factory=list)
    plausible_ranges: dict[str, Sequence[float]] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    neighbours: list[dict[str, Any]] = field(default_factory=list)
    tte: list[dict[str, Any]] = field(default_factory=list)
    reference_forecast: dict[str, list[Sequence[float]]] | None = None
    adverse_events: dict[str, Any] | None = None
    seed: int | None = None

    def plausible_range(self, paramcd: str) -> tuple[float | None, float | None]:
        if paramcd in self.plausible_ranges:
            lo, hi = self.plausible_ranges[paramcd]
            return (_num_or_none(lo), _num_or_none(hi))
        for entry in self.data_dictionary:
            if entry.get("paramcd") == paramcd:
                return widen_range(_num_or_none(entry.get("min")), _num_or_none(entry.get("max")))
        return (None, None)

    def required(self) -> dict[str, Any]:
        """The machine-readable block of what the reply must contain."""
        visits = []
        for entry in self.data_dictionary:
            pcd = str(entry["paramcd"])
            keys: list[float] = []
            for v in entry.get("visits") or []:
                k = v.get("avisitn")
                if k is None or (isinstance(k, float) and math.isnan(k)):
                    k = v.get("ady")
                if k is None:
                    continue
                k = _compact_number(float(k))
                if k not in keys:
                    keys.append(k)
            if not keys:
                continue
            lo, hi = self.plausible_range(pcd)
            item: dict[str, Any] = {"paramcd": pcd, "avisitn": keys}
            item["min"] = None if lo is None else _compact_number(lo)
            item["max"] = None if hi is None else _compact_number(hi)
            visits.append(item)
        events = [
            {"paramcd": str(t["paramcd"]),
             "max_days": _compact_number(float(t["max_days"])) if t.get("max_days") else None}
            for t in self.tte
        ]
        out = {"visits": visits, "events": events}
        if self.adverse_events:
            out["adverse_events"] = dict(self.adverse_events)
        return out

    def payload(self) -> dict[str, Any]:
        """The JSON context sent as the user message (before sanitising)."""
        dd = []
        for entry in self.data_dictionary:
            e = {k: entry.get(k) for k in ("paramcd", "label", "unit") if entry.get(k) is not None}
            if entry.get("min") is not None:
                e["observed_min"] = entry.get("min")
            if entry.get("max") is not None:
                e["observed_max"] = entry.get("max")
            e["visits"] = [
                {k: v.get(k) for k in ("avisitn", "avisit", "ady") if v.get(k) is not None}
                for v in entry.get("visits") or []
            ]
            dd.append(e)
        out: dict[str, Any] = {
            "prompt_version": PROMPT_VERSION,
            "trial": self.trial,
            "target_arm": self.target_arm,
            "patient": {
                "key": self.source_key,
                "twin_index": self.twin_index,
                "baseline": self.baseline,
            },
            "data_dictionary": dd,
            "time_to_event": self.tte,
            "neighbours": self.neighbours,
        }
        if self.reference_forecast:
            out["reference_forecast"] = self.reference_forecast
        out["required"] = self.required()
        return out


def build_messages(
    request: TwinRequest,
    feedback_errors: Sequence[str] | None = None,
    previous_reply: str | None = None,
) -> list[tuple[str, str]]:
    """``[(role, content), ...]`` for one twin.

    With ``feedback_errors`` (a retry), the previous reply (if given) and the validation errors
    are appended as an assistant turn and a user turn. Raises :class:`PrivacyError` when the
    payload contains a calendar date or a date object.
    """
    payload = sanitize(request.payload())
    user = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    _check_text_has_no_dates(user, payload)
    messages = [("system", SYSTEM_PROMPT), ("user", user)]
    if feedback_errors:
        if previous_reply is not None:
            messages.append(("assistant", _clip(previous_reply, 20_000)))
        text = "\n".join(f"- {e}" for e in feedback_errors)
        messages.append(("user", FEEDBACK_TEMPLATE.format(errors=text)))
    return messages


# -- helpers ---------------------------------------------------------------------------------
def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n] + " ...[truncated]"


def _num_or_none(x: Any) -> float | None:
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def widen_range(lo: float | None, hi: float | None) -> tuple[float | None, float | None]:
    """The plausible range told to the model: the observed range widened by half its span on
    each side, not below 0 for a quantity never observed below 0."""
    if lo is None or hi is None:
        return (lo, hi)
    span = hi - lo
    if span <= 0:
        span = abs(hi) or 1.0
    wlo, whi = lo - span / 2, hi + span / 2
    if lo >= 0:
        wlo = max(0.0, wlo)
    return (wlo, whi)


def _compact_number(x: float) -> float | int:
    if math.isfinite(x) and float(x).is_integer() and abs(x) < 1e15:
        return int(x)
    return float(f"{x:.6g}")


def sanitize(obj: Any, path: str = "$") -> Any:
    """Plain JSON types: numpy scalars to Python, NaN to null, floats to 6 significant
    digits, tuples to lists. Date/time objects raise :class:`PrivacyError`.

    Plain dicts, lists, text and numbers take a fast path without path bookkeeping (this runs
    once per twin on the critical path of every LLM call); the path of a date is worked out
    only when one is found."""
    try:
        return _clean(obj)
    except _DateFound:
        return _sanitize_with_path(obj, path)  # raises PrivacyError naming the path


class _DateFound(Exception):
    pass


def _clean(obj: Any) -> Any:
    t = type(obj)
    if t is str or t is bool or obj is None:
        return obj
    if t is float:
        return _compact_number(obj) if math.isfinite(obj) else None
    if t is int:
        return obj
    if t is dict:
        return {k if type(k) is str else str(k): _clean(v) for k, v in obj.items()}
    if t is list or t is tuple:
        return [_clean(v) for v in obj]
    if _is_date_object(obj):
        raise _DateFound
    return _sanitize_with_path(obj, "$", clean=_clean)


def _is_date_object(obj: Any) -> bool:
    return isinstance(obj, (_dt.date, _dt.datetime, _dt.time)) or type(obj).__name__ in (
        "Timestamp", "datetime64", "NaTType",
    )


def _sanitize_with_path(obj: Any, path: str = "$", clean: Any = None) -> Any:
    """The general case (mappings, arrays, numpy and pandas scalars); ``clean`` handles the
    children (the fast path), else this function does with full paths."""
    if _is_date_object(obj):
        raise PrivacyError(
            f"the LLM payload contains a date at {path}; only study days may be sent"
        )
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if type(obj).__name__ == "NAType":  # pandas.NA
        return None
    if isinstance(obj, Mapping):
        if clean is not None:
            return {str(k): clean(v) for k, v in obj.items()}
        return {str(k): _sanitize_with_path(v, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "ndarray":
        if clean is not None:
            return [clean(v) for v in list(obj)]
        return [_sanitize_with_path(v, f"{path}[{i}]") for i, v in enumerate(list(obj))]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        try:
            obj = obj.item()
        except (TypeError, ValueError):
            pass
        if isinstance(obj, (bool, str)) or obj is None:
            return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else _compact_number(obj)
    return str(obj)


# text values of a serialised prompt (JSON strings, escapes included)
_JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


@functools.lru_cache(maxsize=65_536)
def _date_in_text(text: str) -> str | None:
    """The first calendar date in one (JSON-escaped) text value, or None. Prompts repeat the
    same keys, labels and categories many times: each distinct text is checked once."""
    if "\\" in text:
        text = json.loads(f'"{text}"')
    for pat in DATE_PATTERNS:
        m = pat.search(text)
        if m:
            return m.group(0)
    return None


def _check_text_has_no_dates(text: str, payload: Any) -> None:
    """Raise :class:`PrivacyError` if a key or text value of the serialised prompt contains a
    calendar date; :func:`check_no_dates` then names where (a date it cannot place still
    refuses the prompt)."""
    for value in set(_JSON_STRING.findall(text)):
        found = _date_in_text(value)
        if found is not None:
            check_no_dates(payload)
            raise PrivacyError(
                f"the LLM payload contains a calendar date ({found!r}); "
                "only pseudonymous keys and study days may be sent"
            )


def check_no_dates(obj: Any, path: str = "$") -> None:
    """Raise :class:`PrivacyError` if any key or text value looks like a calendar date."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            check_no_dates(str(k), f"{path}.<key>")
            check_no_dates(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_no_dates(v, f"{path}[{i}]")
    elif isinstance(obj, str):
        for pat in DATE_PATTERNS:
            m = pat.search(obj)
            if m:
                raise PrivacyError(
                    f"the LLM payload contains a calendar date ({m.group(0)!r} at {path}); "
                    "only pseudonymous keys and study days may be sent"
                )
