"""The `llm` generator end to end: the real LangChain client against a real OpenAI-compatible
HTTP server on 127.0.0.1 (tests/llm_server.py) on the bundled PBC trial. No mocks."""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from llm_server import ScriptedOpenAIServer, find_payload, good_reply

from services.data.loading import load_trial
from services.generation import GENERATORS, GeneratorError, get_generator
from services.generation.llm import PROMPT_VERSION, LLMSettings
from services.generation.llm.generator import (
    UNAVAILABLE_MESSAGE,
    ConsentRequiredError,
    LLMGenerator,
    LLMUnavailableError,
    llm_status,
)
from services.generation.llm.prompt import DATE_PATTERNS
from services.generation.run import ADSL_FRONT, BDS_COLUMNS, MANIFEST_KEYS, TTE_COLUMNS, write_run

SECRET = "sk-test-VERY-SECRET-0123456789"


@pytest.fixture
def server():
    with ScriptedOpenAIServer() as srv:
        yield srv


def settings_for(srv, **changes) -> LLMSettings:
    values = {"base_url": srv.base_url, "api_key": SECRET, "model": "scripted-model",
              "timeout_s": 15, "max_retries": 1, "concurrency": 4, "temperature": 0.0}
    values.update(changes)
    return LLMSettings(**values)


def treated(trial, n):
    return list(trial.subjects.loc[trial.subjects["ARM"] == "D-penicillamine", "USUBJID"])[:n]


def placebo(trial, n):
    return list(trial.subjects.loc[trial.subjects["ARM"] == "Placebo", "USUBJID"])[:n]


@pytest.fixture(scope="module")
def hybrid_gen(pbc, tmp_path_factory):
    """One fitted hybrid generator (the local reference model is fitted once)."""
    return LLMGenerator(settings=LLMSettings(), use_cache=False,
                        cache_dir=str(tmp_path_factory.mktemp("llmcache"))).fit(pbc)


def plain_gen(pbc, srv, tmp_path, **kw):
    kw.setdefault("use_cache", False)
    return LLMGenerator(hybrid=False, settings=settings_for(srv), cache_dir=str(tmp_path / "cache"),
                        **kw).fit(pbc)


def frames(run):
    return [run.adsl] + [run.bds[k] for k in sorted(run.bds)] + ([run.tte] if run.tte is not None else [])


def user_messages(srv) -> list[str]:
    return [m["content"] for body in srv.calls for m in body["messages"] if m["role"] == "user"]


# ---------------------------------------------------------------------------------------------


def test_registered_and_settings_without_secrets(server):
    assert GENERATORS["llm"] is LLMGenerator
    gen = get_generator("llm", neighbors=3, settings=settings_for(server))
    params = gen.get_params()
    assert params["neighbors"] == 3 and params["hybrid"] is True
    json.dumps(params)  # JSON-able
    assert SECRET not in json.dumps(params) and SECRET not in repr(gen)
    assert gen.available()


def test_placebo_twins_in_the_contract_format(pbc, hybrid_gen, server, tmp_path):
    gen = hybrid_gen.with_endpoint(settings_for(server))
    sources = treated(pbc, 4)
    run = gen.generate(pbc.subset(sources), "Placebo", twins_per_patient=2, seed=1)

    # ADSL: K twins per source, target arm, covariates copied
    assert list(run.adsl.columns[:4]) == ADSL_FRONT
    assert len(run.adsl) == 8 and set(run.adsl["ARM"]) == {"Placebo"}
    assert list(run.adsl["SRCSUBJID"]) == [s for s in sources for _ in range(2)]
    assert list(run.adsl["TWINIDX"]) == [1, 2] * 4
    src_age = pbc.subjects.set_index("USUBJID").loc[sources, "AGE"].to_numpy()
    assert np.allclose(run.adsl["AGE"].to_numpy()[::2], src_age)

    # BDS: the source's baseline copied (ABLFL=Y), a value at every scheduled visit
    adlb = run.bds["adlb"]
    assert list(adlb.columns) == BDS_COLUMNS
    visits = gen.visits("Placebo")
    assert set(visits) == set(pbc.longitudinal_parameters)
    expected = {(p, v.avisitn) for p, vs in visits.items() for v in vs}
    for tid, grp in adlb.groupby("USUBJID"):
        post = grp[grp["ABLFL"] != "Y"]
        assert set(zip(post["PARAMCD"], post["AVISITN"])) == expected, tid
        assert len(post) == len(expected)
        src = grp["SRCSUBJID"].iloc[0]
        base = grp[grp["ABLFL"] == "Y"].set_index("PARAMCD")["AVAL"]
        assert np.allclose(base.to_numpy(), pbc.baseline.loc[src, base.index].to_numpy())
    nominal = {(p, v.avisitn): v.ady for p, vs in visits.items() for v in vs}
    post = adlb[adlb["ABLFL"] != "Y"]
    assert np.allclose(post["ADY"], [nominal[(p, a)] for p, a in zip(post["PARAMCD"], post["AVISITN"])])
    ranges = gen.plausible_ranges("Placebo")
    for p, (lo, hi) in ranges.items():
        vals = post.loc[post["PARAMCD"] == p, "AVAL"]
        assert vals.between(lo, hi).all(), p

    # TTE: one record per twin and event type
    assert list(run.tte.columns) == TTE_COLUMNS
    assert len(run.tte) == 8 * len(pbc.tte_parameters)
    assert set(run.tte["CNSR"]) <= {0, 1} and (run.tte["AVAL"] > 0).all()

    # manifest: model, prompt version, usage, neighbours; never the key
    m = run.manifest
    assert set(MANIFEST_KEYS) <= set(m)
    assert m["generator"] == "llm" and m["model"] == "scripted-model"
    assert m["prompt_version"] == PROMPT_VERSION
    assert m["llm"]["usage"]["calls"] == 8 and m["llm"]["usage"]["ok"] == 8
    assert m["llm"]["usage"]["input_tokens"] > 0 and "estimated_cost_usd" in m
    assert m["failures"] == [] and m["counts"]["twins"] == 8
    assert m["llm"]["settings"]["api_key_set"] is True and "api_key" not in m["llm"]["settings"]
    placebo_ids = set(placebo(pbc, 10_000))
    for s in sources:
        for t in (1, 2):
            nb = m["neighbours"][f"{s}-T{t}"]
            assert len(nb) == 5 and s not in nb and set(nb) <= placebo_ids
    folder = write_run(run, tmp_path / "twins")
    text = "".join(p.read_text(errors="ignore") for p in folder.iterdir())
    assert SECRET not in text

    # hybrid: the local generator's forecast is in every prompt
    payloads = [find_payload(body) for body in server.calls]
    assert all(p.get("reference_forecast") for p in payloads)
    assert {p["patient"]["key"] for p in payloads} == {"P1", "P2", "P3", "P4"}

    # the folder loads as a trial
    back = load_trial(folder)
    assert len(back.subjects) == 8 and set(back.tte_parameters) == set(pbc.tte_parameters)


def test_prompts_carry_no_subject_ids_and_no_dates(pbc, server, tmp_path):
    gen = plain_gen(pbc, server, tmp_path)
    gen.generate(pbc.subset(treated(pbc, 3) + placebo(pbc, 2)), "Placebo", twins_per_patient=1, seed=2)
    texts = user_messages(server)
    assert len(texts) == 5
    ids = set(pbc.subjects["USUBJID"])
    numbers = {u.split("-")[-1] for u in ids}
    for text in texts:
        for u in ids:
            assert u not in text
        for pat in DATE_PATTERNS:
            assert not pat.search(text), pat.search(text).group(0)
        payload = json.loads(text)
        assert re.fullmatch(r"P\d+", payload["patient"]["key"])
        assert all(re.fullmatch(r"N\d+", n["key"]) for n in payload["neighbours"])
        assert len(payload["neighbours"]) == 5
        # no identifier-like strings anywhere (e.g. the numeric part of PBC-0007)
        strings = re.findall(r'"([^"]*)"', text)
        assert not any(s in numbers for s in strings)


def test_a_failing_twin_is_listed_while_the_others_complete(pbc, server, tmp_path):
    server.hook = lambda body: "malformed" if find_payload(body)["patient"]["key"] == "P2" else None
    gen = plain_gen(pbc, server, tmp_path)
    sources = treated(pbc, 3)
    run = gen.generate(pbc.subset(sources), "Placebo", twins_per_patient=1, seed=3)
    assert list(run.adsl["SRCSUBJID"]) == [sources[0], sources[2]]
    assert sources[1] not in set(run.bds["adlb"]["SRCSUBJID"])
    assert sources[1] not in set(run.tte["SRCSUBJID"])
    (failure,) = run.manifest["failures"]
    assert failure["source"] == sources[1] and failure["twin_index"] == 1
    assert failure["reason"] == "invalid reply" and failure["attempts"] == 2
    assert failure["errors"] and "JSON" in failure["errors"][0]
    assert run.manifest["counts"]["failures"] == 1 and run.manifest["counts"]["twins"] == 2


def test_second_identical_run_is_served_from_the_cache(pbc, server, tmp_path):
    gen = plain_gen(pbc, server, tmp_path, use_cache=True)
    sources = pbc.subset(treated(pbc, 3))
    first = gen.generate(sources, "Placebo", twins_per_patient=2, seed=4)
    calls = len(server.calls)
    assert calls == 6
    again = plain_gen(pbc, server, tmp_path, use_cache=True)
    second = again.generate(sources, "Placebo", twins_per_patient=2, seed=4)
    assert len(server.calls) == calls  # zero new calls
    usage = second.manifest["llm"]["usage"]
    assert usage["cache_hits"] == 6 and usage["calls"] == 0
    for a, b in zip(frames(first), frames(second)):
        pd.testing.assert_frame_equal(a, b)
    # another seed is another request
    gen.generate(sources, "Placebo", twins_per_patient=2, seed=5)
    assert len(server.calls) == calls + 6


def test_deterministic_whatever_the_concurrency(pbc, server, tmp_path):
    sources = pbc.subset(treated(pbc, 4))
    one = LLMGenerator(hybrid=False, settings=settings_for(server, concurrency=1), use_cache=False).fit(pbc)
    many = LLMGenerator(hybrid=False, settings=settings_for(server, concurrency=6), use_cache=False).fit(pbc)
    a = one.generate(sources, "Placebo", twins_per_patient=2, seed=9)
    b = many.generate(sources, "Placebo", twins_per_patient=2, seed=9)
    for x, y in zip(frames(a), frames(b)):
        pd.testing.assert_frame_equal(x, y)
    assert a.manifest["neighbours"] == b.manifest["neighbours"]


def test_a_source_of_the_target_arm_never_sees_its_own_data(pbc, server, tmp_path):
    gen = plain_gen(pbc, server, tmp_path)
    # the placebo patient with the highest bilirubin ever observed
    vv = pd.concat([pbc.baseline_long, pbc.visit_values])
    bili = vv[vv["PARAMCD"] == "BILI"]
    top = bili.loc[bili["AVAL"].idxmax(), "USUBJID"]
    assert pbc.subjects.set_index("USUBJID").at[top, "ARM"] == "Placebo"
    run = gen.generate(pbc.subset([top]), "Placebo", twins_per_patient=1, seed=0)
    assert top not in run.manifest["neighbours"][f"{top}-T1"]
    payload = find_payload(server.calls[0])
    dd = {e["paramcd"]: e for e in payload["data_dictionary"]}
    assert dd["BILI"]["observed_max"] < bili["AVAL"].max()
    assert len(payload["neighbours"]) == 5
    assert all(n["key"] != payload["patient"]["key"] for n in payload["neighbours"])
    # the range the validator enforces is the observed one without the source, widened
    hi = gen.plausible_ranges("Placebo", without=top)["BILI"][1]
    assert gen.plausible_ranges("Placebo")["BILI"][1] > hi
    spec = next(v for v in payload["required"]["visits"] if v["paramcd"] == "BILI")
    assert spec["max"] == pytest.approx(hi)


def test_cancel_keeps_the_finished_twins(pbc, tmp_path):
    with ScriptedOpenAIServer(latency_s=0.2) as srv:
        gen = LLMGenerator(hybrid=False, settings=settings_for(srv, concurrency=1), use_cache=False).fit(pbc)
        stop = threading.Event()

        def progress(done, total):
            if done >= 2:
                stop.set()

        run = gen.generate(pbc.subset(treated(pbc, 6)), "Placebo", twins_per_patient=1, seed=0,
                           progress=progress, cancel=stop)
    assert run.manifest["cancelled"] is True
    assert 2 <= run.n_twins < 6
    assert run.manifest["failures"] == []
    assert run.manifest["counts"]["cancelled_twins"] == 6 - run.n_twins
    assert set(run.bds["adlb"]["USUBJID"]) == set(run.adsl["USUBJID"])


def test_remote_endpoint_refused_without_consent(pbc, server):
    remote = LLMSettings(base_url="https://llm.example.com/v1", api_key=SECRET, model="m")
    gen = LLMGenerator(hybrid=False, settings=remote).fit(pbc)
    with pytest.raises(ConsentRequiredError, match="not on this machine") as err:
        gen.generate(pbc.subset(treated(pbc, 2)), "Placebo")
    assert SECRET not in str(err.value)
    assert isinstance(err.value, GeneratorError)
    # consent is a setting of its own; a local endpoint needs none
    assert gen.with_endpoint(allow_remote=True).allow_remote is True
    LLMGenerator(hybrid=False, settings=settings_for(server)).check_available()


def test_unavailable_without_an_endpoint(pbc, monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TWINARM_LLM_EMBEDDED", "0")  # installed or not, the embedded model is off
    gen = LLMGenerator(hybrid=False)
    assert not gen.available()
    assert llm_status()["available"] is False and llm_status()["message"] == UNAVAILABLE_MESSAGE
    with pytest.raises(LLMUnavailableError, match="LLM generator unavailable: set OPENAI_API_KEY"):
        gen.fit(pbc).generate(pbc.subset(treated(pbc, 1)), "Placebo")
    with pytest.raises(GeneratorError, match="not an arm"):
        LLMGenerator(hybrid=False, settings=LLMSettings(base_url="http://127.0.0.1:9/v1")).fit(pbc) \
            .generate(pbc.subset(treated(pbc, 1)), "Aspirin")


def test_hybrid_falls_back_to_the_local_draw_where_a_reply_is_implausible(pbc, hybrid_gen,
                                                                         server):
    """A value inside the plausible range but far from the local forecast (> 3 SD of the local
    draws) is replaced by the twin's own local draw; the other values are the model's."""
    def far_albumin(body):
        reply = good_reply(body)
        payload = find_payload(body)
        if payload["patient"]["key"] == "P1":
            hi = next(s["max"] for s in payload["required"]["visits"] if s["paramcd"] == "ALB")
            for v in reply["visits"]:
                if v["paramcd"] == "ALB":
                    v["aval"] = hi  # the top of the plausible range: valid, implausible here
        return reply

    sources = treated(pbc, 2)
    server.default = far_albumin
    gen = hybrid_gen.with_endpoint(settings_for(server))
    gen.calibration = 0  # the model's values as written (no weight learned): the fallback alone
    run = gen.generate(pbc.subset(sources), "Placebo", twins_per_patient=2, seed=4)
    assert run.manifest["twins_balanced"] is False      # the model's own values: read as exchangeable
    kept = hybrid_gen.with_endpoint(settings_for(server))
    kept.fallback_sd, kept.calibration = None, 0
    raw = kept.generate(pbc.subset(sources), "Placebo", twins_per_patient=2, seed=4)

    ranges = gen.plausible_ranges("Placebo")
    alb = lambda r: r.values().query("PARAMCD == 'ALB'").set_index(["USUBJID", "AVISITN"])["AVAL"]
    new, old = alb(run), alb(raw)
    p1 = new.index.get_level_values(0).str.startswith(sources[0])
    assert (old[p1] == ranges["ALB"][1]).all()           # the model's values, kept as written
    changed = new[p1] != old[p1]
    assert changed.all() and (new[p1] < 5.0).all()       # replaced by local draws
    assert (new[~p1] == old[~p1]).all()                  # plausible replies untouched
    # each twin keeps its own local draw
    t1 = new[new.index.get_level_values(0) == f"{sources[0]}-T1"].to_numpy()
    t2 = new[new.index.get_level_values(0) == f"{sources[0]}-T2"].to_numpy()
    assert not np.array_equal(t1, t2)
    fb = run.manifest["llm"]["fallback"]
    assert fb["twins_with_replacements"] == 2 and fb["values_replaced"] == changed.sum()
    assert any("hybrid fallback" in n for n in run.manifest["notes"])
    assert "fallback" not in raw.manifest["llm"] and run.manifest["settings"]["fallback_sd"] == 3.0
