"""Known answers of the metric verdicts: threshold, interval, met / not met / inconclusive."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.evaluation.comparison import headline
from services.evaluation.metrics import median_ratio_interval
from services.evaluation.metrics.verdicts import (
    INCONCLUSIVE,
    MET,
    NA,
    NOT_MET,
    THRESHOLDS,
    Threshold,
    advantage_interval,
    fidelity_verdict,
    privacy_verdict,
    survival_verdict,
    utility_verdict,
    verdict,
)


def test_point_values_against_each_kind_of_threshold():
    at_least, at_most, band = Threshold("at_least", low=1), Threshold("at_most", high=0.1), \
        Threshold("within", low=0.35, high=0.8)
    assert verdict(1.0, at_least) == MET and verdict(0.948, at_least) == NOT_MET   # DCR 0.948 vs >= 1
    assert verdict(0.1, at_most) == MET and verdict(0.11, at_most) == NOT_MET
    assert verdict(0.436, band) == MET and verdict(0.2, band) == NOT_MET and verdict(0.9, band) == NOT_MET
    assert verdict(None, at_least) == NA and verdict(float("nan"), at_least) == NA
    assert (at_least.text(), at_most.text(), band.text()) == ("≥ 1", "≤ 0.1", "0.35 to 0.8")


def test_an_interval_decides_and_crossing_the_threshold_is_inconclusive():
    at_least = Threshold("at_least", low=1)
    assert verdict(0.948, at_least, (0.85, 1.05)) == INCONCLUSIVE
    assert verdict(1.2, at_least, (1.01, 1.4)) == MET
    assert verdict(1.2, at_least, (0.99, 1.4)) == INCONCLUSIVE     # the point meets it, the interval not all
    assert verdict(0.7, at_least, (0.6, 0.8)) == NOT_MET
    band = Threshold("within", low=0.35, high=0.8)
    assert verdict(0.5, band, (0.4, 0.6)) == MET
    assert verdict(0.5, band, (0.3, 0.6)) == INCONCLUSIVE
    assert verdict(0.9, band, (0.85, 0.95)) == NOT_MET
    assert verdict(0.5, band, (0.2, 0.9)) == INCONCLUSIVE         # wider than the band on both sides
    assert verdict(0.5, band, (None, 0.6)) == MET                 # an undefined interval: the value decides
    assert verdict(0.5, band, (0.6, 0.4)) == MET                  # ends in either order


def test_family_verdicts_use_the_registered_thresholds():
    assert fidelity_verdict("detection_auroc", 0.65, (0.6, 0.75)) == INCONCLUSIVE
    assert fidelity_verdict("detection_auroc", 0.55, (0.5, 0.6)) == MET
    assert privacy_verdict("exact_copies", 0) == MET and privacy_verdict("exact_copies", 1) == NOT_MET
    assert privacy_verdict("mia_advantage", 0.05, (-0.05, 0.15)) == INCONCLUSIVE
    assert utility_verdict("tstr_ratio", 1.26) == MET and utility_verdict("tstr_ratio", 0.8) == NOT_MET
    assert survival_verdict("km_sup_distance", 0.05) == MET
    with pytest.raises(KeyError, match="not a privacy metric"):
        privacy_verdict("tstr_ratio", 1.0)
    assert THRESHOLDS["dcr_ratio"].low == 1.0                   # the threshold is the registry's ideal


def test_membership_advantage_interval_by_hand():
    # sensitivity 0.6 on 50 members, FPR 0.4 on 50 non-members: se = sqrt(.24/50 + .24/50) = 0.09798
    low, high = advantage_interval({"sensitivity": 0.6, "false_positive_rate": 0.4, "n_members": 50,
                                    "n_non_members": 50})
    se = math.sqrt(0.24 / 50 + 0.24 / 50)
    assert low == pytest.approx(0.2 - 1.959964 * se) and high == pytest.approx(0.2 + 1.959964 * se)
    assert advantage_interval({"sensitivity": 0.6}) is None


def test_median_ratio_interval_covers_the_ratio_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    a, b = rng.exponential(2.0, 400), rng.exponential(2.0, 400)
    low, high = median_ratio_interval(a, b, seed=1)
    assert low < np.median(a) / np.median(b) < high and low < 1 < high
    low2, high2 = median_ratio_interval(np.tile(a, 4), np.tile(b, 4), seed=1)
    assert high2 - low2 < high - low
    assert median_ratio_interval(a, b, seed=1) == (low, high)            # seeded
    assert all(math.isnan(v) for v in median_ratio_interval([], b))


def test_headline_rows_show_threshold_interval_and_verdict():
    result = {"fidelity": {"detection": {"auroc": 0.66, "ci_low": 0.6, "ci_high": 0.72}},
              "privacy": {"dcr": {"ratio_median": 0.948, "ratio_ci_low": 0.9, "ratio_ci_high": 0.99},
                          "nnaa": {"nnaa": 0.436}, "exact_copies": {"n_copies": 0}},
              "utility": {"tstr": {"ratio": 1.26, "tstr": 0.72, "trtr": 0.57, "n_test": 30}}}
    rows = headline(result).set_index("metric")
    dcr = rows.loc["DCR ratio (twins / real)"]
    assert (dcr["ideal"], dcr["threshold"], dcr["verdict"]) == (">= 1", "≥ 1", NOT_MET)
    assert (dcr["ci_low"], dcr["ci_high"]) == (0.9, 0.99)
    assert rows.loc["detection AUROC", "verdict"] == INCONCLUSIVE
    assert "too few patients" in rows.loc["detection AUROC", "meaning"]
    nnaa = rows.loc["NN adversarial accuracy"]
    assert (nnaa["threshold"], nnaa["verdict"]) == ("0.35 to 0.8", MET)
    tstr = rows.loc["TSTR / TRTR AUROC"]
    assert "TSTR AUROC 0.72 / TRTR AUROC 0.57 on 30" in tstr["detail"] and "above 1" in tstr["detail"]
    assert rows.loc["correlation distance", "verdict"] == NA
    assert "membership-inference advantage" not in rows.index         # no hold-out, no attack
