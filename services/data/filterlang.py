"""A small, safe filter language for eligibility-style criteria on a subject-level frame.

Examples::

    AGE >= 50 and SEX == "F"
    ARM in ("Placebo", "Xanomeline Low Dose") and not (BMIBL > 30)
    AGE between 50 and 80 and BILI is not missing
    RACE not in ('ASIAN') or TRTSDT >= "2013-01-01"

The text is never handed to Python (`eval`, `exec`, `DataFrame.query`): a tokenizer and a
recursive-descent parser build a small AST, which is checked against the frame's columns and
types, then evaluated with vectorised pandas operations.

Grammar (keywords are case-insensitive; so are column names)::

    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | primary
    primary    := "(" expr ")" | predicate
    predicate  := operand ( ("==" | "=" | "!=" | "<>" | "<" | "<=" | ">" | ">=") operand
                          | ["not"] "in" "(" literal ("," literal)* [","] ")"
                          | ["not"] "between" literal "and" literal
                          | "is" ["not"] ("missing" | "null") )
    operand    := column | literal
    column     := NAME | `any name in backticks`
    literal    := NUMBER | "-" NUMBER | 'text' | "text" | true | false

Semantics, as a trial statistician would expect:

- A missing value never satisfies a criterion: `AGE > 50`, `AGE <= 50`, `SEX != "M"` and
  `not (AGE > 50)` are all false for a subject whose AGE is missing (three-valued logic, as in
  SQL). Only `is missing` selects such subjects.
- `between` includes both ends.
- Text is compared exactly (case matters). On a categorical column (at most
  `LEVEL_CHECK_MAX` distinct values) a value that does not occur is rejected, since a typo
  would otherwise silently empty the cohort.
- Ordering (`<`, `between`) needs numbers or dates; dates are given as text ("2013-01-31").

Every problem raises `FilterError` whose message says what is wrong and where (1-based
character position in the expression), in plain words.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_LENGTH = 5000
MAX_DEPTH = 50
LEVEL_CHECK_MAX = 50

KEYWORDS = {"and", "or", "not", "in", "between", "is", "missing", "null", "true", "false"}
_COMPARE_OPS = {"==": "==", "=": "==", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">",
                ">=": ">="}


class FilterError(ValueError):
    """The filter expression is not valid; `position` is the 1-based character position (or None)."""

    def __init__(self, message: str, position: int | None = None):
        self.message = message
        self.position = position
        super().__init__(message)


# ======================================================================================
# tokens
# ======================================================================================

@dataclass(frozen=True)
class Token:
    kind: str       # NAME, QNAME (backticked), NUMBER, STRING, OP, LPAR, RPAR, COMMA, KW, END
    value: object
    pos: int        # 1-based
    text: str


_NUMBER = re.compile(r"(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HINTS = {
    ";": "a filter is a single expression; statements separated by ';' are not allowed",
    ".": "attribute access with '.' is not allowed; use a column name such as AGE",
    "[": "indexing with '[' is not allowed; use a column name, and in (...) for lists",
    "]": "indexing with ']' is not allowed",
    "{": "'{' is not allowed",
    "}": "'}' is not allowed",
    "&": "use the word 'and' instead of '&'",
    "|": "use the word 'or' instead of '|'",
    "~": "use the word 'not' instead of '~'",
    "!": "use '!=' for 'not equal', or the word 'not'",
    "+": "arithmetic is not supported; compare a column with a value",
    "*": "arithmetic is not supported; compare a column with a value",
    "/": "arithmetic is not supported; compare a column with a value",
    "%": "arithmetic is not supported; compare a column with a value",
    "@": "'@' (variable references) is not allowed",
    "#": "comments are not allowed",
    "\\": "'\\' is only allowed inside quoted text",
    ":": "':' is not allowed",
}


def tokenize(text: str) -> list[Token]:
    """Split an expression into tokens; raises FilterError on any character outside the language."""
    if len(text) > MAX_LENGTH:
        raise FilterError(f"the expression is too long ({len(text)} characters; at most {MAX_LENGTH})")
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        pos = i + 1
        if ch.isspace():
            i += 1
            continue
        if ch in "\"'":
            j, chars = i + 1, []
            while j < n and text[j] != ch:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                chars.append(text[j])
                j += 1
            if j >= n:
                raise FilterError(f"text starting at position {pos} is not closed: add the closing {ch}", pos)
            tokens.append(Token("STRING", "".join(chars), pos, text[i:j + 1]))
            i = j + 1
            continue
        if ch == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise FilterError(f"column name in backticks at position {pos} is not closed: add the closing `",
                                  pos)
            name = text[i + 1:j]
            if not name.strip():
                raise FilterError(f"empty column name `` at position {pos}", pos)
            tokens.append(Token("QNAME", name, pos, text[i:j + 1]))
            i = j + 1
            continue
        m = _NUMBER.match(text, i)
        if m and (ch.isdigit() or (ch == "." and m.end() > i + 1)):
            end = m.end()
            if end < n and (text[end].isalpha() or text[end] == "_"):
                word = _NAME.match(text, end)
                bad = text[i:word.end() if word else end + 1]
                raise FilterError(f"'{bad}' at position {pos} is neither a number nor a column name "
                                  "(column names start with a letter)", pos)
            raw = m.group(0)
            if len(raw) > 40:
                raise FilterError(f"the number at position {pos} is too long ({len(raw)} digits)", pos)
            value: float | int = float(raw) if any(c in raw for c in ".eE") else int(raw)
            tokens.append(Token("NUMBER", value, pos, raw))
            i = end
            continue
        m = _NAME.match(text, i)
        if m:
            word = m.group(0)
            low = word.lower()
            if low in KEYWORDS:
                tokens.append(Token("KW", low, pos, word))
            else:
                tokens.append(Token("NAME", word, pos, word))
            i = m.end()
            continue
        two = text[i:i + 2]
        if two in ("==", "!=", "<>", "<=", ">="):
            tokens.append(Token("OP", _COMPARE_OPS[two], pos, two))
            i += 2
            continue
        if two in ("&&", "||"):
            word = "and" if two == "&&" else "or"
            raise FilterError(f"'{two}' at position {pos} is not allowed: use the word '{word}'", pos)
        if ch in "=<>":
            tokens.append(Token("OP", _COMPARE_OPS[ch], pos, ch))
            i += 1
            continue
        if ch == "(":
            tokens.append(Token("LPAR", ch, pos, ch))
            i += 1
            continue
        if ch == ")":
            tokens.append(Token("RPAR", ch, pos, ch))
            i += 1
            continue
        if ch == ",":
            tokens.append(Token("COMMA", ch, pos, ch))
            i += 1
            continue
        if ch == "-":
            tokens.append(Token("MINUS", ch, pos, ch))
            i += 1
            continue
        hint = _HINTS.get(ch, "it is not part of the filter language")
        raise FilterError(f"unexpected character '{ch}' at position {pos}: {hint}", pos)
    tokens.append(Token("END", None, n + 1, ""))
    return tokens


# ======================================================================================
# AST
# ======================================================================================

@dataclass(frozen=True)
class Column:
    name: str
    pos: int


@dataclass(frozen=True)
class Literal:
    value: object   # str, int, float or bool
    pos: int
    text: str


Operand = Column | Literal


@dataclass(frozen=True)
class Compare:
    left: Operand
    op: str
    right: Operand
    pos: int


@dataclass(frozen=True)
class InList:
    column: Column
    values: tuple[Literal, ...]
    negate: bool
    pos: int


@dataclass(frozen=True)
class Between:
    column: Column
    low: Literal
    high: Literal
    negate: bool
    pos: int


@dataclass(frozen=True)
class IsMissing:
    column: Column
    negate: bool
    pos: int


@dataclass(frozen=True)
class Not:
    operand: Node
    pos: int


@dataclass(frozen=True)
class And:
    left: Node
    right: Node
    pos: int


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node
    pos: int


Node = Compare | InList | Between | IsMissing | Not | And | Or


# ======================================================================================
# parser
# ======================================================================================

def _describe(tok: Token) -> str:
    if tok.kind == "END":
        return "the end of the expression"
    return f"'{tok.text}' at position {tok.pos}"


class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek(self, k: int = 1) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def is_kw(self, word: str, tok: Token | None = None) -> bool:
        tok = tok or self.tok
        return tok.kind == "KW" and tok.value == word

    def expect_kw(self, word: str, context: str) -> Token:
        if not self.is_kw(word):
            raise FilterError(f"expected '{word}' {context}, found {_describe(self.tok)}", self.tok.pos)
        return self.advance()

    def parse(self) -> Node:
        node = self.or_expr()
        if self.tok.kind != "END":
            tok = self.tok
            if tok.kind == "RPAR":
                raise FilterError(f"unmatched ')' at position {tok.pos}", tok.pos)
            raise FilterError(f"unexpected {_describe(tok)}: join criteria with 'and' or 'or'", tok.pos)
        return node

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self.is_kw("or"):
            tok = self.advance()
            node = Or(node, self.and_expr(), tok.pos)
        return node

    def and_expr(self) -> Node:
        node = self.not_expr()
        while self.is_kw("and"):
            tok = self.advance()
            node = And(node, self.not_expr(), tok.pos)
        return node

    def not_expr(self) -> Node:
        if self.is_kw("not"):
            tok = self.advance()
            return Not(self._nested(self.not_expr), tok.pos)
        return self.primary()

    def _nested(self, fn):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"the expression is nested too deeply (more than {MAX_DEPTH} levels) "
                              f"near position {self.tok.pos}", self.tok.pos)
        try:
            return fn()
        finally:
            self.depth -= 1

    def primary(self) -> Node:
        tok = self.tok
        if tok.kind == "LPAR":
            self.advance()
            if self.tok.kind == "RPAR":
                raise FilterError(f"empty parentheses at position {tok.pos}", tok.pos)
            node = self._nested(self.or_expr)
            if self.tok.kind != "RPAR":
                raise FilterError(f"the '(' at position {tok.pos} is not closed: expected ')' but found "
                                  f"{_describe(self.tok)}", self.tok.pos)
            self.advance()
            return node
        if tok.kind == "END":
            raise FilterError("the expression ends too early: a criterion such as AGE >= 50 is missing",
                              tok.pos)
        return self.predicate()

    def operand(self, what: str) -> Operand:
        tok = self.tok
        if tok.kind in ("NAME", "QNAME"):
            self.advance()
            if self.tok.kind == "LPAR":
                raise FilterError(f"function calls are not allowed: '{tok.text}(' at position {tok.pos}",
                                  tok.pos)
            return Column(str(tok.value), tok.pos)
        if tok.kind in ("NUMBER", "STRING", "MINUS") or self.is_kw("true") or self.is_kw("false"):
            return self.literal(what)
        if tok.kind == "KW":
            raise FilterError(f"expected {what} but found the keyword '{tok.text}' at position {tok.pos} "
                              "(put a column of that name in backticks)", tok.pos)
        raise FilterError(f"expected {what} but found {_describe(tok)}", tok.pos)

    def literal(self, what: str) -> Literal:
        tok = self.tok
        if tok.kind == "MINUS":
            self.advance()
            num = self.tok
            if num.kind != "NUMBER":
                raise FilterError(f"'-' at position {tok.pos} must be followed by a number", tok.pos)
            self.advance()
            return Literal(-num.value, tok.pos, "-" + num.text)
        if tok.kind in ("NUMBER", "STRING"):
            self.advance()
            return Literal(tok.value, tok.pos, tok.text)
        if self.is_kw("true") or self.is_kw("false"):
            self.advance()
            return Literal(tok.value == "true", tok.pos, tok.text)
        if tok.kind in ("NAME", "QNAME"):
            raise FilterError(f"expected {what} but found the column name '{tok.text}' at position {tok.pos} "
                              "(quote text values: \"...\")", tok.pos)
        raise FilterError(f"expected {what} but found {_describe(tok)}", tok.pos)

    def predicate(self) -> Node:
        start = self.tok
        left = self.operand("a column name or a value")
        tok = self.tok
        if tok.kind == "OP":
            self.advance()
            right = self.operand(f"a value or a column after '{tok.text}'")
            if isinstance(left, Literal) and isinstance(right, Literal):
                raise FilterError(f"the comparison at position {start.pos} compares two values; "
                                  "one side must be a column", start.pos)
            return Compare(left, tok.value, right, tok.pos)
        negate = False
        if self.is_kw("not") and (self.is_kw("in", self.peek()) or self.is_kw("between", self.peek())):
            self.advance()
            negate = True
        if self.is_kw("in"):
            kw = self.advance()
            column = self._column_operand(left, "in", kw)
            if self.tok.kind != "LPAR":
                raise FilterError(f"expected '(' after 'in' at position {kw.pos}, found {_describe(self.tok)}; "
                                  "write e.g. ARM in (\"Placebo\", \"Drug\")", self.tok.pos)
            self.advance()
            values = [self.literal("a value in the list")]
            while self.tok.kind == "COMMA":
                self.advance()
                if self.tok.kind == "RPAR":
                    break
                values.append(self.literal("a value in the list"))
            if self.tok.kind != "RPAR":
                raise FilterError(f"expected ',' or ')' in the list after 'in' at position {kw.pos}, found "
                                  f"{_describe(self.tok)}", self.tok.pos)
            self.advance()
            return InList(column, tuple(values), negate, kw.pos)
        if self.is_kw("between"):
            kw = self.advance()
            column = self._column_operand(left, "between", kw)
            low = self.literal("the lower bound after 'between'")
            self.expect_kw("and", f"between the two bounds of 'between' at position {kw.pos}")
            high = self.literal("the upper bound after 'between ... and'")
            return Between(column, low, high, negate, kw.pos)
        if self.is_kw("is"):
            kw = self.advance()
            column = self._column_operand(left, "is missing", kw)
            neg = False
            if self.is_kw("not"):
                self.advance()
                neg = True
            if not (self.is_kw("missing") or self.is_kw("null")):
                raise FilterError(f"expected 'missing' after 'is' at position {kw.pos}, found "
                                  f"{_describe(self.tok)}", self.tok.pos)
            self.advance()
            return IsMissing(column, neg, kw.pos)
        if isinstance(left, Column):
            if tok.kind == "END":
                raise FilterError(f"column '{left.name}' at position {left.pos} is not compared with anything: "
                                  "add e.g. == \"value\", > 50, in (...), between ... and ..., is missing",
                                  tok.pos)
            raise FilterError(f"expected a comparison (==, !=, <, <=, >, >=, in, between, is missing) after "
                              f"'{left.name}' at position {left.pos}, found {_describe(tok)}", tok.pos)
        raise FilterError(f"a value on its own at position {start.pos} is not a criterion; "
                          "compare a column with it, e.g. AGE >= 50", start.pos)

    @staticmethod
    def _column_operand(left: Operand, keyword: str, kw: Token) -> Column:
        if not isinstance(left, Column):
            raise FilterError(f"'{keyword}' at position {kw.pos} needs a column on its left, "
                              f"not the value {left.text}", left.pos)
        return left


def parse(text: str) -> Node | None:
    """Parse an expression into its AST; None for an empty expression (no restriction)."""
    if text is None or not str(text).strip():
        return None
    return _Parser(tokenize(str(text))).parse()


def columns_used(node: Node | None) -> list[str]:
    """Column names as written in the expression, in order of first use."""
    out: list[str] = []

    def walk(n):
        if isinstance(n, Column):
            out.append(n.name)
        elif isinstance(n, Compare):
            walk(n.left), walk(n.right)
        elif isinstance(n, (InList, Between, IsMissing)):
            walk(n.column)
        elif isinstance(n, Not):
            walk(n.operand)
        elif isinstance(n, (And, Or)):
            walk(n.left), walk(n.right)

    walk(node)
    return list(dict.fromkeys(out))


# ======================================================================================
# evaluation
# ======================================================================================

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
