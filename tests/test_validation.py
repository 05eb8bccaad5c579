"""Validation card, PROCOVA from a backtest and the hold-out privacy audit, on the PBC demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from services.evaluation import metrics as M
from services.evaluation.backtest import backtest
from services.evaluation.validation import (
    audit_sources,
    bootstrap_card,
    endpoint_pairs,
    privacy_audit,
    procova,
    validate_run,
)

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(scope="module")
def result(pbc):
    return backtest(pbc, folds=2, twins_per_patient=10, seed=1)


def test_bootstrap_card_brackets_the_point_estimates(result):
    card = bootstrap_card(result, n_boot=200)
    assert set(card.PARAMCD) == set(result.pairs.PARAMCD)
    assert (card.rmse_ratio_lo <= card.rmse_ratio).all() and (card.rmse_ratio <= card.rmse_ratio_hi).all()
    assert (card.coverage_lo <= card.coverage).all() and (card.coverage <= card.coverage_hi).all()
    # pooled ratio equals the one computed by hand from the pairs
    bili = result.pairs.dropna(subset=["PREDICTED", "OBSERVED", "REFERENCE"]).query("PARAMCD == 'BILI'")
    by_hand = np.sqrt(((bili.PREDICTED - bili.OBSERVED) ** 2).mean() / ((bili.REFERENCE - bili.OBSERVED) ** 2).mean())
    assert card.set_index("PARAMCD").loc["BILI", "rmse_ratio"] == pytest.approx(by_hand)


def test_procova_matches_the_closed_form_with_the_backtest_rho(pbc, result):
    plan = procova(pbc, result, effect=1.0, sd=4.0, conservative=False)
    _, _, pairs = endpoint_pairs(pbc, result)
    rho = np.corrcoef(pairs.PREDICTED, pairs.OBSERVED)[0, 1]
    assert plan["rho"]["rho"] == pytest.approx(rho)
    # noncentral-t sizes (the normal approximation overstates power at small n)
    expected = M.sample_size(1.0, 4.0, rho=rho, method="t", n_covariates=1).n_total
    unadjusted = M.sample_size(1.0, 4.0, method="t").n_total
    assert plan["method"] == "noncentral t"
    assert plan["n_adjusted"] == expected < plan["n_unadjusted"] == unadjusted
    assert unadjusted >= M.sample_size(1.0, 4.0).n_total
    # the saving that counts: against the baseline ANCOVA, from the score's partial correlation
    assert plan["n_adjusted"] <= plan["n_baseline_ancova"] <= plan["n_unadjusted"]
    assert plan["saving_vs_baseline_total"] == plan["n_baseline_ancova"] - plan["n_adjusted"]
    conservative = procova(pbc, result, effect=1.0, sd=4.0, conservative=True)
    assert plan["n_adjusted"] < conservative["n_adjusted"] < plan["n_unadjusted"]
    # with a baseline, the correlation planned with is the baseline's and the twins' together
    assert plan["rho_used_label"] == "rho, baseline + twins" and not plan["note"]
    # the smaller (treated) arm twice as variable: the pooled ANCOVA would be liberal, and the plan says so
    uneven = procova(pbc, result, effect=1.0, sd=4.0, ratio=0.5, sd_treatment=8.0)
    assert "robust (sandwich) standard errors" in uneven["note"]
    assert uneven["plan"]["adjusted.alpha_actual"] > 0.06


def test_privacy_audit_on_a_true_hold_out(pbc):
    treated = list(pbc.subjects.loc[pbc.subjects.ARM != "Placebo", "USUBJID"])
    audit = privacy_audit(pbc, "Placebo", treated, seed=2)
    assert audit["withheld"] == 77
    assert audit["exact_copies"]["n_copies"] == 0
    assert 0 <= audit["membership"]["sensitivity"] <= 1
    assert audit["dcr"]["ratio_median"] > 0.7  # local twins are not copies of training patients


def test_validate_page_runs_on_the_default_demo():
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page("pages/validate.py").run()
    assert not at.exception, at.exception
    # nothing runs before the user asks for it
    assert not [m for m in at.metric if m.label == "Patients, PROCOVA"]
    assert any("Run backtest" in i.value for i in at.info)
    assert any("Generator: **local** with its default settings" in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Run backtest").click().run()
    assert not at.exception, at.exception
    labels = [m.label for m in at.metric]
    assert {"Patients, PROCOVA", "Patients, baseline ANCOVA", "Saving vs baseline ANCOVA",
            "Accuracy (median RMSE ratio)"} <= set(labels)
    assert any("Generator **local**, 20 twins per held-out patient" in m.value for m in at.markdown)
    metrics = {m.label: m.value for m in at.metric}
    # the demo's twins add nothing beyond the baseline under the conservative rule (partial
    # correlation's bound 0), so their covariate costs its degree of freedom: one patient per arm
    assert int(metrics["Patients, PROCOVA"]) <= int(metrics["Patients, baseline ANCOVA"]) + 2
    assert int(metrics["Patients, baseline ANCOVA"]) <= int(metrics["Patients, unadjusted"])
    # the time-to-event table: every column, under its label, parameters spelled out
    frames = [d.value for d in at.dataframe]
    card = next(f for f in frames if "RMSE ratio [95 % CI]" in f.columns)
    assert card["information beyond the own baseline [95 % CI]"].str.match(r"^[01]\.\d\d \[").all()
    assert any("Information beyond the own baseline" in c.value for c in at.caption)
    tte = next(f for f in frames if "C-index, Cox model" in f.columns)
    assert list(tte.columns) == ["parameter", "patients", "events", "KM distance, twins vs held-out",
                                 "KM distance, knowledge-base arm vs held-out",
                                 "KM distance ratio (twins / knowledge base; ≤ 1 met)", "C-index, twins",
                                 "C-index, Cox model", "KM ratio ≤ 1 met", "C-index ≥ Cox − 0.01 met"]
    assert all(v.endswith("]") and "[" in v for v in tte["parameter"])            # "label [PARAMCD]"
    assert not any("_" in c for f in frames for c in f.columns)                   # no raw names anywhere
    at.button(key="run_privacy_audit").click().run()
    assert not at.exception
    audit = next(d.value for d in at.dataframe if "threshold" in d.value.columns)
    rows = audit.set_index("metric")
    assert set(rows.index) == {"DCR ratio (twins / real)", "NN adversarial accuracy",
                               "exact copies of real patients", "membership-inference advantage"}
    assert rows.loc["exact copies of real patients", "threshold"] == "≤ 0"
    assert rows.loc["exact copies of real patients", "verdict"] == "✅ met"      # 0 copies (as above)
    assert rows.loc["membership-inference advantage", "threshold"] == "≤ 0.1"
    assert rows.loc["membership-inference advantage", "95 % interval"] != "–"
    assert rows.loc["NN adversarial accuracy", "threshold"] == "0.35 to 0.8"
    assert all(v.split(" ", 1)[1] in {"met", "not met", "inconclusive"} for v in rows["verdict"])
    assert any("local twins, K = 5" in c.value for c in at.caption)


def test_the_privacy_audit_twins_the_runs_own_sources(pbc, pbc_twins):
    # a browser review: with no cohort chosen, a reopened run's audit twinned all subjects, not its own
    ids, whom = audit_sources(pbc, pbc_twins, list(pbc.subjects["USUBJID"]))
    assert set(ids) == set(pbc_twins.adsl["SRCSUBJID"]) and whom == "the run's 40 source patients"
    ids, whom = audit_sources(pbc, None, list(pbc.subjects["USUBJID"]))
    assert len(ids) == 312 and whom == "all 312 subjects"
    assert audit_sources(pbc, None, ids[:10])[1] == "the 10 patients of the chosen cohort"


def test_validate_page_backtests_a_trial_with_events_only(pbc_events):
    """ADSL + ADTTE only (an oncology-style upload): the backtest scores the event twins (KM
    distance, C-index) and the privacy audit their event times; no visit figures, no PROCOVA."""
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["trial"] = pbc_events
    at.session_state["trial_source"] = "upload"
    at.run()
    at.switch_page("pages/validate.py").run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label == "Run backtest").click().run()
    assert not at.exception, at.exception
    assert [m.label for m in at.metric] == ["C-index twins vs Cox"]
    tte = next(d.value for d in at.dataframe if "C-index, Cox model" in d.value.columns)
    assert len(tte) == 2 and tte["events"].min() > 10
    assert not [h for h in at.header if "PROCOVA" in h.value]
    assert any("Time to event DEATH" in s.value for s in list(at.success) + list(at.warning))
    at.button(key="run_privacy_audit").click().run()
    assert not at.exception, at.exception
    audit = next(d.value for d in at.dataframe if "threshold" in d.value.columns).set_index("metric")
    assert 0 < float(audit.loc["DCR ratio (twins / real)", "value"]) < 10           # computed on event columns
    assert "event day and status" in audit.loc["exact copies of real patients", "detail"]


def test_a_runs_backtest_compares_every_visit_its_held_out_patients_were_seen_at(pbc, pbc_twins):
    # the run's settings cut twins at their simulated follow-up (truncate_at_followup=True);
    # its backtest must not, or a late visit's mean rests on the few twins still followed
    assert pbc_twins.manifest["settings"]["truncate_at_followup"] is True
    of_run = validate_run(pbc, pbc_twins, folds=2, seed=3)
    plain = validate_run(pbc, None, folds=2, twins_per_patient=2, seed=3)
    assert of_run.settings["truncate_at_followup"] is False
    assert of_run.parameters["rmse_ratio"].tolist() == pytest.approx(plain.parameters["rmse_ratio"].tolist())
    assert of_run.parameters["n"].tolist() == plain.parameters["n"].tolist()


def test_procova_says_why_when_the_baseline_does_not_vary_at_the_endpoint():
    # MASS::bacteria (a test trial of the backtest corpus): H. influenzae is present at nearly every
    # child's baseline, so among the held-out patients the baseline can be constant; the plan and
    # the report stopped with "rho_baseline must be in [-1, 1]"
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import corpus

    trial = corpus.load("bacteria")
    res = backtest(trial, folds=2, twins_per_patient=5, seed=0)
    plan = procova(trial, res)
    assert "error" not in plan, plan
    assert "baseline does not vary" in plan["note"] and "n_baseline_ancova" not in plan
    # its 9 held-out patients' twins anti-predict the endpoint (rho -0.58): |rho| planned a saving
    assert plan["rho"]["rho"] < 0 and "correlates negatively" in plan["note"]
    assert plan["n_adjusted"] == plan["n_unadjusted"]


def test_the_ancova_headline_reads_the_upper_end_of_the_interval():
    # a review: pbc's CHOL 0.74 [0.63, 0.94], better than the baseline regression, was listed as "not
    # better than a baseline ANCOVA" because the test read the interval's lower end
    import pandas as pd

    from services.evaluation.validation import ancova_headline

    def card(rows):
        return pd.DataFrame(rows, columns=["PARAMCD", "rmse_ratio", "rmse_ratio_lo", "rmse_ratio_hi", "accuracy"])

    better = ("CHOL", 0.74, 0.63, 0.94, "better than the baseline regression")
    unsure = ("BILI", 0.97, 0.90, 1.05, "better than the baseline regression (not conclusively)")
    worse = ("ALT", 1.05, 1.01, 1.09, "worse than the baseline regression")
    few = ("PT", 0.5, 0.4, 0.6, "too few patients (4)")
    assert ancova_headline(card([better, few])) is None
    assert ancova_headline(card([better, unsure, worse])) == (
        "Not better than a baseline ANCOVA for: ALT; not conclusively better for: BILI (the RMSE ratio is below 1 "
        "but its 95 % interval reaches 1).")
    assert ancova_headline(card([better, unsure])).startswith("Not conclusively better than a baseline ANCOVA for: BILI")
    assert ancova_headline(card([unsure, worse, few])).startswith("On this trial the twins are not shown better")
    assert ancova_headline(card([few])) is None and ancova_headline(card([])) is None
