"""LLM writer against a real scripted HTTP server with the real LangChain client (no mocks)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from llm_server import ScriptedOpenAIServer, ScriptedResponse, good_reply

from services.generation.llm import (
    LLMSettings,
    LLMTwinWriter,
    PrivacyError,
    RemoteEndpointError,
    TwinRequest,
    build_messages,
    is_local_endpoint,
    load_secrets_file,
    validate_reply,
)

SECRET = "sk-test-VERY-SECRET-0123456789"


def make_request(i: int = 1, twin_index: int = 1, seed: int | None = 7) -> TwinRequest:
    return TwinRequest(
        source_key=f"P{i}",
        twin_index=twin_index,
        target_arm="Placebo",
        trial={"title": "Demo AD trial", "indication": "Alzheimer's disease",
               "arm_description": "matching placebo, oral, daily"},
        data_dictionary=[
            {"paramcd": "ADAS11", "label": "ADAS-Cog 11", "unit": "points", "min": 2, "max": 60,
             "visits": [{"avisitn": 4, "avisit": "Week 4", "ady": 28},
                        {"avisitn": 12, "avisit": "Week 12", "ady": 84},
                        {"avisitn": 24, "avisit": "Week 24", "ady": 168}]},
            {"paramcd": "MMSE", "label": "Mini-Mental State", "unit": "points", "min": 10,
             "max": 30, "visits": [{"avisitn": 12, "avisit": "Week 12", "ady": 84},
                                   {"avisitn": 24, "avisit": "Week 24", "ady": 168}]},
        ],
        plausible_ranges={"ADAS11": (0, 70), "MMSE": (0, 30)},
        baseline={"covariates": {"AGE": 70 + i, "SEX": "F", "APOE4": "Y"},
                  "values": {"ADAS11": 18.0 + i, "MMSE": 24}},
        neighbours=[
            {"key": f"N{k}", "similarity": 0.9 - 0.1 * k,
             "covariates": {"AGE": 68 + k, "SEX": "F"},
             "baseline": {"ADAS11": 17.0 + k, "MMSE": 25},
             "trajectory": {"ADAS11": [[4, 18.0 + k], [12, 19.5 + k], [24, 21.0 + k]],
                            "MMSE": [[12, 24], [24, 23]]},
             "events": {"TTDISC": [150 + 10 * k, k % 2]}}
            for k in range(1, 4)
        ],
        tte=[{"paramcd": "TTDISC", "label": "Time to discontinuation", "max_days": 200}],
        seed=seed,
    )


@pytest.fixture
def server():
    with ScriptedOpenAIServer() as srv:
        yield srv


def make_writer(srv, tmp_path, **overrides) -> LLMTwinWriter:
    values = {"base_url": srv.base_url, "api_key": SECRET, "model": "scripted-model",
              "timeout_s": 10, "concurrency": 4}
    values.update(overrides)
    return LLMTwinWriter(LLMSettings(**values), cache_dir=tmp_path / "cache")


# -- happy path and retries -------------------------------------------------------------------
def test_valid_reply_single_call(server, tmp_path):
    with make_writer(server, tmp_path) as w:
        [res] = w.write_many([make_request()])
    assert res.ok and res.reason == "ok" and res.attempts == 1 and not res.cached
    assert len(server.calls) == 1
    body = server.calls[0]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["seed"] == 7 and body["model"] == "scripted-model"
    vals = res.reply.visit_values()
    assert set(vals) == {("ADAS11", 4.0), ("ADAS11", 12.0), ("ADAS11", 24.0),
                         ("MMSE", 12.0), ("MMSE", 24.0)}
    assert all(0 <= v <= 70 for v in vals.values())
    aval, cnsr = res.reply.event_values()["TTDISC"]
    assert 0 < aval <= 200 and cnsr in (0, 1)
    assert res.input_tokens > 0 and res.output_tokens > 0
    u = w.last_usage
    assert (u.calls, u.ok, u.failed, u.cache_hits) == (1, 1, 0, 0)
    assert u.estimated_cost_usd == 0.0  # local endpoint
    assert u.overhead_seconds >= 0 and u.http_seconds > 0


def test_malformed_then_valid_retries_with_feedback(server, tmp_path):
    server.push("malformed", "good")
    with make_writer(server, tmp_path) as w:
        [res] = w.write_many([make_request()])
    assert res.ok and res.attempts == 2 and len(server.calls) == 2
    retry_msgs = server.calls[1]["messages"]
    assert retry_msgs[-2]["role"] == "assistant" and "Sure!" in retry_msgs[-2]["content"]
    assert "not valid JSON" in retry_msgs[-1]["content"]
    assert res.notes and "not valid JSON" in res.notes[0]


def test_out_of_range_rejected_then_retried(server, tmp_path):
    server.push("out_of_range", "good")
    with make_writer(server, tmp_path) as w:
        [res] = w.write_many([make_request()])
    assert res.ok and res.attempts == 2
    feedback = server.calls[1]["messages"][-1]["content"]
    assert "ADAS11 at visit 4" in feedback and "outside the plausible range [0, 70]" in feedback


def test_invalid_replies_exhaust_retries(server, tmp_path):
    server.default = "missing_visit"
    with make_writer(server, tmp_path, max_retries=1) as w:
        [res] = w.write_many([make_request()])
    assert not res.ok and res.reason == "invalid reply" and res.attempts == 2
    assert any("Missing value for ADAS11 at visit 4" in e for e in res.errors)
    assert res.reply is None


def test_rate_limit_honours_retry_after(server, tmp_path):
    server.push("rate_limit", "good")
    with make_writer(server, tmp_path) as w:
        t0 = time.perf_counter()
        [res] = w.write_many([make_request()])
        elapsed = time.perf_counter() - t0
    assert res.ok and res.attempts == 2 and len(server.calls) == 2
    assert elapsed >= 0.9 and res.wait_seconds >= 0.9


def test_rate_limit_bounded_then_fails(server, tmp_path):
    server.default = "rate_limit"
    with make_writer(server, tmp_path, max_rate_limit_retries=1) as w:
        [res] = w.write_many([make_request()])
    assert not res.ok and res.reason == "rate limited" and res.attempts == 2
    assert "rate limited" in res.errors[0]


def test_timeout_fails_one_twin_others_succeed(server, tmp_path):
    server.hook = lambda body: "slow" if '"key":"P2"' in body["messages"][1]["content"] else None
    server.slow_s = 60.0  # far longer than the run: the server is stopped before it answers
    reqs = [make_request(i) for i in range(1, 5)]
    with make_writer(server, tmp_path, timeout_s=1, max_retries=0) as w:
        results = w.write_many(reqs)
        # the run did not wait for the slow reply: it is still being computed
        assert server.in_flight == 1
    assert [r.request.source_key for r in results] == ["P1", "P2", "P3", "P4"]
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].reason == "timeout" and "timeout" in results[1].errors[0]
    assert results[1].attempts == 1 and results[1].reply is None
    assert len(server.calls) == 4 and server.behaviours.count("slow") == 1  # not re-sent
    assert w.last_usage.failed == 1 and w.last_usage.ok == 3


# -- cache ------------------------------------------------------------------------------------
def test_cache_hit_makes_no_call(server, tmp_path):
    reqs = [make_request(i) for i in range(1, 4)]
    with make_writer(server, tmp_path) as w:
        first = w.write_many(reqs)
    assert all(r.ok for r in first) and len(server.calls) == 3
    with make_writer(server, tmp_path) as w2:  # new writer, same cache directory
        second = w2.write_many(reqs)
    assert len(server.calls) == 3
    assert all(r.ok and r.cached and r.attempts == 0 for r in second)
    assert [r.reply for r in second] == [r.reply for r in first]
    assert w2.last_usage.cache_hits == 3 and w2.last_usage.calls == 0
    # another seed is another twin: a call
    with make_writer(server, tmp_path) as w3:
        [r] = w3.write_many([make_request(1, seed=8)])
    assert r.ok and not r.cached and len(server.calls) == 4


def test_cache_serves_twins_prepared_ahead_of_the_lanes(server, tmp_path):
    # more twins than lanes: the calling thread prepares (and looks up) the next twins while
    # the lanes wait on the endpoint; a rerun is answered from the cache in request order
    reqs = [make_request(i, twin_index=t) for i in range(1, 5) for t in (1, 2)]
    with make_writer(server, tmp_path, concurrency=2) as w:
        first = w.write_many(reqs)
    assert all(r.ok and not r.cached for r in first) and len(server.calls) == 8
    assert [(r.request.source_key, r.request.twin_index) for r in first] == [
        (q.source_key, q.twin_index) for q in reqs]
    with make_writer(server, tmp_path, concurrency=2) as w2:
        second = w2.write_many(reqs)
    assert len(server.calls) == 8 and all(r.cached and r.attempts == 0 for r in second)
    assert [r.reply for r in second] == [r.reply for r in first]


def test_heap_is_unfrozen_after_a_run_even_when_progress_raises(server, tmp_path):
    # the run keeps full collections off the pre-existing heap (gc.freeze) and must give it
    # back to the collector however it ends
    import gc

    class Stop(Exception):
        pass

    def progress(done, total):
        if done:
            raise Stop

    with make_writer(server, tmp_path, concurrency=2) as w:
        w.write_many([make_request(i) for i in range(1, 4)])
        assert gc.get_freeze_count() == 0
        with pytest.raises(Stop):
            w.write_many([make_request(i, seed=9) for i in range(1, 6)], progress=progress)
    assert gc.get_freeze_count() == 0


def test_invalid_replies_are_not_cached(server, tmp_path):
    server.default = "malformed"
    with make_writer(server, tmp_path, max_retries=0) as w:
        assert not w.write_many([make_request()])[0].ok
    server.default = "good"
    with make_writer(server, tmp_path) as w:
        [r] = w.write_many([make_request()])
    assert r.ok and not r.cached and len(server.calls) == 2


# -- structured output fallback --------------------------------------------------------------
def test_json_schema_rejected_falls_back_to_json_mode(server, tmp_path):
    server.default = "reject_json_schema"
    with make_writer(server, tmp_path, concurrency=1) as w:
        results = w.write_many([make_request(1), make_request(2)])
        assert w.structured_mode == "json_mode"
    assert all(r.ok for r in results)
    types = [c.get("response_format", {}).get("type") for c in server.calls]
    assert types == ["json_schema", "json_object", "json_object"]  # remembered
    assert results[0].structured == "json_mode"


def test_auto_mode_falls_back_to_plain_prompting(server, tmp_path):
    server.default = "reject_response_format"
    with make_writer(server, tmp_path) as w:
        [r] = w.write_many([make_request()])
    assert r.ok and w.structured_mode == "plain"
    assert "response_format" not in server.calls[-1]


def test_forced_json_schema_does_not_fall_back(server, tmp_path):
    server.default = "reject_json_schema"
    with make_writer(server, tmp_path, structured="json_schema") as w:
        [r] = w.write_many([make_request()])
    assert not r.ok and r.reason == "rejected" and "json_schema" in r.errors[0]
    assert len(server.calls) == 1


# -- privacy and secrets ----------------------------------------------------------------------
def test_remote_endpoint_refused_without_consent(tmp_path):
    for url in ("https://api.openai.com/v1", "http://10.0.0.5:8000/v1", None):
        s = LLMSettings(base_url=url, api_key=SECRET)
        with pytest.raises(RemoteEndpointError, match="allow_remote=True"):
            LLMTwinWriter(s, cache_dir=tmp_path)
    w = LLMTwinWriter(LLMSettings(base_url="https://example.org/v1", api_key=SECRET),
                      cache_dir=tmp_path, allow_remote=True)
    w.close()
    assert is_local_endpoint("http://localhost:11434/v1")
    assert is_local_endpoint("http://127.3.4.5:8000")
    assert is_local_endpoint("http://[::1]:8080/v1")
    assert not is_local_endpoint("http://localhost.evil.com/v1")
    assert not is_local_endpoint("https://api.openai.com/v1")


def test_api_key_never_exposed(server, tmp_path, caplog):
    s = LLMSettings(base_url=server.base_url, api_key=SECRET)
    assert SECRET not in repr(s) and SECRET not in str(s)
    pub = s.public_dict()
    assert "api_key" not in pub and SECRET not in str(pub) and pub["api_key_set"] is True
    caplog.set_level(logging.DEBUG)
    server.push("malformed")
    with LLMTwinWriter(s, cache_dir=tmp_path) as w:
        results = w.write_many([make_request()])
        assert SECRET not in repr(w)
        assert SECRET not in str(w.last_usage.to_dict())
    assert SECRET not in str(results[0].to_manifest()) and SECRET not in repr(results[0])
    assert SECRET not in caplog.text
    # the key did reach the endpoint
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"


def test_settings_from_env_and_secrets(tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[openai]\nOPENAI_API_KEY = "sk-from-file"\n'
                       'OPENAI_BASE_URL = "http://127.0.0.1:9/v1"\n')
    s = LLMSettings.from_env(load_secrets_file(secrets), environ={})
    assert s.api_key == "sk-from-file" and s.base_url == "http://127.0.0.1:9/v1"
    assert s.model == "gpt-4o-mini" and s.available and s.is_local
    s2 = LLMSettings.from_env({"OPENAI_API_KEY": "sk-x"},
                              environ={"TWINARM_LLM_MODEL": "gpt-4o", "TWINARM_LLM_RPM": "30"})
    assert s2.model == "gpt-4o" and s2.requests_per_minute == 30 and not s2.is_local
    assert s2.estimate_cost(1_000_000, 0) == pytest.approx(2.5)
    assert not LLMSettings.from_env({}, environ={}).available
    assert load_secrets_file(tmp_path / "missing.toml") == {}


def test_prompt_refuses_calendar_dates():
    req = make_request()
    req.baseline["covariates"]["RANDDT"] = "2014-01-02"
    with pytest.raises(PrivacyError, match="2014-01-02"):
        build_messages(req)
    req2 = make_request()
    req2.trial["title"] = "Started 02JAN2014"
    with pytest.raises(PrivacyError):
        build_messages(req2)
    # the check reads the serialised prompt: escapes, keys and quotes do not hide a date
    for covariates, where in (({"NOTE": "seen\n02JAN2014"}, "covariates.NOTE"),
                              ({"VISIT 2019-02-03": 1}, "covariates.<key>"),
                              ({"NOTE": 'said "12/31/2019"'}, "covariates.NOTE")):
        req3 = make_request()
        req3.baseline["covariates"].update(covariates)
        with pytest.raises(PrivacyError, match=where.replace(".", r"\.")):
            build_messages(req3)
    # numbers, versions and years alone are not dates
    req4 = make_request()
    req4.baseline["covariates"].update({"YEAR": "2014", "VERSION": "1.5.2", "DOSE": 2014.5})
    assert '"VERSION":"1.5.2"' in build_messages(req4)[1][1]


def test_validate_reply_messages():
    req = make_request()
    body = {"messages": [{"role": "user", "content": build_messages(req)[1][1]}], "seed": 1}
    good = good_reply(body)
    reply, errs = validate_reply(good, req)
    assert reply is not None and errs == []
    bad = dict(good, visits=good["visits"] + [dict(good["visits"][0])],
               events=[{"paramcd": "TTDISC", "aval": 500, "cnsr": 2}])
    _, errs = validate_reply(bad, req)
    assert any("ADAS11 at visit 4 appears 2 times" in e for e in errs)
    assert any("TTDISC" in e and "(0, 200]" in e for e in errs)
    assert any("cnsr must be 0" in e for e in errs)
    _, errs = validate_reply("```json\n" + '{"visits": [], "events": []}' + "\n```", req)
    assert "Missing value for ADAS11 at visit 4." in errs


# -- scheduling -------------------------------------------------------------------------------
def test_concurrency_is_bounded(server, tmp_path):
    server.latency_s = 0.25
    with make_writer(server, tmp_path, concurrency=3) as w:
        results = w.write_many([make_request(i) for i in range(1, 10)])
    assert all(r.ok for r in results)
    assert server.max_in_flight <= 3
    assert server.max_in_flight >= 2  # really concurrent


def test_cancel_keeps_completed_results(server, tmp_path):
    server.latency_s = 0.05
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done >= 2:
            cancel.set()

    with make_writer(server, tmp_path, concurrency=1) as w:
        results = w.write_many([make_request(i) for i in range(1, 6)], progress=progress,
                               cancel=cancel)
    # a lane starts its next twin as soon as one is done: the twin in flight when cancel
    # came finishes and is kept; nothing after it starts
    ok = sum(r.ok for r in results)
    assert ok in (2, 3) and all(r.ok for r in results[:ok])
    assert all(r.reason == "cancelled" and not r.ok for r in results[ok:])
    assert len(server.calls) == ok and seen[0] == (0, 5) and seen[-1] == (ok, 5)
    assert w.last_usage.cancelled == 5 - ok


def test_cancel_callable_before_start(server, tmp_path):
    with make_writer(server, tmp_path) as w:
        results = w.write_many([make_request(i) for i in range(1, 4)], cancel=lambda: True)
    assert all(r.reason == "cancelled" for r in results) and not server.calls


def test_one_bad_twin_does_not_lose_others(server, tmp_path):
    def hook(body):
        content = body["messages"][1]["content"]
        if '"key":"P3"' in content:
            return lambda b: ScriptedResponse(200, {"no_choices": True})
        if '"key":"P4"' in content:
            return lambda b: ScriptedResponse(200, "<html>proxy error</html>")
        return None

    server.hook = hook
    with make_writer(server, tmp_path, max_retries=0) as w:
        results = w.write_many([make_request(i) for i in range(1, 6)])
    assert [r.ok for r in results] == [True, True, False, False, True]
    for r in results[2:4]:
        assert r.reason == "error" and "unexpected response" in r.errors[0]


def test_requests_per_minute_spaces_calls(server, tmp_path):
    with make_writer(server, tmp_path, requests_per_minute=600) as w:  # 10/s, burst 10
        t0 = time.perf_counter()
        results = w.write_many([make_request(i) for i in range(1, 14)])
        elapsed = time.perf_counter() - t0
    assert all(r.ok for r in results)
    assert elapsed >= 0.25  # 13 calls: 10 burst + 3 at 0.1 s


def test_check_endpoint_lists_models(server, tmp_path):
    with make_writer(server, tmp_path) as w:
        info = w.check_endpoint()
    assert info["ok"] and info["models"] == ["scripted-model"] and info["message"] == "ok"


# -- real-server compatibility and pacing (issue 16) -------------------------------------------
def test_refusal_as_http_500_is_learned_once(server, tmp_path):
    """llama-cpp-python answers json_schema with HTTP 500 naming response_format: one refusal,
    then JSON mode for the whole run (no retry storm)."""
    server.default = "reject_json_schema_500"
    with make_writer(server, tmp_path, concurrency=4) as w:
        results = w.write_many([make_request(i) for i in range(1, 6)])
        assert w.structured_mode == "json_mode"
    assert all(r.ok for r in results)
    types = [(c.get("response_format") or {}).get("type") for c in server.calls]
    assert types.count("json_schema") == 1 and len(server.calls) == 6
    # JSON mode carries the request's own schema (fixed keys) and a max_tokens bound
    body = server.calls[-1]
    schema = body["response_format"]["schema"]
    assert [v["properties"]["paramcd"]["const"] for v in
            schema["properties"]["visits"]["prefixItems"]] == ["ADAS11"] * 3 + ["MMSE"] * 2
    assert 100 < body["max_tokens"] < 1000


def test_one_slot_server_gets_one_call_at_a_time(server, tmp_path):
    server.one_slot = True
    server.latency_s = 0.6
    with make_writer(server, tmp_path, concurrency=4) as w:
        results = w.write_many([make_request(i) for i in range(1, 5)])
        assert w._pacer.one_slot is True
    assert all(r.ok for r in results)
    assert server.max_in_flight == 1


def test_parallel_local_server_gets_parallel_calls_after_the_first(server, tmp_path):
    server.latency_s = 0.6
    with make_writer(server, tmp_path, concurrency=4) as w:
        results = w.write_many([make_request(i) for i in range(1, 6)])
        assert w._pacer.one_slot is False
    assert all(r.ok for r in results)
    assert server.max_in_flight == 4


def test_dead_endpoint_trips_the_breaker(tmp_path):
    from services.generation.llm.embedded import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    w = LLMTwinWriter(LLMSettings(base_url=url, model="m", concurrency=8),
                      cache_dir=tmp_path / "cache")
    seen = []
    with w:
        results = w.write_many([make_request(i) for i in range(1, 21)],
                               progress=lambda d, t: seen.append(d))
    assert not any(r.ok for r in results)
    assert sum(r.attempts for r in results) == 3  # three failures in a row, then stop
    assert {r.reason for r in results} == {"endpoint unreachable"}
    assert w.stopped_reason.startswith(f"cannot reach the LLM endpoint {url}")
    assert set(seen) == {0}  # failed twins are not progress


def test_timeout_waits_for_the_server_then_resends_with_a_longer_timeout(server, tmp_path):
    server.one_slot = True
    server.script.extend(["good", "slow"])
    server.slow_s = 2.5
    with make_writer(server, tmp_path, timeout_s=1, max_retries=1, concurrency=1) as w:
        results = w.write_many([make_request(i) for i in range(1, 3)])
    assert all(r.ok for r in results), [r.errors for r in results]
    assert results[1].attempts == 2 and "timeout" in results[1].notes[0]
    # the re-send came only after the abandoned call was done (the server is never asked twice)
    assert server.max_in_flight == 1

