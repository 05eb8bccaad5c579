"""Verdicts that follow from a metric's threshold and, where it has one, its interval.

A verdict is one of:

* ``"met"``: the value (or, with an interval, the whole interval) is on the good side of the
  threshold;
* ``"not met"``: the value (or the whole interval) is on the bad side;
* ``"inconclusive"``: the interval crosses the threshold (the data cannot tell);
* ``"n/a"``: there is no value.

Thresholds live here, one per summary metric, keyed by the registry's metric names (plus the
headline share of parameter-visits with |SMD| < 0.1); the ideal comes from the registry, so
the text shown next to a value and the rule that judges it cannot disagree. Each metric family
has its verdict function (`fidelity_verdict`, `privacy_verdict`, `utility_verdict`,
`survival_verdict`); all of them apply the one rule of `verdict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MET, NOT_MET, INCONCLUSIVE, NA = "met", "not met", "inconclusive", "n/a"
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Threshold:
    """``at_least`` (value >= low), ``at_most`` (value <= high) or ``within`` (low <= value <= high)."""

    kind: str
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        need = {"at_least": (True, False), "at_most": (False, True), "within": (True, True)}
        if self.kind not in need:
            raise ValueError(f"unknown threshold kind {self.kind!r}")
        if need[self.kind] != (self.low is not None, self.high is not None):
            raise ValueError(f"{self.kind} threshold: wrong bounds {self.low!r}, {self.high!r}")

    def text(self) -> str:
        if self.kind == "at_least":
            return f"≥ {self.low:g}"
        if self.kind == "at_most":
            return f"≤ {self.high:g}"
        return f"{self.low:g} to {self.high:g}"

    def holds(self, value: float) -> bool:
        return ((self.low is None or value >= self.low) and (self.high is None or value <= self.high))


def _number(value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def verdict(value, threshold: Threshold, interval: tuple | None = None) -> str:
    """Met / not met / inconclusive from the value, the threshold and the interval (if any).

    With an interval (low, high) the verdict is "met" when every point of it meets the
    threshold, "not met" when none does, otherwise "inconclusive". Without one (or with an
    undefined one) the point value decides.
    """
    value = _number(value)
    if value is None:
        return NA
    lo, hi = (_number(interval[0]), _number(interval[1])) if interval is not None else (None, None)
    if lo is None or hi is None:
        return MET if threshold.holds(value) else NOT_MET
    lo, hi = min(lo, hi), max(lo, hi)
    if threshold.holds(lo) and threshold.holds(hi):
        return MET                                   # thresholds are intervals: both ends in => all in
    t_lo = -math.inf if threshold.low is None else threshold.low
    t_hi = math.inf if threshold.high is None else threshold.high
    if hi < t_lo or lo > t_hi:
        return NOT_MET
    return INCONCLUSIVE


THRESHOLDS: dict[str, Threshold] = {
    # fidelity
    "share_abs_smd_below_0_1": Threshold("at_least", low=0.8),
    "share_abs_net_smd_below_0_1": Threshold("at_least", low=0.8),
    "correlation_mad": Threshold("at_most", high=0.1),
    "dimension_wise_mean_correlation": Threshold("at_least", low=0.9),
    "detection_auroc": Threshold("at_most", high=0.7),
    # privacy
    "dcr_ratio": Threshold("at_least", low=1.0),
    "nnaa": Threshold("within", low=0.35, high=0.8),
    "exact_copies": Threshold("at_most", high=0),
    "mia_advantage": Threshold("at_most", high=0.1),
    # utility
    "tstr_ratio": Threshold("at_least", low=0.9),
    "augmentation_gain": Threshold("at_least", low=-0.02),
    # survival
    "km_sup_distance": Threshold("at_most", high=0.1),
}
FAMILIES: dict[str, tuple[str, ...]] = {
    "fidelity": ("share_abs_net_smd_below_0_1", "correlation_mad", "dimension_wise_mean_correlation",
                 "detection_auroc"),
    "privacy": ("dcr_ratio", "nnaa", "exact_copies", "mia_advantage"),
    "utility": ("tstr_ratio", "augmentation_gain"),
    "survival": ("km_sup_distance",),
}


def _family_verdict(family: str, metric: str, value, interval: tuple | None) -> str:
    if metric not in FAMILIES[family]:
        raise KeyError(f"{metric!r} is not a {family} metric with a threshold; known: "
                       f"{', '.join(FAMILIES[family])}")
    return verdict(value, THRESHOLDS[metric], interval)


def fidelity_verdict(metric: str, value, interval: tuple | None = None) -> str:
    return _family_verdict("fidelity", metric, value, interval)


def privacy_verdict(metric: str, value, interval: tuple | None = None) -> str:
    return _family_verdict("privacy", metric, value, interval)


def utility_verdict(metric: str, value, interval: tuple | None = None) -> str:
    return _family_verdict("utility", metric, value, interval)


def survival_verdict(metric: str, value, interval: tuple | None = None) -> str:
    return _family_verdict("survival", metric, value, interval)


FAMILY_VERDICTS = {"fidelity": fidelity_verdict, "privacy": privacy_verdict, "utility": utility_verdict,
                   "survival": survival_verdict}


def advantage_interval(membership: dict, z: float = _Z95) -> tuple[float, float] | None:
    """95 % Wald interval of the membership advantage (sensitivity - false-positive rate), two
    independent proportions on the members and the non-members; None without the counts."""
    s, f = _number(membership.get("sensitivity")), _number(membership.get("false_positive_rate"))
    n1, n0 = membership.get("n_members") or 0, membership.get("n_non_members") or 0
    if s is None or f is None or n1 <= 0 or n0 <= 0:
        return None
    se = math.sqrt(s * (1 - s) / n1 + f * (1 - f) / n0)
    return (s - f - z * se, s - f + z * se)
