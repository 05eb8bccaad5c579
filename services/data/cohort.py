"""Cohorts: a selection of subjects of a trial by arm, eligibility-style filters and an expression.

A `CohortSpec` says which subjects to keep; it is plain data (JSON-able through `to_dict` /
`from_dict`) so it can be saved, shared and applied again to the same or another trial.
`apply_cohort(trial, spec)` validates it against the trial and returns a `Cohort`.

Filters act on the **cohort frame** (`services.data.cohort_frame`): ADSL (one row per subject, in ADSL order)
joined with each parameter's baseline value as a column named by its PARAMCD, so that
"BILI between 1 and 5" works like "AGE >= 50". A PARAMCD that is already an ADSL column name
becomes `<PARAMCD>_BL`.

Rules, as a trial statistician would expect:

- `arms`: empty means every arm.
- `ranges`: both ends included; `None` leaves an end open; a subject whose value is missing
  is excluded (it cannot be shown to meet the criterion). Ranges apply to numeric columns.
- `categories`: the subject's value must be one of the listed values; `MISSING_LEVEL`
  ("(missing)") selects subjects whose value is missing. An empty list means no restriction.
- `expression`: the filter language of `services.data.filterlang`.
- All criteria are combined with "and".
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from services.data import filterlang
from services.data.cohort_frame import (
    baseline_column_names,
    cohort_frame,
    is_few_levels_numeric,
    variable_labels,
)
from services.data.filterlang import FilterError
from services.data.table1 import observed_levels, ordered_levels
from services.data.trial import Trial

MISSING_LEVEL = "(missing)"
POPULATION_FLAGS = ("SAFFL", "ITTFL", "FASFL", "MITTFL", "EFFFL", "RANDFL", "PPROTFL", "ENRLFL")
_SPEC_KEYS = {"name", "arms", "ranges", "categories", "expression", "version"}


class CohortError(ValueError):
    """The cohort spec does not fit the trial; `messages` lists every problem in plain words."""

    def __init__(self, messages: list[str] | str):
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        super().__init__("\n".join(self.messages))


def _plain(value):
    """A JSON-able Python scalar (numpy numbers become int/float, NaN becomes None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _bound(value, column: str, which: str):
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(str(value).strip())
        except ValueError:
            raise CohortError(f"range of {column}: the {which} bound {value!r} is not a number") from None
    if math.isnan(value):
        return None
    if math.isinf(value):
        raise CohortError(f"range of {column}: the {which} bound must be a finite number (or empty)")
    return value


@dataclass
class CohortSpec:
    """Which subjects form the cohort. Empty spec = every subject of the trial."""

    arms: list[str] = field(default_factory=list)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    categories: dict[str, list] = field(default_factory=dict)
    expression: str = ""
    name: str = ""

    def __post_init__(self):
        if isinstance(self.arms, str):
            self.arms = [self.arms]
        self.arms = [str(a) for a in (self.arms or [])]
        ranges = {}
        for col, pair in (self.ranges or {}).items():
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise CohortError(f"range of {col}: expected [low, high] (use null for an open end), got {pair!r}")
            ranges[str(col)] = (_bound(pair[0], col, "lower"), _bound(pair[1], col, "upper"))
        self.ranges = ranges
        cats = {}
        for col, values in (self.categories or {}).items():
            if isinstance(values, (str, int, float)):
                values = [values]
            if not isinstance(values, (list, tuple, set)):
                raise CohortError(f"categories of {col}: expected a list of values, got {values!r}")
            cats[str(col)] = [MISSING_LEVEL if _plain(v) is None else _plain(v) for v in values]
        self.categories = cats
        self.expression = "" if self.expression is None else str(self.expression)
        self.name = "" if self.name is None else str(self.name)

    # ----- serialization -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "arms": list(self.arms),
            "ranges": {c: [lo, hi] for c, (lo, hi) in self.ranges.items()},
            "categories": {c: list(v) for c, v in self.categories.items()},
            "expression": self.expression,
        }

    @classmethod
    def from_dict(cls, data: dict) -> CohortSpec:
        if not isinstance(data, dict):
            raise CohortError(f"a cohort spec is a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - _SPEC_KEYS)
        if unknown:
            raise CohortError(f"unknown key{'s' if len(unknown) > 1 else ''} in cohort spec: "
                              f"{', '.join(unknown)} (expected {', '.join(sorted(_SPEC_KEYS - {'version'}))})")
        for key, kind in (("ranges", dict), ("categories", dict), ("arms", (list, tuple))):
            if data.get(key) is not None and not isinstance(data[key], kind):
                raise CohortError(f"cohort spec: '{key}' must be a "
                                  f"{'list' if key == 'arms' else 'mapping of column to values'}")
        return cls(arms=list(data.get("arms") or []), ranges=dict(data.get("ranges") or {}),
                   categories=dict(data.get("categories") or {}), expression=data.get("expression") or "",
                   name=data.get("name") or "")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> CohortSpec:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CohortError(f"the cohort spec is not valid JSON ({exc})") from None
        return cls.from_dict(data)

    @property
    def is_empty(self) -> bool:
        return not (self.arms or self.ranges or any(self.categories.values()) or self.expression.strip())

    def criteria(self) -> list[str]:
        """The spec's criteria in plain words, one per filter, in the order they are applied."""
        out = []
        if self.arms:
            out.append("arm: " + ", ".join(self.arms))
        for col, (lo, hi) in self.ranges.items():
            if lo is None and hi is None:
                out.append(f"{col} not missing")
            elif lo is None:
                out.append(f"{col} ≤ {_num(hi)}")
            elif hi is None:
                out.append(f"{col} ≥ {_num(lo)}")
            else:
                out.append(f"{col} {_num(lo)} to {_num(hi)}")
        for col, values in self.categories.items():
            if values:
                out.append(f"{col}: " + ", ".join(str(v) for v in values))
        if self.expression.strip():
            out.append(self.expression.strip())
        return out

    def summary(self) -> str:
        crit = self.criteria()
        return "; ".join(crit) if crit else "all subjects"


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


@dataclass
class AttritionStep:
    criterion: str
    remaining: int
    excluded: int


@dataclass
class Cohort:
    """A spec applied to a trial.

    - `usubjids`: the selected subjects in ADSL order; `n` their number.
    - `by_arm`: subjects per arm (the spec's arms, or every arm of the trial), control arm first.
    - `frame`: the cohort frame (ADSL + baseline values) of the selected subjects.
    - `mask`: boolean Series over the whole cohort frame (index USUBJID): who is in.
    - `attrition`: subjects left after each criterion, in order (a CONSORT-style funnel).
    """

    spec: CohortSpec
    usubjids: list[str]
    n: int
    by_arm: dict[str, int]
    frame: pd.DataFrame
    mask: pd.Series
    attrition: list[AttritionStep]

    def attrition_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"criterion": s.criterion, "remaining": s.remaining, "excluded": s.excluded}
                             for s in self.attrition])


# ======================================================================================
# filterable columns (the cohort frame: services.data.cohort_frame)
# ======================================================================================

@dataclass(frozen=True)
class FilterColumn:
    """A column the UI offers as a filter."""

    name: str
    label: str
    kind: str                  # "continuous" or "categorical"
    source: str                # "covariate", "baseline", "population flag"
    low: float | None = None   # continuous: observed range
    high: float | None = None
    integer: bool = False      # continuous: every value is a whole number
    levels: tuple = ()         # categorical: observed values (MISSING_LEVEL last if any missing)
    n_missing: int = 0


def _plain_number(x: float) -> str:
    """Three significant digits, never in e-notation (46500, not 4.65e+04)."""
    return np.format_float_positional(float(f"{x:.3g}"), trim="-")


def expression_example(filters: list[FilterColumn]) -> str:
    """An example filter expression in the loaded trial's own columns (a fixed "BILI is not
    missing" example failed on every trial but the PBC demo: a browser review)."""
    parts = []
    cont = next((f for f in filters if f.kind == "continuous" and f.low is not None and f.high is not None), None)
    if cont is not None:
        lo, hi = (cont.low + (cont.high - cont.low) / 4, cont.high - (cont.high - cont.low) / 4)
        parts.append(f"{cont.name} between {_plain_number(lo)} and {_plain_number(hi)}")
    cat = next((f for f in filters if f.kind == "categorical" and f.levels and f.levels[0] != MISSING_LEVEL), None)
    if cat is not None:
        level = cat.levels[0]
        parts.append(f'{cat.name} == "{level}"' if isinstance(level, str) else f"{cat.name} == {level}")
    missing = next((f for f in filters if f.source == "baseline"), cont)
    if missing is not None:
        parts.append(f"{missing.name} is not missing")
    return "e.g. " + " and ".join(parts) if parts else ""


def describe_filters(trial: Trial) -> list[FilterColumn]:
    """Filterable columns for the UI: baseline covariates, baseline parameters, then population
    flags; each with its kind and observed range or levels."""
    frame = cohort_frame(trial)
    labels = variable_labels(trial)
    entries: list[tuple[str, str, str]] = [(c, k, "covariate") for c, k in trial.covariates.items()]
    entries += [(c, "continuous", "baseline") for c in baseline_column_names(trial).values()]
    seen = {c for c, _, _ in entries}
    entries += [(c, "categorical", "population flag") for c in POPULATION_FLAGS
                if c in frame.columns and c not in seen and frame[c].nunique(dropna=True) > 1]
    out = []
    for col, kind, source in entries:
        series = frame[col]
        n_missing = int(series.isna().sum())
        if kind == "continuous" and is_few_levels_numeric(series) and source == "covariate":
            kind = "categorical"
        if kind == "continuous":
            values = pd.to_numeric(series, errors="coerce").dropna()
            if values.empty:
                continue
            out.append(FilterColumn(col, labels.get(col, col), kind, source, float(values.min()),
                                    float(values.max()), bool(np.all(np.mod(values, 1) == 0)),
                                    n_missing=n_missing))
        else:
            levels = [_plain(v) for v in ordered_levels(frame, col)]
            if n_missing:
                levels.append(MISSING_LEVEL)
            out.append(FilterColumn(col, labels.get(col, col), "categorical", source,
                                    levels=tuple(levels), n_missing=n_missing))
    return out


def _levels(series: pd.Series) -> list:
    values = series.dropna()
    if isinstance(series.dtype, pd.CategoricalDtype):
        return [_plain(v) for v in series.cat.categories if v in set(values)]
    uniq = values.unique()
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return [_plain(v) for v in sorted(uniq)]
    return [_plain(v) for v in observed_levels(values)]


# ======================================================================================
# applying a spec
# ======================================================================================

def _resolve(name: str, columns, what: str, errors: list[str]) -> str | None:
    try:
        return filterlang.resolve_column(name, columns)
    except FilterError as exc:
        errors.append(f"{what}: {exc}")
        return None


def _range_mask(series: pd.Series, lo, hi) -> pd.Series:
    values = pd.to_numeric(series, errors="coerce")
    keep = values.notna()
    if lo is not None:
        keep &= values >= lo
    if hi is not None:
        keep &= values <= hi
    return keep.fillna(False).astype(bool)


def _category_mask(series: pd.Series, values: list) -> pd.Series:
    want_missing = MISSING_LEVEL in values
    wanted = [v for v in values if v != MISSING_LEVEL]
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        keep = pd.to_numeric(series, errors="coerce").isin([float(v) for v in wanted])
    else:
        keep = series.map(lambda v: False if pd.isna(v) else str(v) in {str(w) for w in wanted})
    keep = keep.astype(bool)
    if want_missing:
        keep |= series.isna()
    return keep


def _check_category_values(col: str, series: pd.Series, values: list, errors: list[str]) -> None:
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    present = {str(v) for v in series.dropna().unique()}
    if numeric:
        present_num = set(pd.to_numeric(series, errors="coerce").dropna().unique())
    for value in values:
        if value == MISSING_LEVEL:
            continue
        if numeric:
            try:
                ok = float(value) in present_num
            except (TypeError, ValueError):
                errors.append(f"categories of {col}: {value!r} is not a number, but {col} holds numbers")
                continue
        else:
            ok = str(value) in present
        if not ok:
            shown = ", ".join(str(v) for v in _levels(series)[:10])
            close = difflib.get_close_matches(str(value), sorted(present), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            errors.append(f"categories of {col}: value {value!r} does not occur (values: {shown}){hint}")


def validate_spec(trial: Trial, spec: CohortSpec, frame: pd.DataFrame | None = None) -> list[str]:
    """Every problem of the spec against the trial, in plain words (empty list = valid)."""
    frame = cohort_frame(trial) if frame is None else frame
    errors: list[str] = []
    for arm in spec.arms:
        if arm not in trial.arms:
            close = difflib.get_close_matches(arm, trial.arms, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            errors.append(f"unknown arm '{arm}' (arms of {trial.title}: {', '.join(trial.arms)}){hint}")
    for name, (lo, hi) in spec.ranges.items():
        col = _resolve(name, frame.columns, "range", errors)
        if col is None:
            continue
        series = frame[col]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            errors.append(f"range of {col}: {col} is not numeric; filter it by categories instead")
        elif lo is not None and hi is not None and lo > hi:
            errors.append(f"range of {col}: the lower bound {_num(lo)} is above the upper bound {_num(hi)}")
    for name, values in spec.categories.items():
        col = _resolve(name, frame.columns, "categories", errors)
        if col is not None:
            _check_category_values(col, frame[col], values, errors)
    if spec.expression.strip():
        message = filterlang.check(spec.expression, frame)
        if message:
            errors.append(f"expression: {message}")
    return errors


def check_expression(trial: Trial, expression: str) -> str | None:
    """The expression's error message against the trial's cohort frame, or None if valid."""
    return filterlang.check(expression, cohort_frame(trial))


def apply_cohort(trial: Trial, spec: CohortSpec) -> Cohort:
    """Select the subjects of `trial` that meet `spec`. Raises CohortError listing every problem."""
    frame = cohort_frame(trial)
    errors = validate_spec(trial, spec, frame)
    if errors:
        raise CohortError(errors)

    keep = pd.Series(True, index=frame.index)
    steps = [AttritionStep("all subjects", len(frame), 0)]

    def step(label: str, mask: pd.Series) -> None:
        nonlocal keep
        before = int(keep.sum())
        keep &= mask.to_numpy(dtype=bool)
        after = int(keep.sum())
        steps.append(AttritionStep(label, after, before - after))

    if spec.arms:
        step("arm: " + ", ".join(spec.arms), frame["ARM"].isin(spec.arms))
    for name, (lo, hi) in spec.ranges.items():
        col = filterlang.resolve_column(name, frame.columns)
        single = CohortSpec(ranges={col: (lo, hi)}).criteria()[0]
        step(single, _range_mask(frame[col], lo, hi))
    for name, values in spec.categories.items():
        if not values:
            continue
        col = filterlang.resolve_column(name, frame.columns)
        step(f"{col}: " + ", ".join(str(v) for v in values), _category_mask(frame[col], values))
    if spec.expression.strip():
        step(spec.expression.strip(), filterlang.evaluate(spec.expression, frame))

    selected = frame[keep.to_numpy()].reset_index(drop=True)
    selected.attrs = dict(frame.attrs)
    arms = spec.arms or trial.arms
    arms = [a for a in trial.arms if a in arms]
    counts = selected["ARM"].value_counts()
    by_arm = {arm: int(counts.get(arm, 0)) for arm in arms}
    mask = pd.Series(keep.to_numpy(dtype=bool), index=frame["USUBJID"].to_numpy(), name="in_cohort")
    return Cohort(spec=spec, usubjids=selected["USUBJID"].astype(str).tolist(), n=len(selected),
                  by_arm=by_arm, frame=selected, mask=mask, attrition=steps)
