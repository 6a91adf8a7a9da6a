"""The command line: click commands that parse, call the library API (rrpcsync.api), render
and exit. One module per command, imported when the command runs (`COMMAND_MODULES` in
app.py); `main` is the console script."""

from __future__ import annotations

import sys
from typing import NoReturn

from rrpcsync.cli.app import cli
from rrpcsync.cli.boundary import run_guarded

__all__ = ["cli", "main", "run_guarded"]


def main() -> NoReturn:
    sys.exit(run_guarded(cli))
