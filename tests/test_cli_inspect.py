"""`twinarm datasets` and `twinarm inspect` (contract section 3), in process and as the real
console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import main

ROOT = Path(__file__).resolve().parents[1]
TWINARM = Path(sys.executable).with_name("twinarm")


def test_datasets_lists_every_bundled_trial(capsys):
    assert main(["datasets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["pbc"]["subjects"] == 312 and rows["pbc"]["arms"] == {"Placebo": 154, "D-penicillamine": 158}
    assert rows["epilepsy"]["subjects"] == 59 and rows["btheb"]["subjects"] == 100
    assert main(["datasets"]) == 0
    assert "Mayo Clinic PBC trial" in capsys.readouterr().out


def test_inspect_json_has_the_contract_keys(capsys):
    assert main(["inspect", "pbc", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["subjects"] == 312
    assert summary["arms"] == {"Placebo": 154, "D-penicillamine": 158}
    assert "BILI" in summary["parameters"] and summary["tte_parameters"] == ["DEATH", "DTHTX"]


@pytest.mark.slow
def test_inspect_the_cdisc_pilot_as_a_subprocess(pilot):
    folder = ROOT.parent / "shared" / "data" / "cdiscpilot01"
    out = subprocess.run([str(TWINARM), "inspect", str(folder), "--json"], capture_output=True, text=True,
                         timeout=120, check=True)
    summary = json.loads(out.stdout)
    assert summary["subjects"] == 254 and len(summary["arms"]) == 3
    assert set(summary["parameters"]) >= {"SYSBP", "DIABP", "PULSE", "WEIGHT", "TEMP"}
    assert summary["tte_parameters"] == []


@pytest.mark.slow
def test_inspect_reports_validation_errors_and_exits_non_zero(tmp_path):
    (tmp_path / "adsl.csv").write_text("USUBJID,ARM\nS1,A\nS1,B\n")
    (tmp_path / "adlb.csv").write_text("")
    out = subprocess.run([str(TWINARM), "inspect", str(tmp_path)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 1
    assert "more than once" in out.stdout and "adlb.csv: the file is empty" in out.stdout
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("twinarm: error:")
    # the one line names the first problem itself, not only "2 validation errors" (a review)
    assert ("more than once" in out.stderr or "adlb.csv" in out.stderr) and "1 more problem: see above" in out.stderr
    missing = subprocess.run([str(TWINARM), "inspect", "no-such-trial"], capture_output=True, text=True,
                             timeout=120, check=False)
    assert missing.returncode == 1 and "neither a folder nor a bundled trial" in missing.stderr


@pytest.mark.parametrize("argv, needle", [
    (["export", "--run", "x"], "export: the following arguments are required: --out"),
    (["report", "--out", "r.html"], "report: the following arguments are required: --run"),
    (["evaluate", "--twins", "t"], "evaluate: the following arguments are required: --real"),
    (["index"], "index: the following arguments are required"),
    (["bogus"], "invalid choice: 'bogus'"),
])
def test_every_usage_error_is_one_line_and_exit_2(capsys, argv, needle):
    # the contract's one-line `twinarm: error: ...`, not argparse's usage block and `twinarm export: error:`
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("twinarm: error: ") and err.count("\n") == 1, err
    assert needle in err
