"""Keeping the similar-patient store tidy: when each index was made and last used, listing and
pruning them (service and `twinarm index`), and a process whose index was pruned under it."""

from __future__ import annotations

import json
import time

import chromadb
import pytest
from chromadb.config import Settings

from services import cli
from services.retrieval.maintenance import list_indexes, prune_indexes
from services.retrieval.retriever import ExactRetriever, Retriever


@pytest.fixture
def client(tmp_path):
    return chromadb.PersistentClient(path=str(tmp_path / "chroma"),
                                     settings=Settings(anonymized_telemetry=False))


@pytest.fixture
def epilepsy(demo_trials):
    return next(t for t in demo_trials if t.name == "epilepsy")


@pytest.fixture
def btheb(demo_trials):
    return next(t for t in demo_trials if t.name == "btheb")


def test_indexes_record_when_they_were_made_and_used(client, epilepsy, btheb):
    t0 = time.time()
    Retriever(epilepsy, client=client).fit()
    Retriever(btheb, client=client).fit()
    entries = list_indexes(client)
    assert {e.trial_hash for e in entries} == {epilepsy.content_hash, btheb.content_hash}
    for e in entries:
        assert e.complete and e.space == "baseline" and e.vector_version == "pv1"
        assert t0 - 1 <= e.created <= e.last_used <= time.time() + 1
        assert e.idle_days() < 0.01
    assert {e.patients for e in entries} == {len(epilepsy.subjects), len(btheb.subjects)}


def test_prune_removes_only_unused_twinarm_indexes(client, epilepsy, btheb):
    Retriever(epilepsy, client=client).fit()
    Retriever(btheb, client=client).fit()
    foreign = client.create_collection("someone_elses", embedding_function=None)
    foreign.add(ids=["a"], embeddings=[[1.0, 0.0]])
    now = time.time()
    # 40 days later nothing was used: a dry run names both, deletes nothing
    later = now + 40 * 86400
    would = prune_indexes(30, dry_run=True, client=client, now=later)
    assert len(would) == 2 and len(list_indexes(client)) == 2
    # 10 days later both are recent: nothing goes
    assert prune_indexes(30, client=client, now=now + 10 * 86400) == []
    gone = prune_indexes(30, client=client, now=later)
    assert {e.trial_hash for e in gone} == {epilepsy.content_hash, btheb.content_hash}
    assert list_indexes(client) == []
    assert [c.name for c in client.list_collections()] == ["someone_elses"]
    assert prune_indexes(everything=True, client=client) == []  # never someone else's


def test_a_pruned_index_is_rebuilt_by_the_process_that_uses_it(client, epilepsy):
    r = Retriever(epilepsy, client=client).fit()
    exact = ExactRetriever(epilepsy).fit()
    ids = list(epilepsy.subjects["USUBJID"][:5])
    before = r.neighbours_many(ids, arm="Placebo", k=5)
    prune_indexes(everything=True, client=client)
    assert list_indexes(client) == []
    after = r.neighbours_many(ids, arm="Placebo", k=5)  # rebuilt, same answer
    assert {u: [n.usubjid for n in h] for u, h in after.items()} == \
        {u: [n.usubjid for n in h] for u, h in before.items()} == \
        {u: [n.usubjid for n in h] for u, h in exact.neighbours_many(ids, arm="Placebo", k=5).items()}
    assert len(list_indexes(client)) == 1


def test_cli_index_list_and_prune(tmp_path, monkeypatch, capsys, epilepsy):
    monkeypatch.setenv("TWINARM_HOME", str(tmp_path / "home"))
    from services.retrieval.retriever import retriever_for

    retriever_for(epilepsy)  # the app's path: the process-wide client of TWINARM_HOME
    assert cli.main(["index", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert str(tmp_path / "home") in listed["store"]
    assert [e["trial_hash"] for e in listed["indexes"]] == [epilepsy.content_hash]

    assert cli.main(["index", "prune"]) == 0  # just used: kept
    assert "deleted 0 index(es) unused for 30 days" in capsys.readouterr().out
    assert cli.main(["index", "prune", "--all", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete 1 index(es)" in out and listed["indexes"][0]["name"] in out
    assert cli.main(["index", "prune", "--all", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["deleted"]) == 1
    assert cli.main(["index", "list"]) == 0
    assert ": 0 TwinArm index(es)" in capsys.readouterr().out
    assert cli.main(["index", "prune", "--unused-days", "-1"]) == 1
    assert capsys.readouterr().err.startswith("twinarm: error: --unused-days must be >= 0")
