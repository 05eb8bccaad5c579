"""Client/server mode: a real `chroma run` server shared through CHROMA_HOST/CHROMA_PORT gives
the same neighbours as the embedded store. Skips cleanly when the `chroma` CLI is absent."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from services import cli
from services.retrieval import index as index_mod
from services.retrieval.index import PatientIndex, get_client, reset_client
from services.retrieval.retriever import Retriever

pytestmark = pytest.mark.server


def _chroma_cli() -> str | None:
    local = Path(sys.executable).with_name("chroma")
    if local.exists():
        return str(local)
    return shutil.which("chroma")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _heartbeat(port: int) -> bool:
    for path in ("/api/v2/heartbeat", "/api/v1/heartbeat"):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            continue
    return False


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    cli = _chroma_cli()
    if cli is None:
        pytest.skip("the chroma CLI is not installed")
    path = tmp_path_factory.mktemp("chroma_server")
    port = _free_port()
    log = open(path / "server.log", "wb")  # noqa: SIM115 - closed in the teardown below
    proc = subprocess.Popen([cli, "run", "--path", str(path / "data"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    try:
        deadline = time.monotonic() + 60
        while not _heartbeat(port):
            if proc.poll() is not None:
                pytest.fail(f"chroma run exited with {proc.returncode}: "
                            f"{(path / 'server.log').read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("chroma run did not answer its heartbeat within 60 s")
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def test_server_gives_the_same_neighbours_as_embedded(pbc, chroma_server, monkeypatch, tmp_path,
                                                      capsys):
    ids = list(pbc.subjects["USUBJID"])

    # embedded reference, on its own temporary store
    monkeypatch.delenv("CHROMA_HOST", raising=False)
    monkeypatch.delenv("CHROMA_PORT", raising=False)
    monkeypatch.setenv("TWINARM_HOME", str(tmp_path / "home"))
    reset_client()
    try:
        embedded = Retriever(pbc).fit()
        assert index_mod._client_key()[0] == "embedded"
        ref = embedded.neighbours_many(ids, arm=pbc.control_arm, k=10)
        ref_all = embedded.neighbours_many(ids[:40], k=5)

        # the same trial through the server
        monkeypatch.setenv("CHROMA_HOST", "127.0.0.1")
        monkeypatch.setenv("CHROMA_PORT", str(chroma_server))
        reset_client()
        client = get_client()
        assert index_mod._client_key() == ("http", "127.0.0.1", chroma_server)
        assert client.heartbeat() > 0
        served = Retriever(pbc).fit()
        assert served.index.client is client
        assert served.build_report.added == len(ids) and not served.build_report.reused
        got = served.neighbours_many(ids, arm=pbc.control_arm, k=10)
        got_all = served.neighbours_many(ids[:40], k=5)
        for u in ids:
            assert [n.usubjid for n in got[u]] == [n.usubjid for n in ref[u]]
            assert [n.similarity for n in got[u]] == pytest.approx([n.similarity for n in ref[u]], abs=1e-5)
        for u in ids[:40]:
            assert [n.usubjid for n in got_all[u]] == [n.usubjid for n in ref_all[u]]

        # a second app process (here: a fresh client) finds the index complete and adds nothing
        reset_client()
        again = Retriever(pbc, index=PatientIndex(client=get_client())).fit()
        assert again.build_report.reused and again.build_report.added == 0
        names = [c.name for c in get_client().list_collections()]
        assert served.build_report.name in names

        # `twinarm index` sees the server's store; a prune there is repaired by the process
        # that still holds the index (it rebuilds it on its next query)
        assert cli.main(["index", "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert f"127.0.0.1:{chroma_server}" in listed["store"]
        assert served.build_report.name in [e["name"] for e in listed["indexes"]]
        assert cli.main(["index", "prune", "--all"]) == 0
        assert served.build_report.name not in [c.name for c in get_client().list_collections()]
        again_got = served.neighbours_many(ids, arm=pbc.control_arm, k=10)
        assert all([n.usubjid for n in again_got[u]] == [n.usubjid for n in ref[u]] for u in ids)
        assert served.build_report.name in [c.name for c in get_client().list_collections()]
    finally:
        reset_client()
