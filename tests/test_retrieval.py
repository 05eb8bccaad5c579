"""Similar-patient retrieval on a real embedded Chroma store (temporary path per session),
checked against the exact numpy k-NN on the CDISC pilot and the bundled pbc trial."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from services.data.trial import Trial
from services.retrieval.index import (
    DEFAULT_HNSW,
    ExactIndex,
    PatientIndex,
    PatientIndexError,
    get_client,
    reset_client,
)
from services.retrieval.retriever import ExactRetriever, Neighbour, Retriever, patient_data
from services.retrieval.vectors import VECTOR_VERSION, PatientVectorizer


@pytest.fixture(scope="module")
def chroma(tmp_path_factory):
    import chromadb
    from chromadb.config import Settings

    path = tmp_path_factory.mktemp("chroma")
    return chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))


@pytest.fixture(scope="module")
def pilot_r(pilot, chroma):
    return Retriever(pilot, index=PatientIndex(client=chroma)).fit()


@pytest.fixture(scope="module")
def pilot_exact(pilot):
    return ExactRetriever(pilot).fit()


def with_copy(trial: Trial, usubjid: str, new_id: str) -> Trial:
    """The trial plus an exact copy of one patient under another USUBJID."""
    subj = trial.subjects
    subjects = pd.concat([subj, subj[subj["USUBJID"] == usubjid].assign(USUBJID=new_id)], ignore_index=True)
    bds = {k: pd.concat([df, df[df["USUBJID"] == usubjid].assign(USUBJID=new_id)], ignore_index=True)
           for k, df in trial.bds.items()}
    tte = None
    if trial.tte is not None:
        tte = pd.concat([trial.tte, trial.tte[trial.tte["USUBJID"] == usubjid].assign(USUBJID=new_id)],
                        ignore_index=True)
    digest = hashlib.sha256((trial.content_hash + "|copy|" + new_id).encode()).hexdigest()
    return Trial(trial.name + "+copy", subjects, bds, tte, trial.ae, trial.meta, digest)


def ids_of(neighbours: list[Neighbour]) -> list[str]:
    return [n.usubjid for n in neighbours]


# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("space", ["baseline", "full"])
def test_nearest_neighbour_of_an_exact_copy_is_the_copy(pbc, chroma, space):
    source = pbc.subjects["USUBJID"].iloc[7]
    kb = with_copy(pbc, source, "COPY-OF-" + source)
    r = Retriever(kb, index=PatientIndex(client=chroma), space=space).fit()
    first = r.neighbours(source, k=3)[0]
    assert first.usubjid == "COPY-OF-" + source
    assert first.similarity == pytest.approx(1.0, abs=1e-5) and first.distance == pytest.approx(0, abs=1e-5)
    assert r.neighbours("COPY-OF-" + source, k=1)[0].usubjid == source
    # same for the copy searched within its arm, and in a whole-cohort query
    arm = kb.subjects.set_index("USUBJID").loc[source, "ARM"]
    assert r.neighbours(source, arm=arm, k=1)[0].usubjid == "COPY-OF-" + source
    many = r.neighbours_many(list(kb.subjects["USUBJID"]), arm=arm, k=5)
    assert many[source][0].usubjid == "COPY-OF-" + source


def test_query_patient_of_another_trial_with_a_knowledge_base_id_is_not_its_own_neighbour(pbc, chroma):
    source = pbc.subjects["USUBJID"].iloc[11]
    kb = with_copy(pbc, source, "COPY-OF-" + source)
    r = Retriever(kb, index=PatientIndex(client=chroma)).fit()
    query = pbc.subset([source], name="another study").baseline_only()
    hits = r.neighbours_many(query, k=5)[source]
    assert source not in ids_of(hits)
    assert hits[0].usubjid == "COPY-OF-" + source
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-5)


def test_arm_filter_is_respected(pilot, pilot_r):
    ids = list(pilot.subjects["USUBJID"])
    for arm in pilot.arms:
        many = pilot_r.neighbours_many(ids, arm=arm, k=10)
        assert set(many) == set(ids)
        for hits in many.values():
            assert len(hits) == 10
            assert {n.arm for n in hits} == {arm}
            arms = pilot.subjects.set_index("USUBJID").loc[ids_of(hits), "ARM"]
            assert set(arms) == {arm}
    one = pilot_r.neighbours(ids[0], arm=pilot.arms[-1], k=7)
    assert len(one) == 7 and {n.arm for n in one} == {pilot.arms[-1]}


@pytest.mark.parametrize("strategy", ["where", "post"])
def test_chroma_matches_exact_knn(pilot, pilot_exact, chroma, strategy):
    r = Retriever(pilot, index=PatientIndex(client=chroma, filter_strategy=strategy)).fit()
    ids = list(pilot.subjects["USUBJID"])
    for arm in (None, pilot.control_arm):
        got = r.neighbours_many(ids, arm=arm, k=10)
        ref = pilot_exact.neighbours_many(ids, arm=arm, k=10)
        recall = np.mean([len(set(ids_of(got[u])) & set(ids_of(ref[u]))) / 10 for u in ids])
        assert recall >= 0.98
        # similarities are the exact cosine similarities of the same vectors
        for u in ids[:20]:
            exact = {n.usubjid: n.similarity for n in ref[u]}
            for n in got[u]:
                if n.usubjid in exact:
                    assert n.similarity == pytest.approx(exact[n.usubjid], abs=1e-4)
            sims = [n.similarity for n in got[u]]
            assert sims == sorted(sims, reverse=True)


def test_source_is_never_its_own_neighbour(pilot, pilot_r, pilot_exact):
    ids = list(pilot.subjects["USUBJID"])
    for retriever in (pilot_r, pilot_exact):
        for arm in (None, *pilot.arms):
            many = retriever.neighbours_many(ids, arm=arm, k=10)
            for u, hits in many.items():
                assert u not in ids_of(hits)
                assert len(hits) == 10 and len(set(ids_of(hits))) == 10
        for u in ids[:10]:
            assert u not in ids_of(retriever.neighbours(u, k=10))


def test_exclude_and_small_arms(pilot, pilot_r):
    ids = list(pilot.subjects["USUBJID"])
    first = pilot_r.neighbours(ids[0], arm=pilot.control_arm, k=5)
    drop = ids_of(first)[:3]
    again = pilot_r.neighbours(ids[0], arm=pilot.control_arm, k=5, exclude=drop)
    assert not set(drop) & set(ids_of(again)) and len(again) == 5
    assert ids_of(again)[:2] == ids_of(first)[3:5]
    # asking for more than the arm holds returns the whole arm minus the source
    arm_size = pilot.arm_counts()[pilot.control_arm]
    everyone = pilot_r.neighbours(ids[0], arm=pilot.control_arm, k=arm_size + 50)
    src_in_arm = pilot.subjects.set_index("USUBJID").loc[ids[0], "ARM"] == pilot.control_arm
    assert len(everyone) == arm_size - int(src_in_arm)
    assert pilot_r.neighbours(ids[0], arm="no such arm", k=5) == []


def test_baseline_only_query_patients_are_comparable(pilot, pilot_r):
    """Patients offering baseline data only get the neighbours they have in the knowledge base."""
    ids = list(pilot.subjects["USUBJID"][:60])
    query = pilot.subset(ids, name="new patients").baseline_only()
    assert query.visit_values.empty
    from_trial = pilot_r.neighbours_many(query, arm=pilot.control_arm, k=10)
    from_ids = pilot_r.neighbours_many(ids, arm=pilot.control_arm, k=10)
    for u in ids:
        assert ids_of(from_trial[u]) == ids_of(from_ids[u])
        np.testing.assert_allclose([n.similarity for n in from_trial[u]],
                                   [n.similarity for n in from_ids[u]], atol=1e-5)


def test_rebuild_is_idempotent(pilot, chroma):
    index = PatientIndex(client=chroma)
    first = Retriever(pilot, index=index).fit().build_report
    second = Retriever(pilot, index=PatientIndex(client=chroma)).fit().build_report
    assert second.name == first.name
    assert second.reused and second.added == 0 and second.removed == 0
    assert second.count == len(pilot.subjects) == index.count()
    # an interrupted build (some patients missing, not marked complete) is resumed, not redone
    col = chroma.get_collection(first.name, embedding_function=None)
    gone = list(pilot.subjects["USUBJID"][:17])
    col.delete(ids=gone)
    col.modify(metadata={**col.metadata, "complete": False})
    resumed = Retriever(pilot, index=PatientIndex(client=chroma)).fit().build_report
    assert not resumed.reused and resumed.added == len(gone) and resumed.removed == 0
    assert chroma.get_collection(first.name, embedding_function=None).count() == len(pilot.subjects)
    assert Retriever(pilot, index=PatientIndex(client=chroma)).fit().build_report.reused


@pytest.mark.filterwarnings("ignore:legacy embedding function config")
def test_collection_naming_metadata_and_configuration(pilot, pilot_r, chroma):
    vec = pilot_r.vectorizer
    name = pilot_r.build_report.name
    assert name == f"{VECTOR_VERSION}_base_{pilot.content_hash[:16]}_{vec.fingerprint()[:8]}"
    col = chroma.get_collection(name, embedding_function=None)
    meta = col.metadata
    assert meta["vector_version"] == VECTOR_VERSION and meta["fingerprint"] == vec.fingerprint()
    assert meta["trial_hash"] == pilot.content_hash and meta["complete"] is True
    assert meta["n"] == len(pilot.subjects) and meta["space"] == "baseline"
    assert col.configuration["hnsw"]["space"] == "cosine"
    assert col.configuration["hnsw"]["ef_search"] == DEFAULT_HNSW["ef_search"]
    got = col.get(ids=[pilot_r.vectors.ids[0]], include=["embeddings", "metadatas"])
    assert got["metadatas"][0]["arm"] == pilot_r.vectors.arms[0]
    np.testing.assert_allclose(got["embeddings"][0], pilot_r.embeddings[0], atol=1e-6)
    # the full space lives in its own collection
    full = Retriever(pilot, index=PatientIndex(client=chroma), space="full").fit()
    assert full.build_report.name.startswith(f"{VECTOR_VERSION}_full_{pilot.content_hash[:16]}")
    # other weights give other vectors, hence another collection
    heavy = Retriever(pilot, vectorizer=PatientVectorizer(weights={"baseline": 3}),
                      index=PatientIndex(client=chroma)).fit()
    assert heavy.build_report.name != name and not heavy.build_report.reused


def test_neighbour_data(pbc, chroma):
    r = Retriever(pbc, index=PatientIndex(client=chroma)).fit()
    src = pbc.subjects["USUBJID"].iloc[0]
    hits = r.neighbours(src, arm=pbc.control_arm, k=4)
    data = r.neighbour_data(ids_of(hits))
    assert list(data.subjects["USUBJID"]) == ids_of(hits)
    assert set(data.subjects["ARM"]) == {pbc.control_arm}
    assert list(data.baseline.index) == ids_of(hits)
    np.testing.assert_array_equal(data.baseline.to_numpy(), pbc.baseline.loc[ids_of(hits)].to_numpy())
    tr = data.trajectories
    assert list(dict.fromkeys(tr["USUBJID"])) == ids_of(hits)
    base = tr[tr["ABLFL"] == "Y"]
    assert (base["AVISIT"] == "Baseline").all() and base["CHG"].isna().all()
    post = tr[tr["ABLFL"] != "Y"]
    vv = pbc.visit_values[pbc.visit_values["USUBJID"].isin(ids_of(hits))]
    assert len(post) == len(vv)
    np.testing.assert_allclose(post["CHG"], post["AVAL"] - post["BASE"])
    assert data.tte is not None and set(data.tte["USUBJID"]) <= set(ids_of(hits))
    with pytest.raises(KeyError, match="NOBODY"):
        patient_data(pbc, ["NOBODY"])


def test_query_by_vector_and_bad_queries(pilot, pilot_r):
    E = pilot_r.embeddings
    hits = pilot_r.neighbours(E[3], k=2)
    assert hits[0].usubjid == pilot_r.vectors.ids[3]      # a bare vector has no identity to drop
    with pytest.raises(KeyError, match="not among"):
        pilot_r.neighbours("NOBODY", k=3)
    with pytest.raises(ValueError, match="numbers"):
        pilot_r.neighbours(np.ones(5, dtype=np.float32), k=3)
    with pytest.raises(ValueError, match="neighbours_many"):
        pilot_r.neighbours(E[:2], k=3)
    assert pilot_r.neighbours_many([], k=3) == {}


def test_exact_index_contract():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(50, 6)).astype(np.float32)
    ids = [f"P{i}" for i in range(50)]
    arms = ["A" if i % 2 else "B" for i in range(50)]
    idx = ExactIndex()
    with pytest.raises(PatientIndexError, match="not built"):
        idx.query(E[:1], k=3)
    idx.build(ids, arms, E)
    hits = idx.query(E[:5], k=3, arm="A", self_ids=ids[:5])
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    for r, row in enumerate(hits):
        sims = En[r] @ En.T
        order = [j for j in np.argsort(-sims) if arms[j] == "A" and j != r][:3]
        assert [h.usubjid for h in row] == [ids[j] for j in order]


def test_client_factory_follows_settings(monkeypatch, tmp_path, pilot):
    monkeypatch.setenv("TWINARM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CHROMA_HOST", raising=False)
    monkeypatch.delenv("CHROMA_PORT", raising=False)
    reset_client()
    try:
        client = get_client()
        assert get_client() is client          # one per process
        r = Retriever(pilot.subset(list(pilot.subjects["USUBJID"][:30]))).fit()
        assert r.index.client is client
        assert (tmp_path / "home" / "chroma" / "chroma.sqlite3").exists()
        monkeypatch.setenv("CHROMA_PORT", "not-a-port")
        with pytest.raises(PatientIndexError, match="CHROMA_PORT"):
            get_client()
    finally:
        reset_client()


def test_info_for_run_manifests(pilot, pilot_r, pilot_exact):
    info = pilot_r.info()
    assert info["vector_version"] == VECTOR_VERSION and info["space"] == "baseline"
    assert info["index"] == pilot_r.build_report.name and info["store"] == "chroma"
    assert info["patients"] == len(pilot.subjects) and info["dim"] == pilot_r.embeddings.shape[1]
    assert pilot_exact.info()["store"] == "numpy (exact)"
    assert pilot_exact.info()["fingerprint"] == info["fingerprint"]


def test_collection_names_of_derived_trials_are_valid_and_distinct():
    from services.retrieval.index import collection_name

    a = collection_name("baseline-only 727c5e", "baseline", "ab12cd34")
    b = collection_name("baseline-only 727c5f", "baseline", "ab12cd34")
    assert a != b and all(ch.isalnum() or ch in "._-" for ch in a)
    assert collection_name("3f2a" * 16, "baseline", "ab12cd34").split("_")[2] == ("3f2a" * 4)
