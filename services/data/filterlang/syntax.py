"""The filter language's syntax tree and its recursive-descent parser (grammar: see the
package docstring)."""

from __future__ import annotations

from dataclasses import dataclass

from services.data.filterlang.tokens import (
    MAX_DEPTH,
    FilterError,
    Token,
    tokenize,
)


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
