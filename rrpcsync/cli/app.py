"""The `rrpcsync` group, global options, and the output helpers every command uses."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

import click

from rrpcsync import __version__
from rrpcsync.cli.terminal import safe_text

if TYPE_CHECKING:
    import logging

if TYPE_CHECKING:
    from rrpcsync.cli.settings_file import ConfigFile

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Each command's module under rrpcsync/cli/, imported only when the command is looked up, so
# `rrpcsync --version` (and every command) loads only what it uses. A new command is a new
# module plus a line here; tests/test_cli_lazy.py checks this table against the modules.
COMMAND_MODULES = {
    "apply": "apply",
    "completion": "completion",
    "config": "config",
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


GLOBAL_FLAGS = re.compile(r"^(-v+|--verbose|-q|--quiet|--color=.*|--env=.*)$")
GLOBAL_WITH_VALUE = ("--color", "--env")


def global_options_first(args: Sequence[str]) -> list[str]:
    """`rrpcsync plan -v --color always` as `rrpcsync -v --color always plan`: the global
    options are taken from anywhere before `--`."""
    moved: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest += args[index:]
            break
        if GLOBAL_FLAGS.match(arg):
            moved.append(arg)
        elif arg in GLOBAL_WITH_VALUE and index + 1 < len(args):
            moved += [arg, args[index + 1]]
            index += 1
        else:
            rest.append(arg)
        index += 1
    return moved + rest


class FullSummaries(click.Group):
    """A group whose help lists each command's whole summary."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command's whole summary, wrapped, not cut off at the terminal's width."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class LazyGroup(FullSummaries):
    """A click group whose commands register themselves (`@cli.command`) when their module is
    imported, which happens the first time click looks the command up. Global options are
    accepted after the command too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, global_options_first(args))

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
    config: ConfigFile | None = None  # rrpcsync.toml, when one was found


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


def emit(line: str = "", err: bool = False, color: bool | None = None) -> None:
    """Print a line of output: every print of rrpcsync goes through here (or `out`/`info`),
    so control characters and workflow commands in data never reach the terminal raw."""
    click.echo(safe_text(line), err=err, color=color)


def out(line: str = "") -> None:
    # color=True: click would strip the escapes on a pipe; `--color always` asked for them
    emit(line, color=True if settings().color else None)


def info(line: str) -> None:
    """Progress and diagnostics go to stderr; `-q` silences them."""
    if not settings().quiet:
        emit(line, err=True)


LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def log_formatter(verbose: int) -> logging.Formatter:
    """Log lines as safe as output lines; tracebacks (asyncio's among them) only with -v."""
    import logging

    class SafeFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            if record.exc_info and not verbose:
                exc = record.exc_info[1]
                record = logging.makeLogRecord(
                    {**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None}
                )
                if exc is not None:
                    record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
                    record.args = None
            return safe_text(super().format(record))

    return SafeFormatter(LOG_FORMAT)


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
@click.option(
    "--env",
    "env_name",
    envvar="RRPCSYNC_ENV",
    metavar="NAME",
    help="Use the [env.NAME] section of rrpcsync.toml (env RRPCSYNC_ENV).",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool, color: str, env_name: str | None) -> None:
    """Declarative config sync for device fleets on Tencent Cloud IoT Explorer (RRPC).

    Manifests (YAML) declare the payload each device must have; `plan` shows what
    would be sent, `apply` sends it and records each device's reply in the state file.
    """
    import logging

    config = _project_defaults(ctx, env_name)
    ctx.obj = Settings(verbose, quiet and not verbose, use_color(color, sys.stdout), config)
    # -v: rrpcsync's own debug log (requests with the token as ***); -vv: libraries' too
    root_level = logging.DEBUG if verbose >= 2 else logging.WARNING
    logging.basicConfig(level=root_level, format=LOG_FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(log_formatter(verbose))
    logging.getLogger("rrpcsync").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _project_defaults(ctx: click.Context, env_name: str | None) -> ConfigFile:
    """rrpcsync.toml as click's default_map of the command about to run, so precedence is
    click's one rule: flag > env var > config file > default (docs/config.md)."""
    from pathlib import Path

    from rrpcsync.cli.settings_file import default_map, find_config, load_config

    config = load_config(find_config(Path.cwd()), env_name)
    name = ctx.invoked_subcommand
    group = ctx.command
    if not name or not config.values or not isinstance(group, click.Group):
        return config
    command = group.get_command(ctx, name)
    if command is not None:
        ctx.default_map = {name: default_map(config, command)}
    return config


def all_commands(ctx: click.Context) -> list[Any]:
    """Every command, its module imported (`rrpcsync config` looks at every option)."""
    group = ctx.find_root().command
    assert isinstance(group, click.Group)
    return [group.get_command(ctx, name) for name in group.list_commands(ctx)]
