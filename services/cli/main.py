"""The `twinarm` command line (contract section 3), on the same services as the app.

Every command exits 0 on success; on bad input it prints one line `twinarm: error: ...` on
stderr and exits 2 (usage) or 1 (data). One module per command, each with `register(sub)`;
they share only `services.cli.errors` (no module imports this one).
"""

from __future__ import annotations

import argparse
import os
import select
import sys

from services import __version__
from services.cli import datasets, evaluate, export, generate, index
from services.cli.errors import CliError, fail

COMMANDS = (datasets, generate, evaluate, export, index)


class _Parser(argparse.ArgumentParser):
    """argparse with the contract's one-line usage error (`twinarm: error: ...`, exit 2) instead
    of its usage block and `twinarm export: error:`; the subcommands' parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        # no abbreviations: `--twins 3` was read as --twins-per-patient 3, so a script's typo
        # (or a future option sharing a prefix) changed what ran without a word (an outside review)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        sub = self.prog.removeprefix("twinarm").strip()
        hint = f"twinarm {sub} --help".replace("  ", " ")
        raise SystemExit(fail(f"{sub + ': ' if sub else ''}{message} (see `{hint}`)", 2))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="twinarm", description="Digital twins for clinical-trial design.")
    parser.add_argument("--version", action="version", version=f"twinarm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError as exc:
        # the reader of stdout left (`twinarm inspect --json | head`): stop quietly, as Unix tools
        # do, not with a traceback; stdout goes to devnull so the final flush cannot fail again.
        # A broken pipe elsewhere (a model server's socket) is an error to report.
        if not _stdout_gone():
            return fail(f"connection broken ({exc})")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _stdout_gone() -> bool:
    """stdout is a pipe whose reader has left (poll reports an error on it); True where that
    cannot be told, as the quiet exit is then the usual case."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):
        return True
