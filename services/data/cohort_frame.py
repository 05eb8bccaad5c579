"""The cohort frame: ADSL joined with each parameter's baseline as a column, the frame that
filters, Table 1 and the cohort charts read, with its variables' default Table 1 kinds and
display labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from services.data.trial import Trial

FEW_LEVELS = 5          # numeric covariates with at most this many distinct values are categorical


def baseline_column_names(trial: Trial) -> dict[str, str]:
    """PARAMCD -> its column in the cohort frame (PARAMCD, or PARAMCD_BL on a name clash)."""
    adsl = {c.upper() for c in trial.subjects.columns}
    return {p: (f"{p}_BL" if p.upper() in adsl else p) for p in trial.baseline.columns}


def cohort_frame(trial: Trial) -> pd.DataFrame:
    """ADSL (ADSL order, index = position) joined with baseline parameter values as columns."""
    subjects = trial.subjects.reset_index(drop=True)
    base = trial.baseline.rename(columns=baseline_column_names(trial))
    base = base.reindex(subjects["USUBJID"]).reset_index(drop=True)
    frame = pd.concat([subjects, base], axis=1)
    frame.attrs = {"table1_kinds": table1_kinds(trial)}
    return frame


def is_few_levels_numeric(series: pd.Series) -> bool:
    return (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
            and series.nunique(dropna=True) <= FEW_LEVELS)


def table1_kinds(trial: Trial) -> dict[str, str]:
    """Default Table 1 variables: covariates then baseline parameters -> continuous/categorical.
    Numeric covariates with at most FEW_LEVELS distinct values (0/1 codes, stage 1-4) are
    tabulated as categories."""
    kinds: dict[str, str] = {}
    for col, kind in trial.covariates.items():
        if kind == "continuous" and is_few_levels_numeric(trial.subjects[col]):
            kind = "categorical"
        kinds[col] = kind
    for col in baseline_column_names(trial).values():
        kinds[col] = "continuous"
    return kinds


def repeated_baselines(trial: Trial, min_share: float = 0.95) -> dict[str, str]:
    """Baseline parameter columns that repeat a continuous ADSL covariate, column -> covariate:
    both known for at least 10 subjects and within 0.5 % of each other for `min_share` of them
    (the CDISC pilot's vital-signs HEIGHT and WEIGHT are ADSL's HEIGHTBL and WEIGHTBL to
    rounding). Table 1 shows such a variable once by default; the same quantity twice read as
    two characteristics (an outside review)."""
    frame = cohort_frame(trial)
    covariates = [c for c, kind in trial.covariates.items()
                  if kind == "continuous" and pd.api.types.is_numeric_dtype(frame[c])]
    out: dict[str, str] = {}
    for col in baseline_column_names(trial).values():
        for cov in covariates:
            both = frame[[col, cov]].dropna().to_numpy(float)
            if len(both) < 10:
                continue
            close = np.abs(both[:, 0] - both[:, 1]) <= 0.005 * np.abs(both[:, 1]) + 1e-9
            if close.mean() >= min_share:
                out[col] = cov
                break
    return out


def _adsl_unit(trial: Trial, col: str) -> str | None:
    """The unit ADSL itself records for a variable: AGEU for AGE (CDISC), e.g. "YEARS"."""
    unit_col = {"AGE": "AGEU"}.get(col)
    if unit_col is None or unit_col not in trial.subjects.columns:
        return None
    units = trial.subjects[unit_col].dropna().astype(str).str.lower().unique()
    return units[0] if len(units) == 1 else None


def variable_labels(trial: Trial) -> dict[str, str]:
    """Display labels: ADSL variable labels, parameter labels with their unit."""
    labels: dict[str, str] = {}
    for col in trial.subjects.columns:
        label = trial.labels.get(col) or trial.meta.labels.get(col)
        unit = trial.meta.units.get(col) or _adsl_unit(trial, col)
        if label and unit and unit not in label:
            label = f"{label} ({unit})"
        if label:
            labels[col] = label
    for paramcd, col in baseline_column_names(trial).items():
        info = trial.parameters.get(paramcd)
        if info is None:
            continue
        label = info.label if info.label and info.label != paramcd else paramcd
        if info.unit and info.unit not in label:
            label = f"{label} ({info.unit})"
        labels[col] = f"{label}, baseline" if col != label else label
    return labels
