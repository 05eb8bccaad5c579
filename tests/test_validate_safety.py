"""The safety backtest on the Validate page: the card a safety physician reads (service) and
the page on the CDISC pilot (AppTest), with and without longitudinal parameters."""

from __future__ import annotations

import re

import pytest

from services.evaluation import safety
from services.evaluation.safety_backtest import safety_card, safety_verdict
from services.evaluation.validation import validate_safety


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
    assert f"Mean AUROC {bt.summary['mean_auroc']:.2f}" in verdict[1]


def test_safety_backtest_twins_at_most_max_held_out_per_fold(pilot):
    bt = validate_safety(pilot, folds=2, twins_per_patient=3, seed=1, n_boot=50, max_held_out=5)
    assert bt.patients["USUBJID"].nunique() == 10 and bt.patients.groupby("FOLD")["USUBJID"].nunique().eq(5).all()
    assert bt.summary["held_out_twinned"] == 10 and bt.summary["held_out"] == 86
    assert (bt.terms["patients"] == 10).all() and bt.generator == "local"

