"""The `twinarm` command line; `main` is the console script (see `services.cli.main`)."""

from services.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
