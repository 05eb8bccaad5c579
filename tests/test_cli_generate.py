"""`twinarm generate` on the bundled PBC trial: in-process (services.cli.main) and once as the
installed console script; bad input gives one stderr line and a non-zero status; the llm
generator against the scripted OpenAI-compatible server configured through the environment."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from llm_server import ScriptedOpenAIServer

from services.cli import main
from services.data.loading import load_trial
from services.generation.run import read_run

ROOT = Path(__file__).resolve().parents[1]
TWINARM = ROOT / ".venv" / "bin" / "twinarm"
DEMO = ROOT / "services" / "data" / "demo_data" / "pbc"


def new_patients(folder: Path, n: int = 5, baseline_only: bool = False) -> Path:
    """A trial folder of `n` PBC treated patients under new ids (patients the knowledge base
    has never seen), with all their records, or only their baseline records."""
    folder.mkdir(parents=True, exist_ok=True)
    adsl = pd.read_csv(DEMO / "adsl.csv")
    adsl = adsl[adsl["ARM"] == "D-penicillamine"].head(n).copy()
    ids = {u: f"NEW-{i + 1:03d}" for i, u in enumerate(adsl["USUBJID"])}
    adsl["USUBJID"] = adsl["USUBJID"].map(ids)
    adsl.to_csv(folder / "adsl.csv", index=False)
    adlb = pd.read_csv(DEMO / "adlb.csv")
    adlb = adlb[adlb["USUBJID"].isin(ids)].copy()
    adlb["USUBJID"] = adlb["USUBJID"].map(ids)
    if baseline_only:
        adlb = adlb[adlb["ABLFL"] == "Y"]
    adlb.to_csv(folder / "adlb.csv", index=False)
    return folder


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["generate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cohort_arm_of_the_demo(tmp_path, capsys, pbc):
    out_dir = tmp_path / "twins"
    code, out, err = run_cli(capsys, "--trial", "pbc", "--target-arm", "Placebo",
                             "--cohort-arm", "D-penicillamine", "--twins-per-patient", 2,
                             "--seed", 3, "--out", out_dir)
    assert code == 0, err
    assert "Wrote 316 twins under 'Placebo' (158 source patients x 2)" in out
    assert str(out_dir) in out and out.strip().count("\n") == 0
    twins = load_trial(out_dir)
    assert len(twins.subjects) == 158 * 2 and set(twins.subjects["ARM"]) == {"Placebo"}
    assert set(twins.tte_parameters) == set(pbc.tte_parameters)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["generator"] == "local" and manifest["seed"] == 3
    assert manifest["counts"]["twins"] == 316
    assert "twins of their own arm" not in err
    # a cohort twinned under its own arm is said to be a check of the generator, not a synthetic control
    code, out, err = run_cli(capsys, "--trial", "epilepsy", "--target-arm", "Placebo", "--cohort-arm", "Placebo",
                             "--twins-per-patient", 1, "--out", tmp_path / "own")
    assert code == 0 and "note: every source patient received Placebo, the target arm" in err


def test_subjects_folder_reads_only_baseline(tmp_path, capsys):
    full = new_patients(tmp_path / "full", 5)
    base = new_patients(tmp_path / "base", 5, baseline_only=True)
    outs = []
    for name, folder in (("a", full), ("b", base)):
        out_dir = tmp_path / f"out_{name}"
        code, _, err = run_cli(capsys, "--trial", "pbc", "--target-arm", "Placebo",
                               "--subjects", folder, "--twins-per-patient", 3, "--out", out_dir,
                               "--format", "parquet")
        assert code == 0, err
        assert (out_dir / "adsl.parquet").exists()
        outs.append(read_run(out_dir))
    a, b = outs
    assert len(a.adsl) == 5 * 3 and set(a.adsl["SRCSUBJID"]) == {f"NEW-{i:03d}" for i in range(1, 6)}
    # the post-baseline records of --subjects are never read: same twins either way
    pd.testing.assert_frame_equal(a.adsl, b.adsl)
    pd.testing.assert_frame_equal(a.bds["adlb"], b.bds["adlb"])
    pd.testing.assert_frame_equal(a.tte, b.tte)


@pytest.mark.slow
def test_console_script(tmp_path):
    assert TWINARM.exists(), "the twinarm console script is installed by `make venv`"
    folder = new_patients(tmp_path / "subjects", 3)
    out_dir = tmp_path / "out"
    env = dict(os.environ)
    proc = subprocess.run([str(TWINARM), "generate", "--trial", "pbc", "--target-arm", "Placebo",
                           "--subjects", str(folder), "--out", str(out_dir)],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # no --twins-per-patient: the generator's declared default (local: 5 per patient)
    assert "Wrote 15 twins" in proc.stdout and "x 5" in proc.stdout
    assert len(load_trial(out_dir).subjects) == 15
    bad = subprocess.run([str(TWINARM), "generate", "--trial", "pbc", "--target-arm", "Aspirin",
                          "--cohort-arm", "Placebo", "--out", str(tmp_path / "x")],
                         check=False, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "Aspirin" in bad.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, needle", [
    (["--target-arm", "Aspirin", "--cohort-arm", "Placebo"], "arms: Placebo, D-penicillamine"),
    (["--target-arm", "Placebo", "--cohort-arm", "Aspirin"], "arms: Placebo, D-penicillamine"),
    (["--target-arm", "Placebo", "--subjects", "/no/such/folder"], "no such folder"),
    (["--target-arm", "Placebo"], "exactly one of --subjects"),
    (["--target-arm", "Placebo", "--cohort-arm", "Placebo", "--subjects", "."], "exactly one of"),
    (["--target-arm", "Placebo", "--cohort-arm", "Placebo", "--twins-per-patient", "0"], "between 1 and 1000, got 0"),
    # a typo of K gave a 29-line memory-error traceback (an outside review)
    (["--target-arm", "Placebo", "--cohort-arm", "Placebo", "--twins-per-patient", "1000000000"], "between 1 and 1000"),
    (["--target-arm", "Placebo", "--cohort-arm", "Placebo", "--generator", "magic"], "invalid choice"),
    # no abbreviations: `--twins 3` had silently meant --twins-per-patient 3
    (["--target-arm", "Placebo", "--cohort-arm", "Placebo", "--twins", "3"], "unrecognized arguments: --twins 3"),
])
def test_bad_input_one_line_and_non_zero(tmp_path, capsys, args, needle):
    try:
        code = main(["generate", "--trial", "pbc", "--out", str(tmp_path / "o"), *args])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    _, err = capsys.readouterr()
    assert code != 0
    assert err.startswith("twinarm: error:") and err.strip().count("\n") == 0, err
    assert needle in err
    assert not (tmp_path / "o").exists()


def test_missing_trial_and_invalid_subjects(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--trial", tmp_path / "nothing", "--target-arm", "Placebo",
                           "--cohort-arm", "Placebo", "--out", tmp_path / "o")
    assert code == 1 and "neither a folder nor a bundled trial" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adsl.csv").write_text("NAME,AGE\nx,3\n")
    code, _, err = run_cli(capsys, "--trial", "pbc", "--target-arm", "Placebo",
                           "--subjects", bad, "--out", tmp_path / "o")
    assert code == 1 and err.startswith("twinarm: error: --subjects") and err.count("\n") == 1


def test_llm_generator_through_the_environment(tmp_path, capsys, monkeypatch):
    folder = new_patients(tmp_path / "subjects", 3)
    with ScriptedOpenAIServer() as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("TWINARM_LLM_MODEL", "scripted-model")
        out_dir = tmp_path / "llm"
        code, out, err = run_cli(capsys, "--trial", "pbc", "--target-arm", "Placebo",
                                 "--subjects", folder, "--generator", "llm",
                                 "--twins-per-patient", 2, "--neighbors", 4, "--no-cache",
                                 "--out", out_dir)
        assert code == 0, err
        assert len(srv.calls) == 6
    assert "Wrote 6 twins" in out and "model scripted-model" in out and "6 calls" in out
    run = read_run(out_dir)
    assert run.manifest["model"] == "scripted-model" and run.manifest["failures"] == []
    assert run.manifest["settings"]["neighbors"] == 4
    assert all(len(v) == 4 for v in run.manifest["neighbours"].values())
    assert len(load_trial(out_dir).subjects) == 6


def test_llm_unavailable_or_remote_without_consent(tmp_path, capsys, monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TWINARM_LLM_EMBEDDED", "0")  # else the embedded model is the default
    args = ["--trial", "pbc", "--target-arm", "Placebo", "--cohort-arm", "D-penicillamine",
            "--generator", "llm", "--out", tmp_path / "o"]
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "LLM generator unavailable: set OPENAI_API_KEY" in err
    monkeypatch.setenv("OPENAI_BASE_URL", "https://llm.example.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-never-printed")
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "not on this machine" in err and "--allow-remote" in err
    assert "sk-secret" not in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_subjects_text_in_a_numeric_covariate_is_refused_and_notes_are_printed(tmp_path, capsys):
    # a review: an AGE of "old" was read as missing and imputed with "No failures", and a folder
    # without baseline records gave twins of the arm's typical baseline with the note only in the manifest
    demo = Path(__file__).resolve().parents[1] / "services" / "data" / "demo_data" / "epilepsy"
    adsl, eff = pd.read_csv(demo / "adsl.csv"), pd.read_csv(demo / "adeff.csv")
    ids = list(adsl.loc[adsl["ARM"] == "Progabide", "USUBJID"][:3])
    text = adsl[adsl["USUBJID"].isin(ids)].astype({"AGE": object})
    text.loc[text.index[1], "AGE"] = "old"
    (tmp_path / "text").mkdir()
    text.to_csv(tmp_path / "text" / "adsl.csv", index=False)
    eff[eff["USUBJID"].isin(ids)].to_csv(tmp_path / "text" / "adeff.csv", index=False)
    code, _, err = run_cli(capsys, "--trial", "epilepsy", "--target-arm", "Placebo",
                           "--subjects", tmp_path / "text", "--out", tmp_path / "o")
    assert code == 1 and err.count("\n") == 1
    assert "adsl column AGE is numeric" in err and f"{ids[1]}: 'old'" in err
    assert not (tmp_path / "o").exists()
    (tmp_path / "bare").mkdir()
    adsl[adsl["USUBJID"].isin(ids)].to_csv(tmp_path / "bare" / "adsl.csv", index=False)
    code, out, err = run_cli(capsys, "--trial", "epilepsy", "--target-arm", "Placebo",
                             "--subjects", tmp_path / "bare", "--out", tmp_path / "o2")
    assert code == 0, err
    assert "note: 3 source(s) have no baseline SEIZ" in err and out.strip().count("\n") == 0


def test_subjects_missing_codes_are_missing_as_the_loader_reads_them(pbc):
    # the loader reads ".", NA, NULL, MISSING... in a numeric ADSL column as missing; the check of
    # --subjects against the knowledge base had its own shorter list ("" and ".") and refused "MISSING"
    from services.data.quality import source_mismatches

    subj = pbc.subjects[pbc.subjects["ARM"] == "D-penicillamine"].head(4).astype({"AGE": object})
    subj.loc[subj.index[:3], "AGE"] = [".", "missing", " NULL "]
    sources = dataclasses.replace(pbc, subjects=subj)
    assert source_mismatches(pbc, sources) == []
    subj.loc[subj.index[3], "AGE"] = "old"
    assert "not for 1 source(s)" in source_mismatches(pbc, dataclasses.replace(pbc, subjects=subj))[0]


def test_generate_names_what_in_trial_toml_does_not_fit(tmp_path, capsys):
    demo = Path(__file__).resolve().parents[1] / "services" / "data" / "demo_data" / "epilepsy"
    folder = tmp_path / "epi"
    folder.mkdir()
    for p in demo.glob("*.csv"):
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "trial.toml").write_text('contol_arm = "Placebo"\n')
    code, _, err = run_cli(capsys, "--trial", folder, "--target-arm", "Placebo", "--cohort-arm", "Progabide",
                           "--twins-per-patient", 1, "--out", tmp_path / "o")
    assert code == 0
    assert "note: trial.toml: unknown key 'contol_arm', ignored (did you mean 'control_arm'?)" in err


def test_a_reader_that_leaves_early_stops_the_cli_quietly():
    # `twinarm datasets --json | head` ended in a BrokenPipeError traceback (an outside review)
    proc = subprocess.Popen([str(TWINARM), "datasets", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                                  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err, err


def test_more_neighbours_than_the_arm_has_is_said(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--trial", "epilepsy", "--target-arm", "Placebo", "--cohort-arm", "Progabide",
                           "--twins-per-patient", 1, "--neighbors", 100000, "--out", tmp_path / "o")
    assert code == 0
    assert "note: neighbours asked: 100000; the target arm has 28 patients" in err


def test_a_broken_connection_that_is_not_stdout_is_an_error(monkeypatch, capsys):
    # only stdout's reader leaving ends quietly; a model server's socket breaking is reported
    import importlib

    from services.cli import datasets

    cli_main = importlib.import_module("services.cli.main")         # the module, not the function

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(datasets, "cmd_datasets", broken)
    monkeypatch.setattr(cli_main, "_stdout_gone", lambda: False)
    assert main(["datasets"]) == 1
    assert capsys.readouterr().err.startswith("twinarm: error: connection broken")
