"""Adverse-event twins of the `llm` generator on the CDISC pilot: the model lists each twin's AEs
from the trial's terms (validated: no invented term, no onset outside the follow-up), or in
hybrid mode each twin copies its local twin's donor's history. Real client, real HTTP server
(tests/llm_server.py), real pilot data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from llm_server import ScriptedOpenAIServer, find_payload

from services.data.adverse import emergent
from services.generation import GeneratorError
from services.generation.llm import LLMSettings
from services.generation.llm.adverse import AEFacts
from services.generation.llm.generator import LLMGenerator
from services.generation.llm.schema import request_json_schema, validate_reply
from services.generation.local.adverse_events import twin_followup_end


@pytest.fixture
def server():
    with ScriptedOpenAIServer() as srv:
        yield srv


def _settings(srv) -> LLMSettings:
    return LLMSettings(base_url=srv.base_url, api_key="sk-test", model="scripted-model",
                       timeout_s=15, max_retries=1, concurrency=4, temperature=0.0)


def _treated(pilot, n):
    arm = next(a for a in pilot.arms if a != pilot.control_arm)
    return list(pilot.subjects.loc[pilot.subjects["ARM"] == arm, "USUBJID"])[:n]


def test_model_lists_adverse_events_from_the_trials_terms_within_follow_up(pilot, server, tmp_path):
    gen = LLMGenerator(hybrid=False, settings=_settings(server), use_cache=False,
                       cache_dir=str(tmp_path)).fit(pilot)
    src = pilot.subset(_treated(pilot, 6))
    run = gen.generate(src, pilot.control_arm, twins_per_patient=2, seed=3)
    assert run.manifest["settings"]["adverse_events"] is None
    assert run.manifest["ae"]["source"] == "model"
    ae = run.ae
    assert ae is not None and len(ae) > 0, run.manifest["ae"]
    teae = emergent(pilot)
    assert set(ae["AEDECOD"]) <= set(teae["AEDECOD"])
    assert set(ae["USUBJID"]) <= set(run.adsl["USUBJID"])
    end = twin_followup_end(run.adsl, run.bds, run.tte)
    assert (ae["ASTDY"] >= 1).all() and (ae["ASTDY"].to_numpy() <= end.reindex(ae["USUBJID"]).to_numpy()).all()
    soc = teae.drop_duplicates("AEDECOD").set_index("AEDECOD")["AEBODSYS"]
    assert (ae["AEBODSYS"] == ae["AEDECOD"].map(soc)).mean() > 0.9
    assert ae["AESEV"].notna().all() and ae["AESER"].notna().all()
    # what the model was asked: the control arm's terms, its longest follow-up, the neighbours'
    payload = find_payload(server.calls[0])
    spec = payload["required"]["adverse_events"]
    facts = AEFacts(pilot)
    assert spec["terms"][:10] == facts.arm_terms(pilot.control_arm)[:10]
    assert spec["max_day"] == facts.max_day(pilot.control_arm)
    assert all("adverse_events" in n for n in payload["neighbours"])
    assert "adverse_events" in next(m["content"] for m in server.calls[0]["messages"]
                                    if m["role"] == "system")


def test_an_invented_term_or_a_day_outside_follow_up_is_sent_back(pilot):
    facts = AEFacts(pilot)
    spec = facts.spec(pilot.control_arm, [])
    req = {"visits": [], "events": [{"paramcd": "TTDE", "max_days": 400}], "adverse_events": spec}
    term = spec["terms"][0]
    ok, errors = validate_reply({"events": [{"paramcd": "TTDE", "aval": 200, "cnsr": 1}],
                                 "adverse_events": [{"term": term.lower(), "day": 12.4}]}, req)
    assert errors == [] and ok.adverse_events[0].term == term and ok.adverse_events[0].day == 12
    half = spec["max_day"] // 2
    bad = {"events": [{"paramcd": "TTDE", "aval": half, "cnsr": 1}],
           "adverse_events": [{"term": "SPONTANEOUS LEVITATION", "day": 5},
                              {"term": term, "day": spec["max_day"] + 30},
                              {"term": term, "day": half + 10}]}
    reply, errors = validate_reply(bad, req)
    assert reply is None and len(errors) == 3
    assert "SPONTANEOUS LEVITATION" in errors[0] and "not a term of this trial" in errors[0]
    assert f"[1, {spec['max_day']}]" in errors[1]
    assert f"after the twin's end of follow-up (day {half}" in errors[2]
    many = {"events": [{"paramcd": "TTDE", "aval": 200, "cnsr": 1}],
            "adverse_events": [{"term": term, "day": 3}] * (spec["max_count"] + 1)}
    assert "give at most" in validate_reply(many, req)[1][0]
    # a forgotten field is an error (it would count as "no AE"); a term twice keeps its first onset
    missing = validate_reply({"events": [{"paramcd": "TTDE", "aval": 200, "cnsr": 1}]}, req)
    assert missing[0] is None and "Missing adverse_events" in missing[1][0]
    twice, errors = validate_reply({"events": [{"paramcd": "TTDE", "aval": half, "cnsr": 1}],
                                    "adverse_events": [{"term": term, "day": 30}, {"term": term, "day": 4}]}, req)
    assert errors == [] and [(a.term, a.day) for a in twice.adverse_events] == [(term, 4)]
    # a server that turns the schema into a grammar can only write the trial's terms
    schema = request_json_schema(req)["properties"]["adverse_events"]
    assert schema["items"]["properties"]["term"]["enum"] == spec["terms"]
    assert schema["maxItems"] == spec["max_count"]
    # a request without AEs: whatever the reply holds there is dropped, not an error (Gemma wrote
    # ["-", "-"] under a grammar whose empty array had no items), and the grammar has no such field
    no_ae = {"visits": [], "events": req["events"]}
    for junk in ([{"term": "X", "day": 1}], ["-", "-"], "none"):
        reply, errors = validate_reply({"events": [{"paramcd": "TTDE", "aval": 20, "cnsr": 1}],
                                        "adverse_events": junk}, no_ae)
        assert errors == [] and reply.adverse_events == []
    assert "adverse_events" not in request_json_schema(no_ae)["properties"]


def test_hybrid_twins_copy_the_history_of_their_local_twins_donor(pilot, tmp_path):
    with ScriptedOpenAIServer() as srv:
        gen = LLMGenerator(hybrid=True, calibration=0, settings=_settings(srv), use_cache=False,
                           cache_dir=str(tmp_path)).fit(pilot)
        run = gen.generate(pilot.subset(_treated(pilot, 5)), pilot.control_arm,
                           twins_per_patient=2, seed=1)
        asked = [json.loads(m["content"]) for body in srv.calls for m in body["messages"]
                 if m["role"] == "user" and m["content"].startswith("{")]
    assert asked and all("adverse_events" not in p["required"] for p in asked)
    assert run.manifest["ae"]["source"] == "local" and run.ae is not None and len(run.ae)
    local = gen.local_generator.generate(pilot.subset(_treated(pilot, 5)), pilot.control_arm,
                                         twins_per_patient=2, seed=1)
    donors = run.manifest["ae"]["donors"]
    assert donors == local.manifest["ae"]["donors"]            # the local twins' AE donors
    assert run.manifest["ae"]["pool"] == local.manifest["ae"]["pool"]
    teae = emergent(pilot)
    end = twin_followup_end(run.adsl, run.bds, run.tte)
    for twin, records in run.ae.groupby("USUBJID"):
        history = teae[teae["USUBJID"] == donors[twin]]
        assert set(records["AEDECOD"]) <= set(history["AEDECOD"]), twin
        assert (records["ASTDY"] <= end[twin]).all()
    with pytest.raises(GeneratorError, match="hybrid=True"):
        LLMGenerator(hybrid=False, adverse_events="local", settings=LLMSettings())


def test_a_source_of_the_knowledge_base_is_not_offered_its_own_terms(pilot):
    """A placebo patient twinned under placebo: a term only it had in the arm is not in its
    list, and its own records do not set the severity its twin gets."""
    facts = AEFacts(pilot, max_terms=10_000)
    teae = emergent(pilot)
    placebo = teae[teae["USUBJID"].isin(pilot.subjects.loc[pilot.subjects["ARM"] == "Placebo", "USUBJID"])]
    per_term = placebo.groupby("AEDECOD")["USUBJID"].nunique()
    single = placebo[placebo["AEDECOD"].isin(per_term.index[per_term == 1])]
    who, term = str(single["USUBJID"].iloc[0]), str(single["AEDECOD"].iloc[0])
    assert term in facts.arm_terms("Placebo") and term not in facts.arm_terms("Placebo", who)
    assert term not in facts.spec("Placebo", [], without=who)["terms"]
    others = teae[(teae["AEDECOD"] == term) & (teae["USUBJID"] != who)]
    assert facts.attribute(term, "AESEV", "Placebo", who) == (
        others["AESEV"].value_counts().index[0] if len(others) else None)
