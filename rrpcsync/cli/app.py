"""The `rrpcsync` group, global options, and the output helpers every command uses."""

from __future__ import annotations

import importlib
import os
import sys
from typing import NamedTuple, TextIO

import click

from rrpcsync import __version__

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Each command's module under rrpcsync/cli/, imported only when the command is looked up, so
# `rrpcsync --version` (and every command) loads only what it uses. A new command is a new
# module plus a line here; tests/test_cli_lazy.py checks this table against the modules.
COMMAND_MODULES = {
    "apply": "apply",
    "demo": "tools",
    "drift": "plan",
    "emulator": "tools",
    "login": "login",
    "plan": "plan",
    "report": "report",
    "schema": "validate",
    "state": "state",
    "validate": "validate",
}


class LazyGroup(click.Group):
    """A click group whose commands register themselves (`@cli.command`) when their module is
    imported, which happens the first time click looks the command up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(f"rrpcsync.cli.{COMMAND_MODULES[cmd_name]}")
        return self.commands.get(cmd_name)


class Settings(NamedTuple):  # not a dataclass: `--version` imports neither it nor logging
    verbose: int
    quiet: bool
    color: bool


def settings() -> Settings:
    ctx = click.get_current_context()
    found = ctx.find_object(Settings)
    return found if found is not None else Settings(0, False, False)


def use_color(choice: str, stream: TextIO) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty()


def out(line: str = "") -> None:
    click.echo(line)


def info(line: str) -> None:
    """Progress and diagnostics go to stderr; `-q` silences them."""
    if not settings().quiet:
        click.echo(line, err=True)


def examples(*lines: str) -> str:
    body = "\n".join(f"  {line}" for line in lines)
    return f"\b\nExamples:\n{body}"


@click.group(
    cls=LazyGroup,
    context_settings=CONTEXT,
    epilog=examples(
        "rrpcsync validate configs/",
        "rrpcsync plan configs/ --state rrpcsync.state.json",
        "RRPCSYNC_ACCESS_TOKEN=... rrpcsync apply configs/ --auto-approve",
        "rrpcsync demo",
    ),
)
@click.version_option(__version__, "--version", prog_name="rrpcsync")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors.")
@click.option(
    "--color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Colour output; auto follows the terminal and NO_COLOR.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, color: str) -> None:
    """Declarative config sync for device fleets on Tencent Cloud IoT Explorer (RRPC).

    Manifests (YAML) declare the payload each device must have; `plan` shows what
    would be sent, `apply` sends it and records each device's reply in the state file.
    """
    import logging

    ctx.obj = Settings(verbose, quiet and not verbose, use_color(color, sys.stdout))
    # -v: rrpcsync's own debug log (requests with the token as ***); -vv: libraries' too
    root_level = logging.DEBUG if verbose >= 2 else logging.WARNING
    logging.basicConfig(level=root_level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("rrpcsync").setLevel(logging.DEBUG if verbose else logging.WARNING)
