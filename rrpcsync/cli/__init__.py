"""The command line: click commands that parse, call the library API (rrpcsync.api), render
and exit. One module per command; `main` is the console script."""

from __future__ import annotations

import sys
from typing import NoReturn

from rrpcsync.cli import apply, login, plan, state, tools, validate
from rrpcsync.cli.app import cli
from rrpcsync.cli.boundary import run_guarded

__all__ = ["apply", "cli", "login", "main", "plan", "run_guarded", "state", "tools", "validate"]


def main() -> NoReturn:
    sys.exit(run_guarded(cli))
