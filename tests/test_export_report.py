"""Export (CSV, XPORT v5 with labels, Parquet, zip) and the self-contained report, from the
CLI and the Export page."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pyreadstat
import pytest
from streamlit.testing.v1 import AppTest

from services.cli import main
from services.data.loading import load_trial_files
from services.evaluation.backtest_verdicts import visit_label
from services.generation.run import write_run
from services.reporting.export import (
    MAX_DECIMALS,
    export_files,
    export_zip,
    source_precision,
    study_id,
    xpt_names,
)

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_xpt_names_are_unique_and_short():
    names = xpt_names(["SRCSUBJID", "SRCSUBJIDX", "USUBJID", "AVERYLONGNAME"])
    assert all(len(n) <= 8 for n in names.values()) and len(set(names.values())) == 4
    assert names["SRCSUBJID"] == "SRCSUBJ" and names["USUBJID"] == "USUBJID"


@pytest.mark.parametrize("fmt", ["csv", "xpt", "parquet"])
def test_every_format_loads_back_as_the_same_twin_arm(pbc_twins, fmt, tmp_path):
    files = export_files(pbc_twins, fmt)
    names = {f.name for f in files}
    assert {f"adsl.{fmt}", f"adlb.{fmt}", f"adtte.{fmt}", "manifest.json", "trial.toml"} <= names
    trial = load_trial_files([f for f in files if f.name != "manifest.json"], name="exported")
    assert len(trial.subjects) == pbc_twins.n_twins == 80
    assert trial.visit_values["AVAL"].sum() == pytest.approx(pbc_twins.as_trial().visit_values["AVAL"].sum(), rel=1e-9)
    manifest = json.loads(next(f for f in files if f.name == "manifest.json").data)
    assert manifest["run_id"] == pbc_twins.run_id and manifest["export"]["format"] == fmt


def test_xpt_carries_variable_labels_and_records_renames(pbc_twins, tmp_path):
    files = {f.name: f for f in export_files(pbc_twins, "xpt", labels={"AGE": "Age at randomization"})}
    path = tmp_path / "adsl.xpt"
    path.write_bytes(files["adsl.xpt"].data)
    _frame, meta = pyreadstat.read_xport(str(path))
    labels = meta.column_names_to_labels
    assert labels["SRCSUBJ"] == "Source Subject Identifier (SRCSUBJID)"
    assert labels["USUBJID"].startswith("Unique Subject Identifier") and labels["AGE"] == "Age at randomization"
    manifest = json.loads(files["manifest.json"].data)
    assert manifest["export"]["xpt_renamed"]["adsl"] == {"SRCSUBJID": "SRCSUBJ"}


def test_source_precision_is_the_most_decimals_per_parameter_capped(pbc):
    from types import SimpleNamespace

    import pandas as pd

    kb = SimpleNamespace(bds={"adlb": pd.DataFrame({"PARAMCD": ["A", "A", "B", "B", "C", "D"],
                                                     "AVAL": [2.6, 2.94, 1718.0, 12.0, 0.123456789, None]})},
                         tte=pd.DataFrame({"PARAMCD": ["OS", "OS"], "AVAL": [400.0, 1200.5]}),
                         baseline_long=pd.DataFrame({"PARAMCD": ["B"], "AVAL": [12.5]}),      # a mean of readings
                         visit_values=pd.DataFrame(columns=["PARAMCD", "AVAL"]))
    assert source_precision(kb) == {"A": 2, "B": 1, "C": MAX_DECIMALS, "D": 0, "OS": 1}
    assert source_precision(pbc)["ALB"] == 2 and source_precision(pbc)["PLAT"] == 0


def test_exported_twins_keep_the_baseline_the_app_analysed(pilot):
    # the pilot's vital signs are integer readings, a baseline the mean of three (78.67): the export
    # rounded it to 79, another value than the app analysed and the twins continue (a browser review)
    from services.generation import get_generator

    treated = list(pilot.subjects.loc[pilot.subjects.ARM == "Xanomeline High Dose", "USUBJID"])[:15]
    run = get_generator("local").fit(pilot).generate(pilot.subset(treated), "Placebo", twins_per_patient=2, seed=0)
    files = export_files(run, "csv", knowledge_base=pilot)
    exported = load_trial_files([f for f in files if f.name != "manifest.json"], name="exported")
    base = exported.baseline_long.merge(run.adsl[["USUBJID", "SRCSUBJID"]], on="USUBJID")
    real = pilot.baseline_long.rename(columns={"USUBJID": "SRCSUBJID", "AVAL": "REAL"})
    both = base.merge(real[["SRCSUBJID", "PARAMCD", "REAL"]], on=["SRCSUBJID", "PARAMCD"])
    diastolic = both[both.PARAMCD == "DIABP"]
    assert len(diastolic) == 30 and (diastolic.REAL.round() != diastolic.REAL).any()
    assert (both.AVAL - both.REAL).abs().max() < 1e-4


@pytest.mark.parametrize("fmt", ["csv", "xpt"])
def test_export_rounds_to_the_source_and_stamps_studyid(pbc, pbc_twins, fmt):
    files = export_files(pbc_twins, fmt, knowledge_base=pbc)
    trial = load_trial_files([f for f in files if f.name != "manifest.json"], name="exported")
    assert study_id(pbc) == "PBC" == pbc.subjects["STUDYID"].iloc[0]
    frames = {"adsl": trial.subjects, "adtte": trial.tte, **trial.bds}
    for name, frame in frames.items():                      # STUDYID in every dataset, the source's
        assert "STUDYID" in frame.columns and set(frame["STUDYID"]) == {"PBC"}, name
    digits = source_precision(pbc)
    values = trial.bds["adlb"]
    for paramcd, d in digits.items():
        aval = values.loc[values["PARAMCD"] == paramcd, "AVAL"].dropna()
        if len(aval):
            assert (aval.round(d) - aval).abs().max() < 1e-9, paramcd
    twins = pbc_twins.bds["adlb"]
    assert (twins["AVAL"].round(digits["ALB"]) != twins["AVAL"]).any()     # the run had more decimals
    assert "STUDYID" not in pbc_twins.adsl.columns                          # the run itself is unchanged
    manifest = json.loads(next(f for f in files if f.name == "manifest.json").data)
    assert manifest["export"]["studyid"] == "PBC" and manifest["export"]["decimals"]["ALB"] == 2


def test_without_the_knowledge_base_studyid_is_its_name(pbc_twins):
    files = {f.name: f for f in export_files(pbc_twins, "csv")}
    assert files["adsl.csv"].data.decode().splitlines()[1].startswith("pbc,")


@pytest.mark.slow
def test_zip_and_cli_export_and_report(pbc_twins, tmp_path, capsys):
    with zipfile.ZipFile(io.BytesIO(export_zip(pbc_twins, "csv"))) as zf:
        assert f"twinarm-{pbc_twins.run_id}/adsl.csv" in zf.namelist()
    folder = write_run(pbc_twins, tmp_path / "run")
    assert main(["export", "--run", str(folder), "--format", "xpt", "--out", str(tmp_path / "x.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "x.zip") as zf:
        assert any(n.endswith("adlb.xpt") for n in zf.namelist())
    assert main(["report", "--run", str(folder), "--out", str(tmp_path / "r.html")]) == 0
    report = (tmp_path / "r.html").read_text()
    for section in ("Trial and cohort", "Method", "Validation card", "Trajectories", "Survival", "Embedding",
                    "Fidelity, privacy and utility", "PROCOVA sample size", "Limitations"):
        assert f"<h2>{section}" in report, section
    assert report.count("<script") >= 3 and not re.search(r'<script[^>]+src=|<link[^>]+href=', report)
    assert "Mayo Clinic PBC trial" in report and pbc_twins.run_id in report
    # the effect section names its measures and each measure's method, as Compare's Effect tab does
    assert "<h2>Treatment effect against the twins" in report
    assert "<li class=\"muted\">ratio of geometric means: exp of the mean of (log real" in report
    assert "<li class=\"muted\">hazard ratio: Cox (Breslow)" in report
    # one hazard ratio against the twins: the survival section quotes the effect table's interval
    assert "HR real source cohort vs twin arm (as in Treatment effect" in report
    assert "own uncertainty NOT included" not in report
    # its effect table gives each row's unit, as the screen's does (mg/dL for BILI's differences)
    eff_table = report[report.index("<h2>Treatment effect"):report.index("<h2>Embedding")]
    assert "<th>unit</th>" in eff_table and "<td>mg/dL</td>" in eff_table and "<td>ratio</td>" in eff_table
    # the card says how far below the baseline regression this trial lets a generator go
    assert "information beyond the own baseline [95 % CI]" in report and "Information beyond the own baseline: the" in report
    capsys.readouterr()
    assert main(["report", "--run", str(folder), "--trial", "epilepsy", "--out", str(tmp_path / "bad.html")]) == 1
    assert "not the data this run was generated from" in capsys.readouterr().err


def test_export_page_offers_both_downloads(pbc_twins):
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.session_state["twin_run"] = pbc_twins
    at.session_state["twin_run_dir"] = None
    at.switch_page("pages/export.py").run()
    assert not at.exception, at.exception
    assert "Export & report" in at.title[0].value
    at.radio(key="export_format").set_value("xpt").run()
    assert not at.exception


def test_an_llm_runs_report_validates_the_llm_generator(tmp_path, monkeypatch):
    """The report's validation card backtests the run's own generator (LLM twins of held-out
    patients from the scripted OpenAI-compatible server), names it, and does not pretend the
    LLM generator was refitted for the effect's interval."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from llm_server import ScriptedOpenAIServer

    from services.data.demo import load_demo
    from services.evaluation.validation import validate_run
    from services.generation import get_generator
    from services.reporting.report import build_report

    epil = load_demo("epilepsy")
    treated = list(epil.subjects.loc[epil.subjects["ARM"] != "Placebo", "USUBJID"][:6])
    with ScriptedOpenAIServer() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("TWINARM_LLM_MODEL", "scripted-model")
        gen = get_generator("llm", use_cache=False, neighbors=3).fit(epil)
        run = gen.generate(epil.subset(treated), "Placebo", seed=1)
        assert run.n_twins == 6 and run.manifest["generator"] == "llm"
        calls_for_run = len(srv.calls)
        check = validate_run(epil, run, folds=2, seed=0)
        assert check.generator == "llm" and check.twins_per_patient == 1
        assert {m["generator"] for m in check.manifests} == {"llm"}
        assert check.summary["held_out_twinned"] == 10 < check.summary["held_out"]
        html = build_report(epil, run, backtest=check, seed=0)
        assert len(srv.calls) == calls_for_run + 10         # the backtest's LLM twins, nothing else
    assert "Generator <b>llm</b> with the settings of this run, 1 twin per held-out patient, 2-fold cross-fitting of Placebo on 10 of" in html
    assert "the llm generator is not refitted" in html
    assert "0 generator refits" in html


def test_report_of_an_events_only_trial_validates_its_event_twins(pbc_events):
    """ADSL + ADTTE only: the report's validation card is the event backtest (KM distance,
    C-index) and PROCOVA says why it does not apply, instead of "nothing to backtest"."""
    from services.generation import get_generator
    from services.reporting.report import build_report

    treated = pbc_events.subjects.loc[pbc_events.subjects.ARM == "D-penicillamine", "USUBJID"][:40]
    run = get_generator("local").fit(pbc_events).generate(pbc_events.subset(treated), "Placebo",
                                                           twins_per_patient=2, seed=5)
    page = build_report(pbc_events, run)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", " ", page, flags=re.DOTALL)))
    start = text.index("Validation card")
    card = text[start:text.index("Survival", start)]
    assert "Trajectories" not in text                   # no empty section for a trial without visits
    assert "nothing to backtest" not in card
    assert "Time to event DEATH" in card and "Time to event DTHTX" in card
    # the event table under the Validate page's labels, parameters spelled out
    assert "C-index, Cox model" in card and "cindex_cox" not in card and "[DEATH]" in card
    assert "PROCOVA adjusts a continuous endpoint; this trial has no parameter with follow-up visits." in text


def test_the_report_plans_with_the_validate_pages_inputs(pbc, pbc_twins):
    """The Validate page's default backtest of a run is the run's own validation (the report's),
    and the report's PROCOVA plan uses the inputs set on that page: it says what the screen says."""
    from services.evaluation.effects import run_effects
    from services.reporting.report import build_report

    at = AppTest.from_file(APP, default_timeout=300).run()
    at.session_state["twin_run"] = pbc_twins
    at.session_state["twin_run_dir"] = None
    at.switch_page("pages/validate.py").run()
    next(b for b in at.button if b.label == "Run backtest").click().run()
    assert not at.exception, at.exception
    (result,) = at.session_state["validate_backtests"].values()
    assert (result.folds, result.arm, result.twins_per_patient) == (2, "Placebo", 2)
    for value in (1.2, 1.3, 1.4, 1.5):      # each edit sticks (unkeyed, every second one was dropped)
        next(n for n in at.number_input if n.label == "Effect to detect").set_value(value).run()
        assert at.session_state["validate_procova_inputs"][1]["effect"] == value
    next(n for n in at.number_input if n.label == "Treated-arm rho").set_value(0.3).run()
    assert not at.exception, at.exception
    # the endpoint is chosen on the page (a browser review: it was fixed at the first parameter)
    picker = next(b for b in at.selectbox if b.label == "Endpoint")
    assert picker.value == ("BILI", 24.0)
    chosen = [e for e in val_choices(pbc, at) if e[0] == "ALB"][-1]
    assert f"ALB: {pbc.parameters['ALB'].label} at {visit_label(pbc, *chosen)}" in picker.options
    picker.set_value(chosen).run()
    assert not at.exception, at.exception
    # its effect and SD start from its own data, not bilirubin's (a code review: albumin was planned with
    # bilirubin's SD, ten times too large); the allocation and the rules carry over
    from services.evaluation.validation import endpoint_pairs

    sd_alb = float(endpoint_pairs(pbc, result, chosen)[2]["OBSERVED"].std(ddof=1))
    assert next(n for n in at.number_input if n.label == "SD").value == pytest.approx(sd_alb)
    assert next(n for n in at.number_input if n.label == "Treated-arm rho").value == 0.3
    next(n for n in at.number_input if n.label == "Effect to detect").set_value(0.3).run()
    next(n for n in at.number_input if n.label == "Effect to detect").set_value(1.5).run()
    run_id, inputs = at.session_state["validate_procova_inputs"]
    assert run_id == pbc_twins.run_id and inputs["effect"] == 1.5 and inputs["rho_treatment"] == 0.3
    assert inputs["endpoint"] == [chosen[0], chosen[1]]
    on_screen = {m.label: m.value for m in at.metric}
    page = build_report(pbc, pbc_twins, backtest=result, procova_inputs=inputs,
                        effects=run_effects(pbc, pbc_twins, refits=2))
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<script.*?</script>", " ", page, flags=re.DOTALL)))
    assert "Planning inputs as set on the Validate page" in text
    assert f"patients with PROCOVA {on_screen['Patients, PROCOVA']} " in text
    assert f"patients with a baseline ANCOVA {on_screen['Patients, baseline ANCOVA']} " in text
    assert "effect / SD 1.5 / " in text
    assert f"endpoint ALB at {visit_label(pbc, *chosen)}" in text
    # every parameter's trajectory, skewed ones as Compare draws them by default (a browser re-check)
    assert page.count("geometric mean with 95 % CI") + page.count(": mean with 95 % CI") == len(pbc.longitudinal_parameters)
    assert page.count("geometric mean with 95 % CI") >= 1          # bilirubin and the other skewed labs
    # a backtest with other settings plans on its own screen only: the report keeps the run's
    next(s for s in at.slider if s.label == "Folds (k)").set_value(3)
    next(b for b in at.button if b.label == "Run backtest").click().run()
    next(n for n in at.number_input if n.label == "Effect to detect").set_value(2.5).run()
    assert not at.exception, at.exception
    assert at.session_state["validate_procova_inputs"][1]["effect"] == 1.5
    assert any("plan on this backtest only" in c.value for c in at.caption)
    assert any("Endpoint: **BILI** at **Year 2**" in m.value for m in at.markdown)   # not "visit 24"
    # back on the run's own validation, after another page, the inputs are those set (a review: leaving
    # the page reset them to the defaults, and the revisit replaced the report's)
    next(s for s in at.slider if s.label == "Folds (k)").set_value(2)
    next(b for b in at.button if b.label == "Run backtest").click().run()
    at.switch_page("pages/export.py").run()
    at.switch_page("pages/validate.py").run()
    assert not at.exception, at.exception
    assert next(n for n in at.number_input if n.label == "Effect to detect").value == 1.5
    assert at.session_state["validate_procova_inputs"][1]["rho_treatment"] == 0.3
    assert next(b for b in at.selectbox if b.label == "Endpoint").value == chosen


def val_choices(trial, at):
    """The endpoint options of the run's own validation on the page."""
    from services.evaluation.validation import endpoint_choices

    (result,) = [r for r in at.session_state["validate_backtests"].values() if r.folds == 2]
    return endpoint_choices(trial, result)


def test_the_survival_rows_quote_the_effects_hazard_ratio_and_label_the_other():
    from services.reporting.report import _survival_rows

    s = {"hr_source_vs_twins": {"hazard_ratio": 1.08, "ci_low": 0.90, "ci_high": 1.31, "p_value": 0.416},
         "logrank_twins_vs_real_target": {"p_value": 0.5}}
    row = {"measure": "hazard_ratio", "paramcd": "DEATH", "estimate": 1.08, "ci_low": 0.834, "ci_high": 1.40,
           "p_value": 0.548, "B": 20, "var_generator": 0.004, "df": 60.0, "design": "synthetic_control"}
    rows = _survival_rows(s, {"effects": [row]}, "DEATH")
    label, value = next(iter(rows.items()))
    assert value == "1.08 (95 % CI 0.83-1.40, p 0.548)" and label.endswith("uncertainty: included)")
    assert not any("0.90" in v for v in rows.values())
    # an effect without refits (an llm run, --refits 0) is not said to carry the generator's uncertainty
    label = next(iter(_survival_rows(s, {"effects": [row | {"B": 0}]}, "DEATH")))
    assert "uncertainty: not included (no refits)" in label
    alone = _survival_rows(s, None, "DEATH")
    label, value = next(iter(alone.items()))
    assert "NOT included" in label and value.startswith("1.08 (95 % CI 0.90-1.31")
    assert any("not evidence of agreement" in k for k in alone)


def test_the_report_names_the_cohort_the_run_was_made_for():
    # a browser review: a run made for "DPCA age>=40" (130 patients) was reported as the cohort
    # chosen on the Cohort page after it ("DPCA age>=60 (37 patients)")
    from services.reporting.report import run_cohort

    manifest = {"cohort": {"label": "DPCA age>=40 (130 patients)", "kind": "cohort"}, "sources": {"subjects": 130}}
    assert run_cohort(manifest, 130, "D-penicillamine") == "DPCA age>=40 (130 patients)"
    assert run_cohort({"sources": {"subjects": 12}}, 12, "Progabide") == "12 patients of Progabide"
    # and its criteria, which a name alone would not check (a second browser review)
    spec = {"name": "XHD age 65-85", "arms": ["Xanomeline High Dose"], "expression": "AGE between 65 and 85"}
    manifest["cohort"] = {"label": "XHD age 65-85 (69 patients)", "kind": "cohort", "spec": spec}
    assert run_cohort(manifest, 69, "Xanomeline High Dose") == (
        "XHD age 65-85 (69 patients) (criteria: arm: Xanomeline High Dose; AGE between 65 and 85)")


def test_xpt_export_takes_the_knowledge_bases_own_labels(pilot, tmp_path):
    # `twinarm export --format xpt` gave no labels: the pilot's AGEGR1 was labelled "AGEGR1"
    from services.generation import get_generator

    ids = list(pilot.subjects.loc[pilot.subjects.ARM == "Xanomeline High Dose", "USUBJID"])[:5]
    run = get_generator("local").fit(pilot).generate(pilot.subset(ids), "Placebo", twins_per_patient=1, seed=0)
    files = {f.name: f for f in export_files(run, "xpt", knowledge_base=pilot)}
    (tmp_path / "adsl.xpt").write_bytes(files["adsl.xpt"].data)
    labels = pyreadstat.read_xport(str(tmp_path / "adsl.xpt"))[1].column_names_to_labels
    assert labels["AGEGR1"] == pilot.labels["AGEGR1"] == "Pooled Age Group 1"
