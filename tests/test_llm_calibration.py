"""Hybrid mode's calibration: the model earns its weight against the local forecast on
knowledge-base patients whose real values are known. Known answers for the estimator
(statsmodels' clustered OLS), and end to end against the scripted OpenAI-compatible server on
the bundled PBC trial: a model that knows the truth gets weight 1, one that adds noise gets 0
and the twins keep the local draws."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import statsmodels.api as sm

sys.path.insert(0, str(Path(__file__).parent))

from llm_server import ScriptedOpenAIServer, find_payload, good_reply

from services.generation.llm import LLMSettings
from services.generation.llm.calibration import (
    auto_size,
    calibration_patients,
    estimate_weight,
)
from services.generation.llm.generator import LLMGenerator
from services.generation.llm.prompting import local_twins


def rows_for(rng, n_pat, per, signal):
    """(patient, L, m, s, y): the model's change d is `signal` x the local error plus noise."""
    rows = []
    for i in range(n_pat):
        for _ in range(per):
            m, s = 10.0, 2.0
            e = rng.normal()
            d = signal * e + rng.normal()
            rows.append((f"u{i}", m + s * d, m, s, m + s * e))
    return rows


def test_weight_and_clustered_se_match_statsmodels():
    rng = np.random.default_rng(3)
    rows = rows_for(rng, 8, 6, 0.5)
    cal = estimate_weight(rows)
    d = np.array([(L - m) / s for _, L, m, s, _ in rows])
    e = np.array([(y - m) / s for _, _, m, s, y in rows])
    groups = np.array([int(u[1:]) for u, *_ in rows])
    fit = sm.OLS(e, d).fit(cov_type="cluster", cov_kwds={"groups": groups})
    assert cal.estimate == pytest.approx(fit.params[0], rel=1e-10)
    assert cal.se == pytest.approx(fit.bse[0], rel=1e-10)
    assert cal.patients == 8 and cal.values == 48


def test_an_uninformative_model_gets_weight_zero_at_the_nominal_rate():
    """Under a model whose changes are pure noise, the one-sided 5 % test gives the model a
    weight in about 5 % of runs (never more than a handful in 400)."""
    rng = np.random.default_rng(11)
    kept = sum(estimate_weight(rows_for(rng, 5, 4, 0.0)).weight > 0 for _ in range(400))
    assert kept / 400 < 0.10, kept
    good = estimate_weight(rows_for(rng, 5, 4, 1.0))
    assert 0 < good.weight <= 1


def test_too_little_evidence_keeps_the_local_forecast():
    rng = np.random.default_rng(1)
    cal = estimate_weight(rows_for(rng, 2, 10, 1.0))
    assert cal.weight == 0 and "at least 3" in cal.reason
    assert auto_size(14) == 0 and auto_size(15) == 3 and auto_size(400) == 10


def test_calibration_patients_are_target_arm_and_never_sources(pbc):
    sources = set(pbc.subjects.loc[pbc.subjects["ARM"] == "Placebo", "USUBJID"][:5])
    ids = calibration_patients(pbc, "Placebo", sources, 6, seed=2)
    arm = pbc.subjects.set_index("USUBJID")["ARM"]
    assert len(ids) == 6 and not set(ids) & sources
    assert set(arm[ids]) == {"Placebo"}
    assert calibration_patients(pbc, "Placebo", sources, 6, seed=2) == ids
    assert calibration_patients(pbc, "Placebo", sources, 6, seed=3) != ids


@pytest.fixture(scope="module")
def hybrid(pbc, tmp_path_factory):
    return LLMGenerator(settings=LLMSettings(), use_cache=False,
                        cache_dir=str(tmp_path_factory.mktemp("cache"))).fit(pbc)


def settings_for(srv) -> LLMSettings:
    return LLMSettings(base_url=srv.base_url, model="scripted-model", timeout_s=15,
                       max_retries=1, concurrency=4, temperature=0.0)


def treated(trial, n):
    return list(trial.subjects.loc[trial.subjects["ARM"] == "D-penicillamine", "USUBJID"])[:n]


def test_a_noisy_model_leaves_the_local_draws(pbc, hybrid):
    """The scripted model writes the local forecast plus noise: no better than local, so its
    weight is 0 and the twins' values are exactly those of the local generator (same seed, K)."""
    sources, k, seed = treated(pbc, 8), 2, 5
    with ScriptedOpenAIServer() as srv:
        gen = hybrid.with_endpoint(settings_for(srv))
        run = gen.generate(pbc.subset(sources), "Placebo", twins_per_patient=k, seed=seed)
        keys = [find_payload(b)["patient"]["key"] for b in srv.calls]
    cal = run.manifest["llm"]["calibration"]
    assert cal["patients"] == 3 and len(cal["knowledge_base_patients"]) == 3
    assert sum(key.startswith("C") for key in keys) == 3   # written before the twins
    assert cal["weight"] == 0 and run.n_twins == 16
    assert run.manifest["twins_balanced"] is True    # the local twins: ranked as balanced when validated
    assert any("hybrid calibration" in n for n in run.manifest["notes"])
    local = gen.local_generator.generate(pbc.subset(sources), "Placebo", twins_per_patient=k,
                                         seed=seed).values().dropna(subset=["AVISITN"])
    vals = run.values().dropna(subset=["AVISITN"])
    key = ["USUBJID", "PARAMCD", "AVISITN"]
    both = vals.merge(local, on=key, suffixes=("", "_local"))
    assert len(both) == len(vals) == len(local)
    assert np.array_equal(both["AVAL"], both["AVAL_local"])
    # calibration patients are not twins and not in the manifest's neighbours of twins
    assert not set(cal["knowledge_base_patients"]) & set(run.adsl["SRCSUBJID"])


def test_a_model_that_knows_the_truth_earns_full_weight(pbc, hybrid):
    """On the calibration patients the model writes their real values: weight 1, and the twins'
    values are their local draws moved by the model's change (here: +1 on every value)."""
    sources, k, seed = treated(pbc, 8), 2, 6
    cal_ids = calibration_patients(pbc, "Placebo", set(sources), auto_size(len(sources) * k), seed)
    vv = pbc.visit_values
    real = vv.groupby(["USUBJID", "PARAMCD", "AVISITN"])["AVAL"].mean()

    def oracle(body):
        reply = good_reply(body)
        payload = find_payload(body)
        key = payload["patient"]["key"]
        ref = {p: {float(a): v for a, v in series}
               for p, series in (payload.get("reference_forecast") or {}).items()}
        for v in reply["visits"]:
            if key.startswith("C"):
                u = cal_ids[int(key[1:]) - 1]
                truth = real.get((u, v["paramcd"], float(v["avisitn"])))
                if truth is not None:
                    v["aval"] = float(truth)
            else:
                v["aval"] = ref[v["paramcd"]][float(v["avisitn"])] + 1.0
        return reply

    with ScriptedOpenAIServer(default=oracle) as srv:
        gen = hybrid.with_endpoint(settings_for(srv))
        gen.fallback_sd = None
        run = gen.generate(pbc.subset(sources), "Placebo", twins_per_patient=k, seed=seed)
    cal = run.manifest["llm"]["calibration"]
    assert cal["knowledge_base_patients"] == cal_ids
    assert cal["weight"] == 1.0 and cal["p_value"] < 0.05, cal
    assert run.manifest["twins_balanced"] is False   # the model's independent values: exchangeable
    assert cal["standardised_rmse_model"] < 0.01 < cal["standardised_rmse_local"]
    own, _ = local_twins(gen.local_generator, pbc.subset(sources), "Placebo", k, seed, None)
    vals = run.values().dropna(subset=["AVISITN"]).query("PARAMCD == 'ALB'")
    t = vals["USUBJID"].str.extract(r"-T(\d+)$")[0].astype(int)
    moved = [own[(s, "ALB", float(a))][i - 1] + 1.0
             for s, a, i in zip(vals["SRCSUBJID"], vals["AVISITN"], t)]
    # own local draw + 1 x ((reference mean + 1) - reference mean); the reference is rounded
    assert np.allclose(vals["AVAL"], moved, atol=1e-4)
