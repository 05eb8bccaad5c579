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

from services.data.filterlang.semantics import check, evaluate, filter_frame, resolve_column
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
    columns_used,
    parse,
)
from services.data.filterlang.tokens import (
    KEYWORDS,
    LEVEL_CHECK_MAX,
    MAX_DEPTH,
    MAX_LENGTH,
    FilterError,
    Token,
    tokenize,
)

__all__ = ["KEYWORDS", "LEVEL_CHECK_MAX", "MAX_DEPTH", "MAX_LENGTH", "And", "Between", "Column",
           "Compare", "FilterError", "InList", "IsMissing", "Literal", "Node", "Not", "Or", "Token",
           "check", "columns_used", "evaluate", "filter_frame", "parse", "resolve_column", "tokenize"]
