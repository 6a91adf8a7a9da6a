"""The one place that turns exceptions into messages and exit codes (STYLE.md)."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import click

from rrpcsync.errors import ExitCode, RrpcsyncError


def fail(message: str, code: ExitCode) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(int(code))


def run_guarded(entry: click.Command, args: Sequence[str] | None = None) -> int:
    """Run a click command; every exception becomes a one-line message and an exit code."""
    given = args if args is not None else sys.argv[1:]
    verbose = any(
        arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}) for arg in given
    )
    try:
        returned = entry.main(args=args, prog_name="rrpcsync", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return int(ExitCode.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        return int(ExitCode.ERROR)  # usage errors are 1, never 2 (2 means "changes present")
    except RrpcsyncError as exc:
        click.echo(f"error: {exc}", err=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # an rrpcsync bug: short report, traceback only with -v
        click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
        if verbose:
            traceback.print_exc()
        else:
            click.echo("run again with -v for a traceback, and please report it", err=True)
        return int(ExitCode.ERROR)
    return returned if isinstance(returned, int) else int(ExitCode.OK)
