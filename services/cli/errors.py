"""The one error type of the command line: a user-facing message, printed as one line."""

from __future__ import annotations

import sys


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def fail(message: str, status: int = 1) -> int:
    """Print `twinarm: error: <first line>` on stderr and return the exit status."""
    first = " ".join(str(message).split("\n")[:1])
    more = str(message).count("\n")
    if more:
        first += f" (and {more} more problem{'s' if more > 1 else ''})"
    print(f"twinarm: error: {first}", file=sys.stderr)
    return status
