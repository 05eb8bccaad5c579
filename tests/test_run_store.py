"""A run's evaluation is computed once and kept in its folder: the background job after
generation, the Compare page, the report and `twinarm evaluate` share it (PBC demo, real
generator, real files)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from services.cli.main import main as cli
from services.evaluation.comparison import EVALUATION_VERSION, cached_run_evaluation
from services.evaluation.precompute import precompute_for, start_precompute
from services.evaluation.run_store import cached_in_run, data_digest
from services.generation.run import write_run

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_a_result_is_reused_only_under_its_own_key(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    key = {"knowledge_base": "abc", "run_id": "r1"}
    assert cached_in_run(tmp_path, "thing", key, compute) == {"value": 1}
    assert cached_in_run(tmp_path, "thing", key, compute) == {"value": 1}   # read back
    assert json.loads((tmp_path / "thing.json").read_text())["key"] == {**key, "data": ""} and len(calls) == 1
    assert cached_in_run(tmp_path, "thing", {**key, "run_id": "r2"}, compute) == {"value": 2}
    (tmp_path / "thing.json").write_text("{not json")                      # a damaged file
    assert cached_in_run(tmp_path, "thing", key, compute) == {"value": 3}
    assert cached_in_run(None, "thing", key, compute) == {"value": 4}      # no folder: computed


def test_a_result_is_not_reused_once_the_twin_files_change(pbc, pbc_twins, tmp_path, capsys):
    # an outside review added 30 to every generated value and `evaluate` printed the old effects
    run_dir = write_run(pbc_twins, tmp_path / "run")
    out = tmp_path / "m.json"

    def alb_effect():
        assert cli(["evaluate", "--real", "pbc", "--twins", str(run_dir), "--refits", "0", "--json", str(out)]) == 0
        capsys.readouterr()
        rows = json.loads(out.read_text())["effects"]["effects"]
        return next(r["estimate"] for r in rows if r["measure"] == "mean_difference" and r["paramcd"] == "ALB")

    before = alb_effect()
    assert alb_effect() == before and (Path(run_dir) / "effects.json").is_file()
    lab = Path(run_dir) / "adlb.csv"
    frame = pd.read_csv(lab)
    post = (frame["PARAMCD"] == "ALB") & frame["ABLFL"].isna()
    frame.loc[post, "AVAL"] += 1.0                      # every twin's albumin 1 g/dL higher
    frame.to_csv(lab, index=False)
    assert alb_effect() == pytest.approx(before - 1.0, abs=1e-6)
    # the digest covers what the results read (the datasets, the manifest), not a user's files
    digest = data_digest(run_dir)
    (Path(run_dir) / "summary.csv").write_text("a,b\n1,2\n")
    (Path(run_dir) / "adsl.old.csv").write_text("a,b\n1,2\n")
    assert data_digest(run_dir) == digest
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    (Path(run_dir) / "manifest.json").write_text(json.dumps({**manifest, "notes": ["edited"]}))
    assert data_digest(run_dir) != digest


def test_a_run_written_over_another_replaces_its_files_and_nothing_else(pbc_twins, tmp_path):
    from services.generation.run import read_run

    folder = write_run(pbc_twins, tmp_path / "run", fmt="csv")
    (folder / "notes.txt").write_text("mine")                  # a user's own files stay
    (folder / "xpt").mkdir()
    write_run(pbc_twins, folder, fmt="parquet")
    names = sorted(f.name for f in folder.iterdir())
    assert not [n for n in names if n.endswith(".csv")], names   # the old run's CSVs went with it
    assert {"manifest.json", "adsl.parquet", "notes.txt", "xpt"} <= set(names)
    assert not [n for n in names if n.startswith(".")] and (folder / "notes.txt").read_text() == "mine"
    umask = os.umask(0)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask      # the umask's mode, not a temp folder's 0700
    # a write that fails part-way leaves no run to read (the old manifest goes first), never a
    # new run's data under the old run's manifest; the user's files stay
    # a run that cannot be written leaves the old one whole (every byte is built first)
    before = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    broken = dataclasses.replace(pbc_twins, manifest={**pbc_twins.manifest, "bad": object()})
    with pytest.raises(TypeError):
        write_run(broken, folder, fmt="csv")
    assert {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()} == before
    assert read_run(folder).run_id == pbc_twins.run_id
    # a folder left without its manifest (an interrupted write) is no run; the next write cleans
    # both formats of its datasets, and only files named exactly <dataset>.<csv|parquet>
    (folder / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        read_run(folder)
    (folder / "adsl.old.csv").write_text("mine too")
    write_run(pbc_twins, folder, fmt="csv")
    names = {f.name for f in folder.iterdir()}
    assert "adsl.parquet" not in names and {"adsl.csv", "adsl.old.csv", "notes.txt"} <= names
    assert len(read_run(folder).adsl) == len(pbc_twins.adsl)
    assert not [f for f in folder.iterdir() if f.name.startswith(".")]


def test_background_evaluation_is_what_the_cli_and_the_page_show(pbc, pbc_twins, tmp_path,
                                                                  capsys):
    run_dir = write_run(pbc_twins, tmp_path / "run")
    job = start_precompute(pbc, pbc_twins, run_dir)
    assert start_precompute(pbc, pbc_twins, run_dir) is job and precompute_for(run_dir) is job
    assert job.wait_for("evaluation", 600) and job.wait_for("effects", 900)
    assert not job.errors and job.fraction() == 1.0
    assert job.done == ["evaluation", "embedding", "validation", "effects"]
    for name in ("evaluation", "embedding_tsne", "validation", "effects"):
        assert (Path(run_dir) / f"{name}.json").is_file(), name
    stored = json.loads((Path(run_dir) / "evaluation.json").read_text())
    assert stored["key"] == {"knowledge_base": pbc.content_hash, "run_id": pbc_twins.run_id,
                             "seed": 0, "metrics": EVALUATION_VERSION, "data": data_digest(run_dir)}
    # the stored result is the one served (mark it to see it come back)
    stored["result"]["fidelity"]["share_abs_net_smd_below_0_1"] = 0.123456
    (Path(run_dir) / "evaluation.json").write_text(json.dumps(stored))
    assert cached_run_evaluation(pbc, pbc_twins, run_dir)["fidelity"]["share_abs_net_smd_below_0_1"] == 0.123456
    out = tmp_path / "metrics.json"
    assert cli(["evaluate", "--real", "pbc", "--twins", str(run_dir), "--json", str(out)]) == 0
    capsys.readouterr()
    assert json.loads(out.read_text())["fidelity"]["share_abs_net_smd_below_0_1"] == 0.123456
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.session_state["twin_run"] = pbc_twins
    at.session_state["twin_run_dir"] = str(run_dir)
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    headline = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    smd = headline.set_index("metric").loc["parameter-visits with |SMD| < 0.1 (net of the sources' baseline imbalance)", "value"]
    assert str(smd).startswith("0.123"), smd


def test_the_kept_backtest_gives_the_report_the_same_card(pbc, pbc_twins, tmp_path):
    """The validation kept as JSON reads back into the same BacktestResult figures."""
    from services.evaluation.validation import bootstrap_card, cached_validate_run, validate_run

    fresh = validate_run(pbc, pbc_twins, folds=2, seed=0)
    kept = cached_validate_run(pbc, pbc_twins, tmp_path, folds=2, seed=0)
    again = cached_validate_run(pbc, pbc_twins, tmp_path, folds=2, seed=0)   # read back
    assert (tmp_path / "validation.json").is_file()
    for res in (kept, again):
        assert res.summary["verdicts"] == fresh.summary["verdicts"]
        a, b = bootstrap_card(fresh, seed=0), bootstrap_card(res, seed=0)
        assert list(a.columns) == list(b.columns)
        num = a.select_dtypes("number").columns
        assert np.allclose(a[num].to_numpy(float), b[num].to_numpy(float), equal_nan=True)
