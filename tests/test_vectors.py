"""Patient vectors on real trials (bundled pbc, CDISC pilot): blocks, scaling, missingness,
baseline-only comparability, versioning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.retrieval.vectors import (
    BLOCK_ORDER,
    VECTOR_VERSION,
    PatientVectorizer,
    PatientVectors,
    VectorizerError,
)


@pytest.fixture(scope="module")
def pbc_vec(pbc):
    vec = PatientVectorizer().fit(pbc)
    return vec, vec.transform(pbc)


@pytest.fixture(scope="module")
def pilot_vec(pilot):
    vec = PatientVectorizer().fit(pilot)
    return vec, vec.transform(pilot)


def _col(pv: PatientVectors, name: str) -> np.ndarray:
    return pv.X[:, pv.feature_names.index(name)]


def test_layout_blocks_cover_all_features(pilot, pilot_vec):
    _vec, pv = pilot_vec
    assert isinstance(pv, PatientVectors)
    assert pv.X.dtype == np.float32
    assert pv.ids == list(pilot.subjects["USUBJID"])
    assert pv.arms == list(pilot.subjects["ARM"])
    assert list(pv.blocks) == list(BLOCK_ORDER)
    assert sum(s.stop - s.start for s in pv.blocks.values()) == pv.X.shape[1] == len(pv.feature_names)
    # every continuous covariate, every parameter's baseline, every scheduled follow-up point
    cont = [c for c, k in pilot.covariates.items() if k == "continuous"]
    assert [f"cov:{c}" for c in cont] == [pv.feature_names[i] for i in range(pv.blocks["cov_num"].start,
                                                                         pv.blocks["cov_num"].stop)]
    assert {f"base:{p}" for p in pilot.parameters} <= set(pv.feature_names)
    assert "cov:SEX=F" in pv.feature_names and "cov:SEX=M" in pv.feature_names
    for p in pilot.longitudinal_parameters:
        for v in pilot.schedule(p):
            assert f"chg:{p}@{v.avisitn:g}" in pv.feature_names
            assert f"chg:{p}@{v.avisitn:g}:missing" in pv.feature_names
    # HEIGHT has no follow-up: no change-from-baseline columns for it
    assert not any(n.startswith("chg:HEIGHT@") for n in pv.feature_names)


def test_continuous_features_are_standardised_on_the_knowledge_base(pilot, pilot_vec):
    vec, pv = pilot_vec
    scale = vec.group_scale_["covariates"]
    age = _col(pv, "cov:AGE") / scale
    assert abs(age.mean()) < 1e-5 and abs(age.std(ddof=1) - 1) < 1e-4
    # ordering of the raw values is kept
    raw = pilot.subjects["AGE"].to_numpy(dtype=float)
    assert np.corrcoef(raw, age)[0, 1] > 0.9999
    base = _col(pv, "base:SYSBP") / vec.group_scale_["baseline"]
    assert abs(base.mean()) < 1e-5 and abs(base.std(ddof=1) - 1) < 1e-4


def test_missing_covariate_imputed_and_flagged(pilot, pilot_vec):
    _vec, pv = pilot_vec
    missing = pilot.subjects["BMIBL"].isna().to_numpy()
    assert missing.sum() >= 1, "the pilot has a subject without BMIBL"
    assert np.all(_col(pv, "cov:BMIBL")[missing] == 0)
    assert np.all(_col(pv, "cov:BMIBL:missing")[missing] > 0)
    assert np.all(_col(pv, "cov:BMIBL:missing")[~missing] == 0)


def test_missing_baseline_parameter_imputed_and_flagged(pbc, pbc_vec):
    _vec, pv = pbc_vec
    missing = pbc.baseline["CHOL"].isna().to_numpy()
    assert missing.sum() > 0, "pbc has subjects without a baseline cholesterol"
    assert np.all(_col(pv, "base:CHOL")[missing] == 0)
    assert np.all(_col(pv, "base:CHOL:missing")[missing] > 0)
    assert np.all(_col(pv, "base:CHOL:missing")[~missing] == 0)
    # nothing is zero-imputed without its indicator
    for name in ("base:PLAT", "base:ALB"):
        miss = pbc.baseline[name.split(":")[1]].isna().to_numpy()
        np.testing.assert_array_equal(_col(pv, name + ":missing") > 0, miss)


def test_missing_follow_up_visits_are_flagged(pilot, pilot_vec):
    _vec, pv = pilot_vec
    vv = pilot.visit_values
    seen = set(zip(vv.loc[vv["PARAMCD"] == "SYSBP", "USUBJID"], vv.loc[vv["PARAMCD"] == "SYSBP", "AVISITN"]))
    flag = _col(pv, "chg:SYSBP@26:missing") > 0
    expected = np.array([(u, 26.0) not in seen for u in pv.ids])
    assert expected.sum() > 100, "many pilot patients left before week 26"
    np.testing.assert_array_equal(flag, expected)
    assert np.all(_col(pv, "chg:SYSBP@26")[flag] == 0)


def test_feature_absent_from_query_trial_is_missing(pilot, pilot_vec):
    vec, pv = pilot_vec
    keep = list(pilot.subjects["USUBJID"][:20])
    query = pilot.subset(keep).baseline_only()
    query.subjects = query.subjects.drop(columns=["MMSETOT"])
    query.bds = {k: df[df["PARAMCD"] != "PULSE"].reset_index(drop=True) for k, df in query.bds.items()}
    qv = vec.transform(query)
    assert qv.feature_names == pv.feature_names
    assert np.all(_col(qv, "cov:MMSETOT") == 0) and np.all(_col(qv, "cov:MMSETOT:missing") > 0)
    assert np.all(_col(qv, "base:PULSE") == 0) and np.all(_col(qv, "base:PULSE:missing") > 0)
    # features the query does have are on the knowledge base's scale
    np.testing.assert_allclose(_col(qv, "base:SYSBP"), _col(pv, "base:SYSBP")[:20], rtol=1e-6)


def test_unseen_category_level_is_equally_far_from_every_level(pilot, pilot_vec):
    vec, _pv = pilot_vec
    query = pilot.subset(list(pilot.subjects["USUBJID"][:3]))
    query.subjects = query.subjects.assign(RACE="NOT A LEVEL OF THE PILOT")
    qv = vec.transform(query)
    cols = [i for i, n in enumerate(qv.feature_names) if n.startswith("cov:RACE=")]
    assert np.all(qv.X[:, cols] == 0)
    assert np.all(_col(qv, "cov:RACE:missing") == 0)


def test_baseline_only_patients_equal_their_baseline_blocks(pilot, pilot_vec, pbc, pbc_vec):
    for trial, (vec, pv) in ((pilot, pilot_vec), (pbc, pbc_vec)):
        bo = vec.transform(trial.baseline_only())
        cols = pv.columns("baseline")
        np.testing.assert_array_equal(bo.X[:, cols], pv.X[:, cols])
        np.testing.assert_array_equal(bo.embed("baseline"), pv.embed("baseline"))
        # baseline-only patients have every follow-up point flagged missing and nothing else there
        assert np.all(bo.block("fu") == 0) and np.all(bo.block("fu_missing") > 0)
        # but they differ in the full space, which uses the follow-up
        assert not np.array_equal(bo.embed("full"), pv.embed("full"))


def test_embeddings_unit_norm_and_blocks_weighted(pbc, pbc_vec):
    vec, pv = pbc_vec
    for space in ("baseline", "full"):
        E = pv.embed(space)
        assert E.dtype == np.float32 and E.shape == (len(pv), pv.dim(space)) == (len(pv), vec.dim(space))
        np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
    # each group contributes about its weight to the squared norm, whatever its column count
    sq = lambda blocks: float(np.mean(sum((pv.block(b) ** 2).sum(axis=1) for b in blocks)))
    base, fu = sq(["base", "base_missing"]), sq(["fu", "fu_missing"])
    assert pv.blocks["fu"].stop - pv.blocks["fu"].start > 10 * (pv.blocks["base"].stop - pv.blocks["base"].start)
    assert 0.7 < base < 1.3 and 0.7 < fu < 1.6
    # doubling a weight doubles that group's squared contribution
    heavy = PatientVectorizer(weights={"baseline": 2.0}).fit(pbc).transform(pbc)
    ratio = (heavy.block("base") ** 2).sum() / (pv.block("base") ** 2).sum()
    assert math.isclose(ratio, 2.0, rel_tol=1e-4)


def test_version_fingerprint_and_description(pilot, pilot_vec):
    vec, pv = pilot_vec
    assert VECTOR_VERSION == pv.version == "pv1"
    fp = vec.fingerprint()
    assert fp == PatientVectorizer().fit(pilot).fingerprint()
    assert fp != PatientVectorizer(weights={"covariates": 2}).fit(pilot).fingerprint()
    assert fp != PatientVectorizer(include_followup=False).fit(pilot).fingerprint()
    text = vec.describe()
    assert "cosine" in text and "AGE" in text and "SYSBP" in text and "Missing" in text
    assert "Follow-up is not used" in text
    assert "change from baseline" in vec.describe("full")


def test_include_followup_false_has_no_followup_block(pilot):
    pv = PatientVectorizer(include_followup=False).fit_transform(pilot)
    assert pv.blocks["fu"].stop == pv.blocks["fu"].start
    np.testing.assert_array_equal(pv.embed("full"), pv.embed("baseline"))


def test_bad_use_gives_clear_errors(pilot):
    with pytest.raises(VectorizerError, match="not fitted"):
        PatientVectorizer().transform(pilot)
    with pytest.raises(VectorizerError, match="unknown weight group"):
        PatientVectorizer(weights={"labs": 1})
    with pytest.raises(VectorizerError, match=">= 0"):
        PatientVectorizer(weights={"baseline": -1})
    vec = PatientVectorizer().fit(pilot)
    with pytest.raises(VectorizerError, match="unknown vector space"):
        vec.transform(pilot).embed("post")
