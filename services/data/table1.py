"""Table 1: baseline characteristics by group, as in the first table of a clinical paper.

`table1(frame, by="ARM")` returns the display table: one block per variable, columns = each
group plus "Overall" (and "SMD" when asked), rows:

- "N": the group sizes;
- continuous variable: "mean (SD)", "median [Q1, Q3]", "missing n";
- categorical variable: one "n (%)" row per level (percent of the non-missing values of the
  group), and "missing n" when any value is missing.

`table1_long` gives the same numbers unformatted, one row per variable x level x group, for
CSV export and checks.

Conventions: SD with n-1 denominator; quartiles by linear interpolation (R type 7, pandas'
default); SMD between two groups = difference of means over the pooled SD sqrt((s1² + s2²)/2)
for continuous variables, and the multi-level SMD of Yang & Dalton (2012) for categorical ones
(which reduces to (p1 - p2)/sqrt((p1(1-p1) + p2(1-p2))/2) for two levels); it is written on a
block's first row. Means, SDs, medians and quartiles get 1 decimal, 2 when the variable's values
are below 10 and 3 (up to 4) below 1 (`decimals_for`); percents 1 decimal.

Levels of a categorical variable are ordered by its numeric code when the frame has one
(AGEGR1 by AGEGR1N, as ADaM does), else naturally (numbers) or alphabetically (text).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

OVERALL = "Overall"
SMD_COLUMN = "SMD"
DASH = "–"
_SKIP = {"USUBJID", "SUBJID", "STUDYID", "SRCSUBJID", "TWINIDX", "SITEID", "INVID", "INVNAM"}


def infer_kinds(frame: pd.DataFrame, by: str | None = None, few_levels: int = 5) -> dict[str, str]:
    """Variables of a frame and their kind when none are given: numbers with more than
    `few_levels` distinct values are continuous; text with at most 30 levels, flags and
    few-level numbers are categorical; identifiers and dates are left out."""
    kinds: dict[str, str] = {}
    for col in frame.columns:
        if col == by or str(col).upper() in _SKIP:
            continue
        series = frame[col]
        if pd.api.types.is_datetime64_any_dtype(series):
            continue
        nunique = series.nunique(dropna=True)
        if nunique == 0:
            continue
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            kinds[col] = "continuous" if nunique > few_levels else "categorical"
        elif nunique <= 30:
            kinds[col] = "categorical"
    return kinds


def _resolve_variables(frame: pd.DataFrame, by: str | None, variables, kinds) -> dict[str, str]:
    default = dict(frame.attrs.get("table1_kinds") or {}) or infer_kinds(frame, by)
    if variables is None:
        variables = [v for v in default if v in frame.columns]
    else:
        missing = [v for v in variables if v not in frame.columns]
        if missing:
            raise ValueError(f"Table 1: unknown variable{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(map(str, missing))}")
    kinds = dict(kinds or {})
    out: dict[str, str] = {}
    for var in variables:
        if var == by:
            continue
        kind = kinds.get(var) or default.get(var) or infer_kinds(frame[[var]]).get(var, "categorical")
        if kind not in ("continuous", "categorical"):
            raise ValueError(f"Table 1: kind of {var} must be 'continuous' or 'categorical', not {kind!r}")
        out[var] = kind
    return out


def _groups(frame: pd.DataFrame, by: str | None, groups) -> list:
    if by is None:
        return []
    if groups is not None:
        return list(groups)
    series = frame[by]
    if isinstance(series.dtype, pd.CategoricalDtype):
        return list(series.cat.categories)
    return sorted(series.dropna().unique(), key=str)


def ordered_levels(frame: pd.DataFrame, var: str) -> list:
    """Levels of `var`, ordered by the ADaM numeric code column `<var>N` when it maps 1:1."""
    levels = observed_levels(frame[var])
    code = f"{var}N"
    if code in frame.columns and pd.api.types.is_numeric_dtype(frame[code]) and len(levels) > 1:
        pairs = frame[[var, code]].dropna().drop_duplicates()
        if pairs[var].is_unique and pairs[code].is_unique and set(pairs[var]) == set(levels):
            order = dict(zip(pairs[var], pairs[code]))
            return sorted(levels, key=lambda lv: order[lv])
    return levels


def observed_levels(series: pd.Series) -> list:
    """The observed values of a variable in display order (categories, numbers, thresholds, text)."""
    values = series.dropna()
    if isinstance(series.dtype, pd.CategoricalDtype):
        return [c for c in series.cat.categories if c in set(values)]
    uniq = list(values.unique())
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return sorted(uniq)
    return sorted(uniq, key=level_key) if all(_FIRST_NUMBER.search(str(v)) for v in uniq) else sorted(uniq, key=str)


_FIRST_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def level_key(level) -> tuple:
    """Order of grouped-value labels by their first threshold: "<25", "25-<30", ">=30" (not the
    alphabet's "25-<30", "<25", ">=30": a browser review), "<65", "65-80", ">80"."""
    text = str(level).strip()
    number = float(_FIRST_NUMBER.search(text).group())
    return number, 0 if text.startswith("<") else 2 if text.startswith(">") else 1, text


def decimals_for(values: pd.Series) -> int:
    """Decimals for means, SDs and quantiles: 1, or 2 when the values are below 10, or 3 and
    up to 4 when they are below 1 (scale = the largest of |mean|, |median| and SD)."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return 1
    scale = max(abs(float(values.mean())), abs(float(values.median())),
                float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    if scale >= 10 or scale == 0:
        return 1
    if scale >= 1:
        return 2
    return int(min(4, max(3, 2 - math.floor(math.log10(scale)))))


def _level_text(level) -> str:
    if isinstance(level, (float, np.floating)) and float(level).is_integer():
        return str(int(level))
    return str(level)


def _continuous_stats(values: pd.Series) -> dict:
    values = pd.to_numeric(values, errors="coerce")
    obs = values.dropna()
    n = len(obs)
    return {
        "n": n,
        "missing": int(values.isna().sum()),
        "mean": float(obs.mean()) if n else np.nan,
        "sd": float(obs.std(ddof=1)) if n > 1 else np.nan,
        "median": float(obs.median()) if n else np.nan,
        "q1": float(obs.quantile(0.25)) if n else np.nan,
        "q3": float(obs.quantile(0.75)) if n else np.nan,
        "min": float(obs.min()) if n else np.nan,
        "max": float(obs.max()) if n else np.nan,
    }


def _fmt(value: float, digits: int) -> str:
    return DASH if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def smd_continuous(a: pd.Series, b: pd.Series) -> float:
    """Standardized mean difference (mean a - mean b) / sqrt((var a + var b) / 2)."""
    a = pd.to_numeric(a, errors="coerce").dropna()
    b = pd.to_numeric(b, errors="coerce").dropna()
    if len(a) < 2 or len(b) < 2:
        return np.nan
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    if pooled == 0:
        return 0.0 if a.mean() == b.mean() else np.nan
    return float((a.mean() - b.mean()) / pooled)


def smd_categorical(a: pd.Series, b: pd.Series, levels: list | None = None) -> float:
    """Multi-level SMD of Yang & Dalton (2012) between two groups (non-missing values); >= 0."""
    a, b = a.dropna(), b.dropna()
    if len(a) == 0 or len(b) == 0:
        return np.nan
    levels = levels if levels is not None else observed_levels(pd.concat([a, b]))
    if len(levels) < 2:
        return 0.0
    p1 = np.array([(a == lv).mean() for lv in levels[1:]], dtype=float)
    p2 = np.array([(b == lv).mean() for lv in levels[1:]], dtype=float)

    def cov(p):
        m = -np.outer(p, p)
        np.fill_diagonal(m, p * (1 - p))
        return m

    s = (cov(p1) + cov(p2)) / 2
    diff = p1 - p2
    if not np.any(diff):
        return 0.0
    value = float(diff @ np.linalg.pinv(s) @ diff)
    return math.sqrt(max(value, 0.0))


def _block_rows(frame, by, groups, var, kind, smd_pair):
    """(long rows, display rows) for one variable."""
    series_all = frame[var]
    parts = [(g, series_all[frame[by] == g]) for g in groups] if by is not None else []
    parts.append((OVERALL, series_all))
    long_rows, display = [], []
    smd = np.nan
    if smd_pair is not None:
        a = series_all[frame[by] == smd_pair[0]]
        b = series_all[frame[by] == smd_pair[1]]
    if kind == "continuous":
        digits = decimals_for(series_all)
        stats = {g: _continuous_stats(s) for g, s in parts}
        for g, st in stats.items():
            long_rows.append({"variable": var, "kind": kind, "level": "", "group": g,
                              "group_n": st["n"] + st["missing"], "n": st["n"], "percent": np.nan, **st})
        rows = {
            "mean (SD)": {g: f"{_fmt(st['mean'], digits)} ({_fmt(st['sd'], digits)})" if st["n"] else DASH
                          for g, st in stats.items()},
            "median [Q1, Q3]": {g: f"{_fmt(st['median'], digits)} [{_fmt(st['q1'], digits)}, "
                                   f"{_fmt(st['q3'], digits)}]" if st["n"] else DASH
                                for g, st in stats.items()},
            "missing n": {g: str(st["missing"]) for g, st in stats.items()},
        }
        if smd_pair is not None:
            smd = smd_continuous(a, b)
    else:
        levels = ordered_levels(frame, var)
        rows = {}
        for g, s in parts:
            obs = s.dropna()
            for lv in levels:
                count = int((obs == lv).sum())
                pct = 100.0 * count / len(obs) if len(obs) else np.nan
                long_rows.append({"variable": var, "kind": kind, "level": _level_text(lv), "group": g,
                                  "group_n": len(s), "n": count, "percent": pct,
                                  "missing": int(s.isna().sum())})
                rows.setdefault(_level_text(lv), {})[g] = (f"{count} ({pct:.1f}%)" if len(obs) else
                                                          (f"{count}" if len(s) else DASH))
        if series_all.isna().any():
            rows["missing n"] = {g: str(int(s.isna().sum())) for g, s in parts}
        if smd_pair is not None:
            smd = smd_categorical(a, b, levels)
    for i, (stat, values) in enumerate(rows.items()):
        row = {"Variable": var, "Statistic": stat, **values}
        if smd_pair is not None:
            row[SMD_COLUMN] = (_fmt(smd, 3) if i == 0 else "")
        display.append(row)
    return long_rows, display


def _prepare(frame, by, groups, variables, kinds, smd):
    if by is not None and by not in frame.columns:
        raise ValueError(f"Table 1: no column {by!r} to group by")
    resolved = _resolve_variables(frame, by, variables, kinds)
    group_list = _groups(frame, by, groups)
    smd_pair = None
    if smd:
        if by is None:
            raise ValueError("Table 1: the SMD needs groups (by=...)")
        smd_pair = tuple(smd) if not isinstance(smd, bool) else tuple(group_list[:2])
        if len(smd_pair) != 2:
            raise ValueError("Table 1: the SMD compares exactly two groups")
        unknown = [g for g in smd_pair if g not in set(frame[by].dropna().unique()) and g not in group_list]
        if unknown:
            raise ValueError(f"Table 1: SMD group {unknown[0]!r} is not a value of {by}")
    return resolved, group_list, smd_pair


def table1(frame: pd.DataFrame, by: str | None = "ARM", variables: list[str] | None = None,
           kinds: dict[str, str] | None = None, *, groups: list | None = None,
           smd: tuple | bool | None = None) -> pd.DataFrame:
    """The display Table 1 (all cells text). Columns: Variable, Statistic, each group, Overall,
    and SMD when `smd` is a pair of groups (or True for the first two groups).

    `variables` default to `frame.attrs["table1_kinds"]` (set by `services.data.cohort_frame.cohort_frame`:
    the trial's covariates then baseline parameters), else to every usable column.
    `kinds` overrides a variable's kind ("continuous" / "categorical").
    """
    resolved, group_list, smd_pair = _prepare(frame, by, groups, variables, kinds, smd)
    columns = [str(g) for g in group_list] + [OVERALL]
    header = {"Variable": "N", "Statistic": "",
              **{str(g): str(int((frame[by] == g).sum())) for g in group_list}, OVERALL: str(len(frame))}
    if smd_pair is not None:
        header[SMD_COLUMN] = ""
    rows = [header]
    for var, kind in resolved.items():
        _, display = _block_rows(frame, by, group_list, var, kind, smd_pair)
        for row in display:
            rows.append({str(k): v for k, v in row.items()})
    out = pd.DataFrame(rows, columns=["Variable", "Statistic", *columns] +
                       ([SMD_COLUMN] if smd_pair is not None else []))
    return out.fillna(DASH)


def table1_long(frame: pd.DataFrame, by: str | None = "ARM", variables: list[str] | None = None,
                kinds: dict[str, str] | None = None, *, groups: list | None = None,
                smd: tuple | bool | None = None) -> pd.DataFrame:
    """Tidy Table 1: one row per variable x level x group with unformatted numbers.

    Columns: variable, kind, level ("" for continuous), group (each group and "Overall"),
    group_n, n (non-missing for continuous, count of the level for categorical), percent,
    missing, mean, sd, median, q1, q3, min, max, and smd (same value on every row of a
    variable) when asked.
    """
    resolved, group_list, smd_pair = _prepare(frame, by, groups, variables, kinds, smd)
    rows = [{"variable": "N", "kind": "", "level": "", "group": str(g), "group_n": int((frame[by] == g).sum()),
             "n": int((frame[by] == g).sum())} for g in group_list]
    rows.append({"variable": "N", "kind": "", "level": "", "group": OVERALL, "group_n": len(frame),
                 "n": len(frame)})
    for var, kind in resolved.items():
        long_rows, _ = _block_rows(frame, by, group_list, var, kind, None)
        if smd_pair is not None:
            a = frame.loc[frame[by] == smd_pair[0], var]
            b = frame.loc[frame[by] == smd_pair[1], var]
            value = smd_continuous(a, b) if kind == "continuous" else smd_categorical(
                a, b, ordered_levels(frame, var))
            for r in long_rows:
                r["smd"] = value
        for r in long_rows:
            r["group"] = str(r["group"])
        rows.extend(long_rows)
    cols = ["variable", "kind", "level", "group", "group_n", "n", "percent", "missing", "mean", "sd",
            "median", "q1", "q3", "min", "max"] + (["smd"] if smd_pair is not None else [])
    return pd.DataFrame(rows).reindex(columns=cols)
