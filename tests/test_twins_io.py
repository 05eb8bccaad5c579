"""Twin-run folders: the contract's files, write/read round trip, loading twins as a trial,
saved runs under TWINARM_HOME."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from services.data.loading import load_trial
from services.generation.local import LocalGenerator
from services.generation.run import MANIFEST_KEYS, read_run, write_run
from services.generation.saved_runs import list_runs, load_run, new_run_id, runs_root, save_run
from services.retrieval.retriever import ExactRetriever


@pytest.fixture(scope="module")
def pbc_run(pbc):
    gen = LocalGenerator(retriever_factory=ExactRetriever).fit(pbc)
    treated = pbc.subjects.loc[pbc.subjects["ARM"] != "Placebo", "USUBJID"][:12]
    return gen.generate(pbc.subset(treated), "Placebo", twins_per_patient=3, seed=7)


@pytest.fixture(scope="module")
def pilot_run(pilot):
    gen = LocalGenerator(retriever_factory=ExactRetriever).fit(pilot)
    ids = pilot.subjects.loc[pilot.subjects["ARM"] == "Xanomeline High Dose", "USUBJID"][:10]
    return gen.generate(pilot.subset(ids), "Placebo", twins_per_patient=2, seed=1)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_write_read_round_trip(pbc_run, tmp_path, fmt):
    out = write_run(pbc_run, tmp_path / "run", fmt=fmt)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"adsl.{fmt}", f"adlb.{fmt}", f"adtte.{fmt}", "manifest.json", "trial.toml"])
    back = read_run(out)
    _same(back.adsl, pbc_run.adsl)
    assert list(back.bds) == list(pbc_run.bds)
    _same(back.bds["adlb"], pbc_run.bds["adlb"])
    _same(back.tte, pbc_run.tte)
    assert back.manifest == json.loads(json.dumps(pbc_run.manifest))
    assert set(MANIFEST_KEYS) <= set(back.manifest)
    # a file a user keeps beside the run is not one of its datasets
    pd.DataFrame({"USUBJID": ["x"], "PARAMCD": ["N"], "AVAL": [1.0]}).to_csv(out / "summary.csv", index=False)
    assert list(read_run(out).bds) == list(pbc_run.bds)


def test_written_folder_loads_like_any_trial(pbc, pbc_run, tmp_path):
    out = write_run(pbc_run, tmp_path / "twins")
    twins = load_trial(out)
    assert twins.arm_counts() == {"Placebo": pbc_run.n_twins}
    assert twins.tte_parameters == ["DEATH", "DTHTX"]
    assert set(twins.parameters) == set(pbc.parameters)
    assert twins.parameters["BILI"].unit == "mg/dL"
    # the twins' baseline is their source's baseline
    base = twins.baseline
    src_base = pbc.baseline.loc[pbc_run.adsl["SRCSUBJID"]]
    assert np.allclose(base.to_numpy(float), src_base.to_numpy(float), equal_nan=True)
    # every generated record is a scheduled post-baseline value
    n_generated = int((pbc_run.bds["adlb"]["ABLFL"] != "Y").sum())
    assert len(twins.visit_values) == n_generated
    # SRCSUBJID / TWINIDX are identifiers, not covariates; the source's covariates are
    assert "SRCSUBJID" not in twins.covariates and "TWINIDX" not in twins.covariates
    assert {"AGE", "SEX", "STAGE"} <= set(twins.covariates)
    # as_trial goes through the same loader
    same = pbc_run.as_trial()
    assert same.summary()["parameters"] == twins.summary()["parameters"]
    assert same.arm_counts() == twins.arm_counts()
    assert len(same.visit_values) == len(twins.visit_values)


def test_cdisc_pilot_twins_load_with_visits(pilot, pilot_run, tmp_path):
    out = write_run(pilot_run, tmp_path / "pilot_twins")
    twins = load_trial(out)
    assert twins.tte is None and list(twins.bds) == ["advs"]
    assert "HEIGHT" in twins.parameters and not twins.parameters["HEIGHT"].has_followup
    assert [v.avisitn for v in twins.schedule("SYSBP")] == [v.avisitn for v in pilot.schedule("SYSBP")]
    advs = pilot_run.bds["advs"]
    base = advs[advs["ABLFL"] == "Y"]
    visits = base[base["PARAMCD"] != "HEIGHT"]
    assert (visits["AVISIT"] == "Baseline").all() and (visits["AVISITN"] == 0).all()
    # height has only a screening record (no visit): copied as the baseline, without a visit
    height = base[base["PARAMCD"] == "HEIGHT"]
    assert len(height) == pilot_run.n_twins and height["AVISITN"].isna().all()


def test_saved_runs(pbc_run, tmp_path, monkeypatch):
    monkeypatch.setenv("TWINARM_HOME", str(tmp_path / "home"))
    assert runs_root() == tmp_path / "home" / "runs" and list_runs() == []
    folder = save_run(pbc_run)
    assert folder == runs_root() / pbc_run.run_id
    runs = list_runs()
    assert len(runs) == 1 and runs[0]["run_id"] == pbc_run.run_id
    assert runs[0]["twins"] == pbc_run.n_twins and runs[0]["generator"] == "local"
    again = load_run(pbc_run.run_id)
    _same(again.bds["adlb"], pbc_run.bds["adlb"])
    (runs_root() / "junk").mkdir()          # a folder without a manifest is not a run
    assert len(list_runs()) == 1


def test_run_ids():
    a = new_run_id("x", when=0.0)
    assert re.fullmatch(r"19700101-000000-[0-9a-f]{6}", a)
    assert new_run_id("x", when=0.0) != new_run_id("y", when=0.0)


def test_read_run_refuses_a_plain_trial_folder(tmp_path):
    (tmp_path / "adsl.csv").write_text("USUBJID,ARM\n1,A\n")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_run(tmp_path)
