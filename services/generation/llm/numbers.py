"""Regular expressions of the numbers a reply may hold: a server that turns the reply's JSON
schema into a grammar (llama.cpp) then lets a small model write only digits inside the
plausible range (`schema.request_json_schema`)."""

from __future__ import annotations

import math


def _nines(n: int, count: int) -> int:
    text = str(n)
    return int(text[:-count] + "9" * count) if count < len(text) else int("9" * count)


def _range_stops(a: int, b: int) -> list[int]:
    """Upper ends of the sub-ranges of [a, b] that one digit pattern each can express."""
    stops = {b}
    count = 1
    stop = _nines(a, count)
    while a <= stop < b:
        stops.add(stop)
        count += 1
        stop = _nines(a, count)
    count = 1
    stop = (b + 1) - (b + 1) % 10 ** count - 1
    while a < stop <= b:
        stops.add(stop)
        count += 1
        stop = (b + 1) - (b + 1) % 10 ** count - 1
    return sorted(stops)


def _same_length_pattern(a: int, b: int) -> str:
    out, free = "", 0
    for x, y in zip(str(a), str(b)):
        if x == y:
            out += x
        elif x != "0" or y != "9":
            out += f"[{x}-{y}]"
        else:
            free += 1
    if free:
        out += "[0-9]" + (f"{{{free}}}" if free > 1 else "")
    return out


def _integers_between(a: int, b: int) -> str:
    """A regular expression of the integers a..b (0 <= a <= b; no leading zeros)."""
    parts, start = [], a
    for stop in _range_stops(a, b):
        parts.append(_same_length_pattern(start, stop))
        start = stop + 1
    return "(" + "|".join(parts) + ")"


def _inside(lo: float, hi: float, decimals: int) -> str | None:
    """Alternatives of decimal numbers that all lie in [lo, hi] (0 <= lo, different integer
    parts), covering the range up to the first decimal at each end; None otherwise."""
    a0, b = math.floor(lo), math.floor(hi)
    if lo < 0 or a0 == b:
        return None
    frac = f"([.][0-9]{{1,{decimals}}})?" if decimals > 0 else ""
    parts, start = [], a0
    if lo > a0:                                  # the bottom integer part: only its upper decimals
        start = a0 + 1
        e = math.ceil(round((lo - a0) * 10, 9))
        if e <= 9 and decimals > 0:
            parts.append(f"{a0}[.][{e}-9][0-9]?" if decimals > 1 else f"{a0}[.][{e}-9]")
    if start <= b - 1:
        parts.append(_integers_between(start, b - 1) + frac)
    d = math.floor(round((hi - b) * 10, 9))      # the top integer part: up to hi's first decimal
    parts.append(f"{b}([.][0-{d}])?" if d >= 1 and decimals > 0 else f"{b}([.]0)?")
    return "^(" + "|".join(parts) + ")$"


def number_pattern(lo: float | None, hi: float | None, decimals: int = 2) -> str | None:
    """A regular expression of decimal numbers (at most ``decimals`` decimals) within [lo, hi],
    or None without finite bounds. A grammar built from it keeps a small model from writing
    1000000000000000 where 12 is meant, or 7 for a body temperature. For 0 <= lo and ranges
    that span an integer, every number it allows lies in [lo, hi] and it covers the range up to
    the first decimal at each end (32.4 but not 32.39 for lo = 32.39), so a reply always passes
    :func:`validate_reply`'s range check; otherwise (negative ranges, or both ends with the same
    integer part) only the integer part is bounded and the check stays with
    :func:`validate_reply`."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        return None
    inside = _inside(lo, hi, decimals)
    if inside is not None:
        return inside
    frac = f"([.][0-9]{{1,{decimals}}})?" if decimals > 0 else ""
    parts = []
    if hi >= 0:
        parts.append(_integers_between(max(0, math.floor(lo)), math.floor(hi)))
    if lo < 0:
        parts.append("-" + _integers_between(max(0, math.floor(-hi)) if hi < 0 else 0,
                                             math.floor(-lo)))
    return "^(" + "|".join(parts) + ")" + frac + "$"
