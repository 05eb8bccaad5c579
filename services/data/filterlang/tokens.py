"""Tokens of the filter language, its limits, and its one error type."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
