"""The reply grammar's number patterns (services/generation/llm/schema.py)."""

from __future__ import annotations

import math


def test_number_pattern_keeps_numbers_within_the_plausible_range():
    """What a grammar lets a model write: for non-negative ranges only numbers inside [lo, hi]
    (a small model wrote 7 for a body temperature of range [32.4, 40.0], 0.14 and then 11.16
    for a diastolic pressure of range [11.33, 139.33]), and every one-decimal number inside;
    elsewhere a bounded integer part."""
    import re

    from services.generation.llm.schema import number_pattern

    values = [n / 100 for n in range(-120_000, 120_000, 7)] + list(range(-1200, 1200))
    for lo, hi in [(0, 70), (11.33, 139.33), (32.39, 39.95), (95, 1005), (1.4, 2.2), (1.0, 2.6),
                   (0.5, 3), (7, 8.05)]:
        rx = re.compile(number_pattern(lo, hi))
        allowed = [v for v in values if rx.match(f"{v:g}")]
        assert allowed and all(lo <= v <= hi for v in allowed), (lo, hi)
        tenths = [t / 10 for t in range(math.ceil(lo * 10), math.floor(hi * 10) + 1)]
        assert all(rx.match(f"{v:g}") for v in tenths), (lo, hi)   # no in-range tenth is lost
        assert not rx.match("007") and not rx.match("1e3")
    temp = re.compile(number_pattern(32.39, 39.95))
    assert temp.match("36.85") and temp.match("39.5") and temp.match("32.4")
    assert not temp.match("7") and not temp.match("36.855") and not temp.match("32.2")
    assert not temp.match("39.99") and not temp.match("40")
    assert re.match(number_pattern(0, 40), "40.0") and not re.match(number_pattern(0, 40), "40.5")
    # both ends with the same integer part, and negative ranges: the integer part as written
    # ("-3.7" has integer part 3) is bounded, validation checks the rest
    assert re.match(number_pattern(0.2, 0.9), "0.5") and not re.match(number_pattern(0.2, 0.9), "1")
    for lo, hi in [(-3.5, 2.0), (-10.0, -2.5)]:
        rx = re.compile(number_pattern(lo, hi))
        for n in range(-1200, 1200):
            ok = (hi >= 0 and 0 <= n <= math.floor(hi)) if n >= 0 else \
                (-math.floor(-lo) <= n <= (-math.floor(-hi) if hi < 0 else 0))
            assert bool(rx.match(str(n))) == ok, (lo, hi, n)
