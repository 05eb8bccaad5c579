"""Whole-number parameters of the local generator: rounded at random, with the model's variance
kept (`rounding="matched"`), on simulated trials with a known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.generation import GeneratorError
from services.generation.local import LocalGenerator
from services.retrieval.retriever import ExactRetriever


def _treated(trial):
    return list(trial.subjects.loc[trial.subjects["ARM"] != trial.control_arm, "USUBJID"])


def _binary_trial(n: int = 80, seed: int = 3, cuts=(0.0,)):
    """Two arms, one 0/1 item (or with more `cuts` a 1-5 score) at baseline and 2 visits from a
    logistic latent variable (patient effect, age): a simulated truth, as bench/discrete.py uses."""
    from services.data.loading import load_trial_files
    from services.data.readers import RawFile

    rng = np.random.default_rng(seed)
    ids = [f"B-{i:03d}" for i in range(2 * n)]
    age = rng.normal(50, 10, 2 * n)
    u = rng.normal(0, 1, 2 * n)
    rows = [{"USUBJID": s, "PARAMCD": "GOOD", "PARAM": "Status good", "AVISITN": v,
             "AVISIT": "Baseline" if v == 0 else f"Visit {v}", "ADY": 1.0 + 14 * v,
             "ABLFL": "Y" if v == 0 else "",
             "AVAL": float(np.sum(0.05 * (age[i] - 50) + u[i] + rng.logistic() > np.asarray(cuts))
                           + (len(cuts) > 1))}
            for i, s in enumerate(ids) for v in range(3)]
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": ["Placebo"] * n + ["Active"] * n, "AGE": age.round()})
    files = [RawFile("adsl.csv", adsl.to_csv(index=False).encode()),
             RawFile("adqs.csv", pd.DataFrame(rows).to_csv(index=False).encode()),
             RawFile("trial.toml", b'control_arm = "Placebo"\n')]
    return load_trial_files(files, name="binary")


def test_whole_number_items_are_rounded_at_random():
    """A 0/1 item: twins stay 0/1 either way; rounding at random (the default) gives each twin
    its unrounded value in expectation, so a source's twins do not just repeat their donors'
    values (bench/discrete.py: RMSE ratio vs the baseline ANCOVA 1.012 nearest, 0.991 random);
    the draws are seeded."""
    trial = _binary_trial()
    src = trial.subset(_treated(trial)).baseline_only()
    assert LocalGenerator().rounding == "matched"
    runs = {r: LocalGenerator(retriever_factory=ExactRetriever, rounding=r).fit(trial)
            .generate(src, "Placebo", twins_per_patient=40, seed=2) for r in ("nearest", "random", "matched")}
    # a 0/1 item is left alone by the variance matching (its spread is set by its mean)
    pd.testing.assert_frame_equal(runs["matched"].bds["adqs"], runs["random"].bds["adqs"])
    means = {}
    for r, run in runs.items():
        vals = run.values()
        assert set(vals["AVAL"].unique()) <= {0.0, 1.0}
        means[r] = vals.groupby(["SRCSUBJID", "AVISITN"])["AVAL"].mean()
    assert (means["random"] - means["nearest"]).abs().max() > 0.05      # the setting acts
    # the arm's rate stays the knowledge base's (no drift from rounding either way)
    real_rate = trial.visit_values.query("ARM == 'Placebo'")["AVAL"].mean()
    assert means["random"].mean() == pytest.approx(real_rate, abs=0.08)
    again = LocalGenerator(retriever_factory=ExactRetriever).fit(trial).generate(src, "Placebo", twins_per_patient=40, seed=2)
    pd.testing.assert_frame_equal(again.bds["adqs"], runs["matched"].bds["adqs"])    # seeded
    with pytest.raises(GeneratorError, match="rounding"):
        LocalGenerator(rounding="up")


def _rounded_at_random(v, rng):
    return np.floor(v) + (rng.uniform(size=v.shape) < v - np.floor(v))


@pytest.mark.parametrize("mu, sd, scale", [
    ((1.7, 3.2, 4.6), 0.8, "identity"),
    ((1.97, 3.03, 4.0), 0.35, "identity"),       # small spread, means near whole numbers
    ((np.log1p(2.0), np.log1p(6.0)), 0.5, "log1p"),   # a count modelled on the log scale
])
@pytest.mark.parametrize("k", [1, 40_000])
def test_matched_rounding_keeps_the_unrounded_mean_and_variance(mu, sd, scale, k):
    """Known answer: a score's unrounded values drawn from the model's predictive distribution
    (normal on the outcome scale, back-transformed, clipped). Rounding at random keeps their
    mean but adds the fraction's variance f(1 - f); shrinking them first (`rounding="matched"`)
    keeps both. K = 1: many sources with one twin each (the spread is across sources)."""
    from services.generation.local.features import inverse
    from services.generation.local.residuals import _variance_matched

    rng = np.random.default_rng(0)
    mu = np.asarray(mu, dtype=float)
    reps = 1 if k > 1 else 40_000
    S = len(mu) * reps
    mean_t = np.repeat(mu, reps)[:, None]
    top = 5.0 if scale == "identity" else 30.0
    lo, hi = np.full((S, 1, 1), 1.0 if scale == "identity" else 0.0), np.full((S, 1, 1), top)
    latent = np.clip(inverse(mean_t[:, :, None] + sd * rng.standard_normal((S, k, 1)), scale), lo, hi)
    shrunk = _variance_matched(latent, mean_t, np.full((S, 1), sd ** 2), [scale], np.array([True]), lo, hi)
    assert np.all((shrunk >= lo) & (shrunk <= hi))
    plain, matched = _rounded_at_random(latent, rng), _rounded_at_random(shrunk, rng)
    # per distinct source: its twins (K large) or its copies' single twins (K = 1)
    per = (lambda a: a.reshape(len(mu), -1))
    if k > 1:
        np.testing.assert_allclose(shrunk.mean(axis=1), latent.mean(axis=1), atol=1e-9)   # mean kept
    np.testing.assert_allclose(per(matched).mean(axis=1), per(latent).mean(axis=1), atol=0.03)
    v_latent, v_plain, v_matched = per(latent).var(axis=1), per(plain).var(axis=1), per(matched).var(axis=1)
    np.testing.assert_allclose(v_matched, v_latent, rtol=0.06)
    assert np.all(v_plain - v_latent > 0.05)       # random rounding alone: too wide


def test_a_scores_twins_keep_their_spread_with_matched_rounding():
    """A 1-5 score: with the default (matched) rounding a source's twins spread less than when
    rounded at random without matching, with the same mean, and stay on the scale."""
    trial = _binary_trial(cuts=(-1.5, -0.5, 0.5, 1.5))
    src = trial.subset(_treated(trial)).baseline_only()
    out = {}
    for r in ("random", "matched"):
        v = (LocalGenerator(retriever_factory=ExactRetriever, rounding=r).fit(trial)
             .generate(src, "Placebo", twins_per_patient=40, seed=2).values())
        assert set(v["AVAL"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
        out[r] = v.groupby(["SRCSUBJID", "AVISITN"])["AVAL"].agg(["mean", "var"])
    assert out["matched"]["var"].mean() < 0.95 * out["random"]["var"].mean()
    assert (out["matched"]["mean"] - out["random"]["mean"]).abs().mean() < 0.1
