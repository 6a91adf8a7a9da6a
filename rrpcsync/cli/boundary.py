"""The one place that turns exceptions into messages and exit codes (STYLE.md)."""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

import click

from rrpcsync.cli.terminal import one_line
from rrpcsync.errors import ExitCode, RrpcsyncError


def fail(message: str, code: ExitCode) -> NoReturn:
    click.echo(f"error: {one_line(message)}", err=True)
    raise SystemExit(int(code))


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the sending loop (which handles it itself): stop like Ctrl-C."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises like Ctrl-C, so planning, a lock wait or drift probes exit 130 with a
    message rather than die with -15 (apply's sending loop installs its own handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _interrupted(cause: BaseException | None) -> int:
    how = "SIGTERM" if isinstance(cause, Terminated) else "Ctrl-C"
    click.echo(f"interrupted ({how}): stopped; nothing more is sent", err=True)
    return int(ExitCode.INTERRUPTED)


def run_guarded(entry: click.Command, args: Sequence[str] | None = None) -> int:
    """Run a click command; every exception becomes a one-line message and an exit code."""
    given = args if args is not None else sys.argv[1:]
    verbose = any(
        arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}) for arg in given
    )
    try:
        with sigterm_interrupts():
            returned = entry.main(args=args, prog_name="rrpcsync", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    except click.exceptions.Abort as exc:  # click's form of KeyboardInterrupt
        return _interrupted(exc.__cause__)
    except click.ClickException as exc:
        exc.show()
        return int(ExitCode.ERROR)  # usage errors are 1, never 2 (2 means "changes present")
    except RrpcsyncError as exc:
        click.echo(f"error: {one_line(str(exc))}", err=True)
        return int(exc.exit_code)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except Exception as exc:  # an rrpcsync bug: short report, traceback only with -v
        click.echo(f"internal error: {type(exc).__name__}: {one_line(str(exc))}", err=True)
        if verbose:
            traceback.print_exc()
        else:
            click.echo("run again with -v for a traceback, and please report it", err=True)
        return int(ExitCode.ERROR)
    return returned if isinstance(returned, int) else int(ExitCode.OK)
