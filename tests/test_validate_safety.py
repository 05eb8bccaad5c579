"""The safety backtest on the Validate page: the card a safety physician reads (service) and
the page on the CDISC pilot (AppTest), with and without longitudinal parameters."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from services.evaluation import safety
from services.evaluation.safety_backtest import safety_card, safety_verdict
from services.evaluation.validation import validate_safety

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def _value(cell: str) -> float:
    """The point estimate of "0.52 [0.40, 0.65]" (NaN for "n/a")."""
    return float("nan") if cell == "n/a" else float(cell.split(" ")[0])


@pytest.fixture(scope="module")
def bt(pilot):
    return validate_safety(pilot, folds=2, twins_per_patient=5, seed=0, n_boot=100)


def test_safety_card_reads_like_a_safety_listing(pilot, bt):
    card = safety_card(bt)
    assert list(card.columns) == ["preferred term", "cases / patients", "real incidence", "twins' incidence",
                                  "knowledge-base rate", "AUROC [95 % CI]", "Brier skill [95 % CI]"]
    terms = safety.top_terms(pilot, 10, arm="Placebo")
    assert list(card["preferred term"]) == ["Any adverse event"] + terms
    row = card.set_index("preferred term").loc["DIARRHOEA"]
    assert row["cases / patients"] == "9 / 86" and row["real incidence"] == "10.5 %"
    t = bt.terms.set_index("PT")
    for term in terms:
        r = card.set_index("preferred term").loc[term]
        assert _value(r["AUROC [95 % CI]"]) == pytest.approx(t.loc[term, "auroc"], abs=0.005)
        assert re.fullmatch(r"-?\d\.\d\d \[-?\d\.\d\d, -?\d\.\d\d\]", r["AUROC [95 % CI]"])
        assert r["twins' incidence"] == f"{100 * t.loc[term, 'twin_incidence']:.1f} %"
    verdict = safety_verdict(bt)
    word = "**no worse**" if bt.summary["mae_twins"] <= bt.summary["mae_kb"] else "**worse**"
    assert word in verdict[0] and f"{100 * bt.summary['mae_kb']:.1f}" in verdict[0]
    assert f"Mean AUROC {bt.summary['mean_auroc']:.2f}" in verdict[-2]
    # the Brier skill is said too, with its sign in words (an outside review: negative for every pilot
    # term while the verdict led with "no worse")
    body = bt.terms[bt.terms["PT"] != safety.ANY]
    assert f"Mean Brier skill {body['brier_skill'].mean():+.2f}" in verdict[-1]
    worse, better = int((body["brier_skill_hi"] < 0).sum()), int((body["brier_skill_lo"] > 0).sum())
    assert ("worse than the arm's rate alone" in verdict[-1]) == (worse > 0 and better == 0)
    assert f"skill below 0 for {int((body['brier_skill'] < 0).sum())} of {len(body)} terms" in verdict[-1]
    assert f"wholly below 0 for {worse}, wholly above for {better}" in verdict[-1]
    # the pilot's cross-validated AE donor share is 0: the tie is said to hold by construction
    assert bt.summary["rate_by_construction"] and "by construction" in verdict[1]


def test_the_report_carries_the_safety_backtest_the_page_showed(pilot, bt):
    # a browser review ran it on Validate (AUROC 0.51) and the report only pointed to the page
    from services.reporting.safety_section import safety_backtest_section

    page = safety_backtest_section(bt)
    assert "Safety backtest (as run on the Validate page)" in page and "5 twins per held-out patient" in page
    assert f"mean AUROC {bt.summary['mean_auroc']:.2f}" in page and "<b>by construction</b>" in page
    for term in safety_card(bt)["preferred term"]:
        assert f"<td>{term}</td>" in page
    assert "**" not in page


def test_build_report_includes_the_safety_backtest_when_given(pilot, bt):
    from services.generation import get_generator
    from services.reporting.report import build_report

    treated = list(pilot.subjects.loc[pilot.subjects.ARM == "Xanomeline High Dose", "USUBJID"])[:12]
    run = get_generator("local").fit(pilot).generate(pilot.subset(treated), "Placebo", twins_per_patient=2, seed=0)
    page = build_report(pilot, run, effects={"note": "not estimated in this test"}, safety_backtest=bt)
    assert page.count("Safety backtest (as run on the Validate page)") == 1
    assert "Safety backtest (as run" not in build_report(pilot, run, effects={"note": "not estimated"})


def test_safety_backtest_twins_at_most_max_held_out_per_fold(pilot):
    bt = validate_safety(pilot, folds=2, twins_per_patient=3, seed=1, n_boot=50, max_held_out=5)
    assert bt.patients["USUBJID"].nunique() == 10 and bt.patients.groupby("FOLD")["USUBJID"].nunique().eq(5).all()
    assert bt.summary["held_out_twinned"] == 10 and bt.summary["held_out"] == 86
    assert (bt.terms["patients"] == 10).all() and bt.generator == "local"


def _page(trial) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.session_state["trial"] = trial
    at.session_state["trial_source"] = "cdiscpilot01"
    at.switch_page("pages/validate.py").run()
    assert not at.exception, at.exception
    return at


def _run_safety(at: AppTest) -> None:
    at.slider(key="safety_k").set_value(3)
    at.select_slider(key="safety_boot").set_value(100)
    next(b for b in at.button if b.label == "Run safety backtest").click().run()
    assert not at.exception, at.exception


def test_validate_page_safety_backtest_on_the_pilot(pilot):
    at = _page(pilot)
    assert any(h.value == "Adverse events: do twins predict who has which AE?" for h in at.header)
    assert any("Run safety backtest" in i.value for i in at.info)            # nothing runs unasked
    _run_safety(at)
    table = next(d.value for d in at.dataframe if "AUROC [95 % CI]" in d.value.columns)
    terms = safety.top_terms(pilot, 10, arm="Placebo")
    assert list(table["preferred term"]) == ["Any adverse event"] + terms
    aurocs = np.array([_value(v) for v in table["AUROC [95 % CI]"]])
    assert np.isfinite(aurocs).all() and ((aurocs >= 0) & (aurocs <= 1)).all()
    assert any("Generator **local**, 3 twins per held-out patient" in m.value for m in at.markdown)
    assert {"Mean abs. incidence error, twins", "Mean abs. incidence error, KB rates", "Mean AUROC"} <= \
        {m.label for m in at.metric}
    verdicts = [e.value for e in list(at.success) + list(at.warning)]
    assert any("most frequent preferred terms" in v and "worse**" in v for v in verdicts)
    # the result is kept: another rerun (e.g. the longitudinal form) does not lose it
    at.run()
    assert any("AUROC [95 % CI]" in d.value.columns for d in at.dataframe)


def test_validate_page_safety_without_longitudinal_parameters(pilot):
    no_visits = dataclasses.replace(pilot, bds=pilot.baseline_only().bds,
                                    content_hash="baseline-only " + pilot.content_hash)
    assert not no_visits.longitudinal_parameters and safety.has_ae(no_visits)
    at = _page(no_visits)
    assert any("nothing to backtest" in i.value for i in at.info)
    assert not [b for b in at.button if b.label == "Run backtest"]
    _run_safety(at)
    table = next(d.value for d in at.dataframe if "AUROC [95 % CI]" in d.value.columns)
    assert table["preferred term"].iloc[0] == "Any adverse event" and len(table) == 11
