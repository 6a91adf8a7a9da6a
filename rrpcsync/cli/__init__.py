"""The command line: click commands that parse, call the library API, render and exit."""

from rrpcsync.cli.main import cli, main, run_guarded

__all__ = ["cli", "main", "run_guarded"]
