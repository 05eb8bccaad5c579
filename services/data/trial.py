"""The trial data model: ADaM-lite loaded into one clean, validated `Trial`.

Implements section 1 of the contract (`../shared/CONTRACT.md`): which file is which, arm
resolution, derived rows, baseline definition, unscheduled records, and validation that names
the file, the column and the first offending rows instead of raising a traceback.
Reading and validating files into a `Trial`: `services.data.loading`.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

ARM_COLUMNS = ("ARM", "TRT01P", "TRT01A", "ACTARM", "TRTP")
BDS_REQUIRED = ("USUBJID", "PARAMCD", "AVAL")
TTE_REQUIRED = ("USUBJID", "PARAMCD", "AVAL", "CNSR")
AE_REQUIRED = ("USUBJID", "AEDECOD")

# ADSL columns that are not baseline covariates: identifiers, treatment variables, analysis
# population flags, and variables only known after randomization (disposition, exposure,
# death), which would leak outcome into the twins.
_ID_COLUMNS = {"STUDYID", "USUBJID", "SUBJID", "SITEID", "SITEGR1", "INVID", "INVNAM", "SRCSUBJID",
               "TWINIDX", "ARM", "ARMCD", "ACTARM", "ACTARMCD", "ARMNRS", "ACTARMUD"}
_NOT_BASELINE = re.compile(
    r"^(TRT.*|TR\d\d.*|AP\d\d.*|(SAF|ITT|EFF|FAS|PPROT|PP|RAND|ENRL|COMPL|MITT)FL|COMP\d+.*FL"
    r"|DISCONFL|DSRAEFL|DTHFL|DTH.*|EOSSTT|EOTSTT|DCSREAS.*|DCDECOD|DCREASCD|DCTREAS.*|AVGDD|CUMDOSE"
    r"|VISNUMEN|LSTALV.*|RFEN.*|RFST.*|RFIC.*|RFPEN.*|RFX.*|DS.*)$"
)
_DATE_NAME = re.compile(r".*(DT|DTM|DTC|DTF|TMF|TM)$")
_UNSCHEDULED_VISIT = re.compile(
    r"(?:END OF (?:TREATMENT|STUDY|THERAPY)|EARLY TERM|UNSCHED|^EOT$|^EOS$|^ET$|RETRIEVAL)", re.IGNORECASE
)
_MAX_CATEGORY_LEVELS = 30
# Files that travel with ADaM-lite folders (TwinArm's own run manifest, notes) but hold no data.
IGNORED_FILES = {"manifest.json"}


class TrialValidationError(ValueError):
    """The trial cannot be loaded; `messages` lists every problem in plain language."""

    def __init__(self, messages: list[str]):
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


@dataclass(frozen=True)
class Parameter:
    """A BDS parameter (PARAMCD) with what the app needs to show and model it."""

    paramcd: str
    label: str
    unit: str
    dataset: str
    n_records: int
    n_subjects: int
    has_followup: bool


@dataclass(frozen=True)
class Visit:
    """A scheduled post-baseline visit of a parameter: number, label, nominal study day."""

    avisitn: float
    avisit: str
    ady: float
    n_subjects: int


@dataclass
class TrialMeta:
    """What `trial.toml` may say about a trial; everything optional."""

    title: str = ""
    indication: str = ""
    description: str = ""
    source: str = ""
    control_arm: str = ""
    arm_descriptions: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    endpoint: dict = field(default_factory=dict)
    covariates_include: list[str] = field(default_factory=list)
    covariates_exclude: list[str] = field(default_factory=list)


@dataclass
class Trial:
    """A loaded trial. Frames hold observed data only; `warnings` says what was left out.

    - `subjects`: ADSL, one row per USUBJID, with the resolved arm in `ARM`.
    - `bds`: BDS frames by dataset name (e.g. "advs"), observed records only (no DTYPE rows,
      numeric AVAL), with the subject's `ARM`.
    - `tte`: ADTTE (USUBJID, PARAMCD, AVAL days, CNSR) or None; `ae`: ADAE or None.
    """

    name: str
    subjects: pd.DataFrame
    bds: dict[str, pd.DataFrame]
    tte: pd.DataFrame | None
    ae: pd.DataFrame | None
    meta: TrialMeta
    content_hash: str
    warnings: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    # ----- basic facts -------------------------------------------------------------------
    @property
    def title(self) -> str:
        return self.meta.title or self.name

    @cached_property
    def arms(self) -> list[str]:
        """Arms with the control arm first, then in order of size."""
        counts = self.subjects["ARM"].value_counts()
        arms = list(counts.index)
        control = self.control_arm
        if control in arms:
            arms.remove(control)
            arms.insert(0, control)
        return arms

    @cached_property
    def control_arm(self) -> str:
        """The control arm: trial.toml's `control_arm`, else the arm named like a placebo."""
        arms = list(self.subjects["ARM"].dropna().unique())
        if self.meta.control_arm in arms:
            return self.meta.control_arm
        for pattern in ("placebo", "plazebo", "control", "usual", "standard", "sham", "vehicle"):
            for arm in arms:
                if pattern in _plain(arm):
                    return arm
        return min(arms) if arms else ""

    def arm_counts(self) -> dict[str, int]:
        counts = self.subjects["ARM"].value_counts()
        return {arm: int(counts[arm]) for arm in self.arms}

    @cached_property
    def covariates(self) -> dict[str, str]:
        """Baseline covariates of ADSL: name -> 'continuous' or 'categorical'."""
        return _covariate_kinds(self.subjects, self.meta)

    @cached_property
    def records(self) -> pd.DataFrame:
        """All BDS records in one frame with a DATASET column."""
        frames = [df.assign(DATASET=name) for name, df in self.bds.items()]
        if not frames:
            return pd.DataFrame(columns=["USUBJID", "PARAMCD", "AVAL", "ADY", "AVISITN", "AVISIT",
                                         "ABLFL", "ARM", "DATASET"])
        return pd.concat(frames, ignore_index=True)

    @property
    def parameter_units(self) -> dict[str, str]:
        """PARAMCD -> unit ("" where none is known), for tables that print a unit per row."""
        return {p: i.unit for p, i in self.parameters.items()}

    @cached_property
    def parameters(self) -> dict[str, Parameter]:
        """Parameters in dataset order, with labels, units and follow-up availability."""
        out: dict[str, Parameter] = {}
        post = self.visit_values
        for name, df in self.bds.items():
            for paramcd, grp in df.groupby("PARAMCD", sort=False):
                label = self.meta.labels.get(paramcd)
                if not label and "PARAM" in grp and grp["PARAM"].notna().any():
                    label = str(grp["PARAM"].dropna().iloc[0])
                unit = self.meta.units.get(paramcd, "")
                if not unit and "AVALU" in grp and grp["AVALU"].notna().any():
                    unit = str(grp["AVALU"].dropna().iloc[0])
                if not unit and label:
                    match = re.search(r"\(([^()]+)\)\s*$", label)
                    unit = match.group(1) if match else ""
                out[paramcd] = Parameter(
                    paramcd=paramcd, label=label or paramcd, unit=unit, dataset=name,
                    n_records=len(grp), n_subjects=int(grp["USUBJID"].nunique()),
                    has_followup=bool((post["PARAMCD"] == paramcd).any()),
                )
        return out

    @property
    def longitudinal_parameters(self) -> list[str]:
        """Parameters with scheduled post-baseline visits (the ones twins are generated for)."""
        return [p for p, info in self.parameters.items() if info.has_followup]

    @cached_property
    def tte_parameters(self) -> list[str]:
        if self.tte is None:
            return []
        return list(dict.fromkeys(self.tte["PARAMCD"]))

    def tte_label(self, paramcd: str) -> str:
        if self.tte is not None and "PARAM" in self.tte:
            labels = self.tte.loc[self.tte["PARAMCD"] == paramcd, "PARAM"].dropna()
            if len(labels):
                return str(labels.iloc[0])
        return paramcd

    # ----- baseline and scheduled follow-up --------------------------------------------
    @cached_property
    def baseline_long(self) -> pd.DataFrame:
        """Baseline value per subject and parameter: ABLFL='Y' records (mean if several time
        points), else the last record with ADY <= 1. Columns USUBJID, PARAMCD, AVAL, ADY."""
        recs = self.records
        if recs.empty:
            return pd.DataFrame(columns=["USUBJID", "PARAMCD", "AVAL", "ADY"])
        flagged = recs[recs["ABLFL"].astype(str).str.upper().eq("Y")]
        by_flag = flagged.groupby(["USUBJID", "PARAMCD"], as_index=False).agg(
            AVAL=("AVAL", "mean"), ADY=("ADY", "min"))
        have = set(zip(by_flag["USUBJID"], by_flag["PARAMCD"]))
        early = recs[recs["ADY"].le(1)]
        if len(early):
            early = early[[k not in have for k in zip(early["USUBJID"], early["PARAMCD"])]]
        if len(early):
            last_day = early.groupby(["USUBJID", "PARAMCD"])["ADY"].transform("max")
            early = early[early["ADY"].eq(last_day)]
            by_day = early.groupby(["USUBJID", "PARAMCD"], as_index=False).agg(
                AVAL=("AVAL", "mean"), ADY=("ADY", "max"))
            by_flag = pd.concat([by_flag, by_day], ignore_index=True)
        return by_flag.sort_values(["USUBJID", "PARAMCD"]).reset_index(drop=True)

    @cached_property
    def baseline(self) -> pd.DataFrame:
        """Baseline values wide: index USUBJID (all subjects), one column per parameter."""
        wide = self.baseline_long.pivot(index="USUBJID", columns="PARAMCD", values="AVAL")
        wide = wide.reindex(index=self.subjects["USUBJID"], columns=list(self.parameters))
        wide.columns.name = None
        return wide

    @cached_property
    def visit_values(self) -> pd.DataFrame:
        """Observed values at scheduled post-baseline visits, one row per subject x parameter x
        visit (the mean over the visit's records, e.g. several time points).
        Columns USUBJID, PARAMCD, AVISITN, AVISIT, ADY, AVAL, ARM."""
        recs = self.records
        cols = ["USUBJID", "PARAMCD", "AVISITN", "AVISIT", "ADY", "AVAL", "ARM"]
        if recs.empty or recs["AVISITN"].isna().all():
            return pd.DataFrame(columns=cols)
        sched = recs[recs["AVISITN"].notna() & ~recs["ABLFL"].astype(str).str.upper().eq("Y")]
        sched = sched[~sched["AVISIT"].fillna("").astype(str).str.contains(_UNSCHEDULED_VISIT)]
        base_visit = recs[recs["ABLFL"].astype(str).str.upper().eq("Y")].groupby("PARAMCD")["AVISITN"].max()
        if len(base_visit):
            cutoff = sched["PARAMCD"].map(base_visit)
            sched = sched[cutoff.isna() | (sched["AVISITN"] > cutoff)]
        if "ADY" in sched and sched["ADY"].notna().any():
            sched = sched[~(sched["ADY"] <= 1) | sched["ADY"].isna()]
        if sched.empty:
            return pd.DataFrame(columns=cols)
        out = sched.groupby(["USUBJID", "PARAMCD", "AVISITN"], as_index=False).agg(
            AVISIT=("AVISIT", "first"), ADY=("ADY", "median"), AVAL=("AVAL", "mean"))
        out["ARM"] = out["USUBJID"].map(self.subjects.set_index("USUBJID")["ARM"])
        return out[cols].sort_values(["USUBJID", "PARAMCD", "AVISITN"]).reset_index(drop=True)

    def schedule(self, paramcd: str) -> list[Visit]:
        """Scheduled post-baseline visits of a parameter with their nominal day and size."""
        vv = self.visit_values[self.visit_values["PARAMCD"] == paramcd]
        visits = []
        for avisitn, grp in vv.groupby("AVISITN"):
            label = grp["AVISIT"].dropna()
            days = grp["ADY"].dropna()            # none in a BDS with AVISITN but no ADY
            day = days.median() if len(days) else float("nan")
            visits.append(Visit(float(avisitn), str(label.iloc[0]) if len(label) else f"Visit {avisitn:g}",
                                float(day) if pd.notna(day) else float("nan"),
                                int(grp["USUBJID"].nunique())))
        return visits

    # ----- derived trials ---------------------------------------------------------------
    def subset(self, usubjids, name: str | None = None) -> Trial:
        """The same trial restricted to some subjects (data of others dropped)."""
        keep = set(usubjids)
        subjects = self.subjects[self.subjects["USUBJID"].isin(keep)].reset_index(drop=True)
        bds = {k: v[v["USUBJID"].isin(keep)].reset_index(drop=True) for k, v in self.bds.items()}
        tte = None if self.tte is None else self.tte[self.tte["USUBJID"].isin(keep)].reset_index(drop=True)
        ae = None if self.ae is None else self.ae[self.ae["USUBJID"].isin(keep)].reset_index(drop=True)
        digest = hashlib.sha256((self.content_hash + "|" + "|".join(sorted(keep))).encode()).hexdigest()
        return Trial(name or self.name, subjects, bds, tte, ae, self.meta, digest, list(self.warnings),
                     dict(self.labels))

    def baseline_only(self) -> Trial:
        """The trial with every post-baseline record removed: what a query patient offers.
        Built once per trial (a loaded trial is not changed), and a baseline-only trial is its
        own: a generator reads its sources through this on every `generate` call, and the
        effects' refits call it hundreds of times on the same sources."""
        made = self.__dict__.get("_baseline_only")
        if made is not None:
            return made
        base_keys = set(zip(self.baseline_long["USUBJID"], self.baseline_long["PARAMCD"],
                            self.baseline_long["ADY"]))
        bds = {}
        for name, df in self.bds.items():
            flag = df["ABLFL"].astype(str).str.upper().eq("Y")
            keep = flag | pd.Series([k in base_keys for k in zip(df["USUBJID"], df["PARAMCD"], df["ADY"])],
                                    index=df.index, dtype=bool)
            keep &= ~(df["ADY"] > 1)
            bds[name] = df[keep].reset_index(drop=True)
        made = Trial(self.name, self.subjects.copy(), bds, None, None, self.meta,
                     hashlib.sha256((self.content_hash + "|baseline").encode()).hexdigest(),
                     list(self.warnings), dict(self.labels))
        made.__dict__["_baseline_only"] = made
        self.__dict__["_baseline_only"] = made
        return made

    # ----- summary ----------------------------------------------------------------------
    def summary(self) -> dict:
        """The facts `twinarm inspect --json` prints and the sidebar shows."""
        params = self.parameters
        return {
            "name": self.name,
            "title": self.title,
            "subjects": len(self.subjects),
            "arms": self.arm_counts(),
            "control_arm": self.control_arm,
            "covariates": self.covariates,
            "parameters": list(params),
            "parameter_details": {
                p: {"label": i.label, "unit": i.unit, "dataset": i.dataset, "records": i.n_records,
                    "subjects": i.n_subjects, "followup": i.has_followup}
                for p, i in params.items()
            },
            "visits": {p: [{"avisitn": v.avisitn, "avisit": v.avisit, "ady": None if np.isnan(v.ady) else v.ady,
                            "subjects": v.n_subjects} for v in self.schedule(p)]
                       for p in self.longitudinal_parameters},
            "tte_parameters": self.tte_parameters,
            "tte_events": {p: int((self.tte[(self.tte["PARAMCD"] == p)]["CNSR"] == 0).sum())
                           for p in self.tte_parameters},
            "adverse_events": 0 if self.ae is None else len(self.ae),
            "datasets": list(self.bds),
            "content_hash": self.content_hash,
            "warnings": list(self.warnings),
        }


def _covariate_kinds(subjects: pd.DataFrame, meta: TrialMeta) -> dict[str, str]:
    kinds: dict[str, str] = {}
    text_cols = {c for c in subjects.columns if subjects[c].dtype == object}
    for col in subjects.columns:
        if col in meta.covariates_exclude:
            continue
        forced = col in meta.covariates_include
        series = subjects[col]
        if not forced:
            if col in _ID_COLUMNS or col == "ARM_ORIG" or _NOT_BASELINE.match(col):
                continue
            if pd.api.types.is_datetime64_any_dtype(series) or _DATE_NAME.match(col) and not col.endswith("FL"):
                continue
            if series.nunique(dropna=True) <= 1:
                continue
            # numeric code of a text variable (AGEGR1N beside AGEGR1, RACEN beside RACE)
            if col.endswith("N") and col[:-1] in text_cols:
                continue
            if col.endswith("U") and col[:-1] in subjects.columns:
                continue
        if pd.api.types.is_bool_dtype(series):
            kinds[col] = "categorical"
        elif pd.api.types.is_numeric_dtype(series) and not col.endswith("FL"):
            kinds[col] = "continuous"
        else:
            if not forced and series.nunique(dropna=True) > _MAX_CATEGORY_LEVELS:
                continue
            kinds[col] = "categorical"
    return kinds


def _plain(text) -> str:
    """Lower case without accents: "Placébo" reads as a placebo arm."""
    return "".join(c for c in unicodedata.normalize("NFKD", str(text).lower()) if not unicodedata.combining(c))
