"""Checking a parsed filter against a frame's columns and types, and evaluating it with
vectorised pandas operations (three-valued logic: a missing value satisfies no criterion)."""

from __future__ import annotations

import difflib

import numpy as np
import pandas as pd

from services.data.filterlang.syntax import (
    And,
    Between,
    Column,
    Compare,
    InList,
    IsMissing,
    Literal,
    Node,
    Not,
    Or,
    parse,
)
from services.data.filterlang.tokens import LEVEL_CHECK_MAX, FilterError


def resolve_column(name: str, columns, pos: int | None = None) -> str:
    """The frame's column for a name written in any case; FilterError with a suggestion if none."""
    cols = [str(c) for c in columns]
    if name in cols:
        return name
    by_upper: dict[str, str] = {}
    for c in cols:
        by_upper.setdefault(c.upper(), c)
    if name.upper() in by_upper:
        return by_upper[name.upper()]
    where = f" at position {pos}" if pos else ""
    close = difflib.get_close_matches(name.upper(), list(by_upper), n=1, cutoff=0.6)
    hint = f" (did you mean {by_upper[close[0]]}?)" if close else ""
    raise FilterError(f"unknown column '{name}'{where}{hint}", pos)


class _Kind:
    NUMBER, TEXT, DATE, BOOL = "number", "text", "date", "yes/no"


def _kind(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return _Kind.BOOL
    if pd.api.types.is_datetime64_any_dtype(series):
        return _Kind.DATE
    if pd.api.types.is_numeric_dtype(series):
        return _Kind.NUMBER
    return _Kind.TEXT


def _literal_kind(lit: Literal) -> str:
    if isinstance(lit.value, bool):
        return _Kind.BOOL
    if isinstance(lit.value, (int, float)):
        return _Kind.NUMBER
    return _Kind.TEXT


def _levels_text(series: pd.Series, limit: int = 8) -> str:
    levels = sorted(map(str, series.dropna().unique()))
    shown = ", ".join(repr(v) for v in levels[:limit])
    return shown + (f", ... ({len(levels)} values)" if len(levels) > limit else "")


class _Evaluator:
    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.index = frame.index

    # --- helpers -------------------------------------------------------------------------
    def column(self, col: Column) -> tuple[str, pd.Series]:
        name = resolve_column(col.name, self.frame.columns, col.pos)
        series = self.frame[name]
        if isinstance(series, pd.DataFrame):
            series = series.iloc[:, 0]
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = series.astype(object)
        return name, series

    def value_for(self, name: str, series: pd.Series, lit: Literal, op_text: str, ordering: bool,
                  op_pos: int | None = None):
        """The literal converted to the column's type, or a FilterError in plain words."""
        ckind, lkind = _kind(series), _literal_kind(lit)
        if ckind == _Kind.NUMBER:
            if lkind == _Kind.NUMBER:
                return lit.value
            if lkind == _Kind.BOOL:
                return int(lit.value)
            raise FilterError(f"column {name} holds numbers, but {lit.text} at position {lit.pos} is text: "
                              "write the number without quotes", lit.pos)
        if ckind == _Kind.BOOL:
            if lkind == _Kind.BOOL:
                return lit.value
            if lkind == _Kind.NUMBER and lit.value in (0, 1):
                return bool(lit.value)
            raise FilterError(f"column {name} holds yes/no values; compare it with true or false "
                              f"(position {lit.pos})", lit.pos)
        if ckind == _Kind.DATE:
            if lkind != _Kind.TEXT:
                raise FilterError(f"column {name} holds dates; write the date as quoted text such as "
                                  f"\"2013-01-31\" (position {lit.pos})", lit.pos)
            try:
                return pd.Timestamp(lit.value)
            except (ValueError, TypeError):
                raise FilterError(f"{lit.text} at position {lit.pos} is not a date (column {name} holds dates; "
                                  "write e.g. \"2013-01-31\")", lit.pos) from None
        # text column
        if ordering:
            where = op_pos or lit.pos
            raise FilterError(f"'{op_text}' at position {where} needs numbers or dates, but column {name} "
                              f"holds text ({_levels_text(series)})", where)
        if lkind != _Kind.TEXT:
            example = series.dropna().astype(str)
            sample = f" such as \"{example.iloc[0]}\"" if len(example) else ""
            raise FilterError(f"cannot compare text column {name} with the number {lit.text} at position "
                              f"{lit.pos}: quote the value{sample}", lit.pos)
        levels = series.dropna().astype(str)
        distinct = set(levels.unique())
        if 0 < len(distinct) <= LEVEL_CHECK_MAX and lit.value not in distinct:
            close = [v for v in distinct if v.lower() == str(lit.value).lower()]
            close = close or difflib.get_close_matches(str(lit.value), list(distinct), n=1, cutoff=0.6)
            hint = f"; did you mean \"{close[0]}\"?" if close else ""
            raise FilterError(f"value {lit.text} at position {lit.pos} does not occur in column {name} "
                              f"(values: {_levels_text(series)}){hint}", lit.pos)
        return lit.value

    def typed(self, series: pd.Series) -> pd.Series:
        """The column ready for comparison: text as str (missing kept), numbers as float."""
        kind = _kind(series)
        if kind == _Kind.TEXT:
            return series.map(lambda v: v if pd.isna(v) else str(v))
        if kind == _Kind.NUMBER:
            return pd.to_numeric(series, errors="coerce").astype(float)
        return series

    def result(self, values, missing) -> pd.Series:
        out = pd.array(np.asarray(values, dtype=bool), dtype="boolean")
        out[np.asarray(missing, dtype=bool)] = pd.NA
        return pd.Series(out, index=self.index)

    # --- nodes ---------------------------------------------------------------------------
    def eval(self, node: Node) -> pd.Series:
        if isinstance(node, And):
            return self.eval(node.left) & self.eval(node.right)
        if isinstance(node, Or):
            return self.eval(node.left) | self.eval(node.right)
        if isinstance(node, Not):
            return ~self.eval(node.operand)
        if isinstance(node, IsMissing):
            _, series = self.column(node.column)
            miss = series.isna()
            if _kind(series) == _Kind.TEXT:
                miss |= series.astype(str).str.strip().eq("") & series.notna()
            return self.result(~miss if node.negate else miss, np.zeros(len(series), bool))
        if isinstance(node, InList):
            name, series = self.column(node.column)
            if _kind(series) == _Kind.DATE:
                raise FilterError(f"'in' at position {node.pos} does not apply to the date column {name}; "
                                  "use between", node.pos)
            values = [self.value_for(name, series, lit, "in", False) for lit in node.values]
            typed = self.typed(series)
            hit = typed.isin(values).to_numpy()
            return self.result(~hit if node.negate else hit, series.isna())
        if isinstance(node, Between):
            name, series = self.column(node.column)
            if _kind(series) in (_Kind.TEXT, _Kind.BOOL):
                raise FilterError(f"'between' at position {node.pos} needs numbers or dates, but column {name} "
                                  f"holds {'text' if _kind(series) == _Kind.TEXT else 'yes/no values'}"
                                  f" ({_levels_text(series)})", node.pos)
            low = self.value_for(name, series, node.low, "between", True)
            high = self.value_for(name, series, node.high, "between", True)
            if low > high:
                raise FilterError(f"'between' at position {node.pos}: the lower bound {node.low.text} is above "
                                  f"the upper bound {node.high.text}", node.pos)
            typed = self.typed(series)
            hit = (typed >= low) & (typed <= high)
            hit = hit.fillna(False).to_numpy(dtype=bool)
            return self.result(~hit if node.negate else hit, series.isna())
        if isinstance(node, Compare):
            return self.compare(node)
        raise FilterError("unsupported expression")  # pragma: no cover - parser builds no other node

    def compare(self, node: Compare) -> pd.Series:
        op = node.op
        ordering = op in ("<", "<=", ">", ">=")
        left, right = node.left, node.right
        if isinstance(left, Literal):          # 50 <= AGE  ->  AGE >= 50
            left, right = right, left
            op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
        name, series = self.column(left)
        if isinstance(right, Column):
            rname, rseries = self.column(right)
            lk, rk = _kind(series), _kind(rseries)
            if lk != rk:
                raise FilterError(f"cannot compare column {name} ({lk}) with column {rname} ({rk}) at position "
                                  f"{node.pos}", node.pos)
            if ordering and lk in (_Kind.TEXT, _Kind.BOOL):
                raise FilterError(f"'{op}' at position {node.pos} needs numbers or dates, but columns {name} "
                                  f"and {rname} hold {lk}", node.pos)
            a, b = self.typed(series), self.typed(rseries)
            missing = series.isna().to_numpy() | rseries.isna().to_numpy()
        else:
            if ordering and _kind(series) == _Kind.BOOL:
                raise FilterError(f"'{op}' at position {node.pos} needs numbers or dates, but column {name} "
                                  "holds yes/no values", node.pos)
            a = self.typed(series)
            b = self.value_for(name, series, right, node.op, ordering, node.pos)
            missing = series.isna().to_numpy()
        with np.errstate(invalid="ignore"):
            if op == "==":
                hit = a == b
            elif op == "!=":
                hit = a != b
            elif op == "<":
                hit = a < b
            elif op == "<=":
                hit = a <= b
            elif op == ">":
                hit = a > b
            else:
                hit = a >= b
        hit = pd.Series(hit, index=self.index).fillna(False).to_numpy(dtype=bool)
        return self.result(hit, missing)


def evaluate(expression: str | Node | None, frame: pd.DataFrame) -> pd.Series:
    """Boolean mask (index of `frame`) of the rows that satisfy the expression; missing counts as
    not satisfied. An empty expression selects every row."""
    node = parse(expression) if isinstance(expression, str) or expression is None else expression
    if node is None:
        return pd.Series(True, index=frame.index, dtype=bool)
    mask = _Evaluator(frame).eval(node)
    return mask.fillna(False).astype(bool)


def check(expression: str, frame: pd.DataFrame) -> str | None:
    """The error message of an expression against a frame, or None when it is valid."""
    try:
        evaluate(expression, frame)
    except FilterError as exc:
        return str(exc)
    return None


def filter_frame(frame: pd.DataFrame, expression: str) -> pd.DataFrame:
    """The rows of `frame` that satisfy the expression."""
    return frame[evaluate(expression, frame).to_numpy()]
