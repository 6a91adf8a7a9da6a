"""`rrpcsync config`: every setting of rrpcsync.toml, its effective value and where it came from."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import click

from rrpcsync.cli.app import all_commands, cli, examples, info, out, settings
from rrpcsync.cli.options import DEFAULT_PATHS, format_option
from rrpcsync.cli.settings_file import SETTINGS, ConfigFile, Setting, option_value


@cli.command(
    epilog=examples(
        "rrpcsync config",
        "rrpcsync --env prod config",
        "RRPCSYNC_ENV=staging rrpcsync config --format json",
    )
)
@format_option("text", "json")
@click.pass_context
def config(ctx: click.Context, output_format: str) -> None:
    """Show every setting of rrpcsync.toml: its effective value and where it came from.

    Sources, strongest first: a flag, the option's environment variable, the config file
    (an [env.NAME] section over the top level), the built-in default.
    """
    loaded = settings().config or ConfigFile(None)
    commands = all_commands(ctx)
    rows = [effective(setting, loaded, commands) for setting in SETTINGS]
    if output_format == "json":
        doc = {
            "file": str(loaded.path) if loaded.path else None,
            "env": loaded.env,
            "settings": {key: {"value": value, "source": source} for key, value, source in rows},
        }
        out(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    width = max(len(setting.key) for setting in SETTINGS)
    shown = [(key, _text(value), source) for key, value, source in rows]
    value_width = min(40, max(len(value) for _, value, _ in shown))
    out(f"{'SETTING':<{width}}  {'VALUE':<{value_width}}  SOURCE")
    for key, value, source in shown:
        out(f"{key:<{width}}  {value:<{value_width}}  {source}")
    info(_file_line(loaded))


def effective(
    setting: Setting, loaded: ConfigFile, commands: list[click.Command]
) -> tuple[str, Any, str]:
    """(key, value, source) of one setting as the commands will see it."""
    param = _find_param(commands, setting.param)
    envvar = param.envvar if param is not None and isinstance(param.envvar, str) else None
    pending = "" if param is not None else " (no command uses it yet)"
    if envvar and os.environ.get(envvar):
        return setting.key, os.environ[envvar], f"env {envvar}{pending}"
    if setting.key in loaded.values:
        value = option_value(setting, loaded.values[setting.key].value)
        return setting.key, value, f"{loaded.where(setting.key)}{pending}"
    return setting.key, _default(setting, param), f"default{pending}"


def _default(setting: Setting, param: click.Parameter | None) -> Any:
    if setting.key == "paths":
        return list(DEFAULT_PATHS)
    if param is None:
        return None
    default = param.default
    if callable(default):
        default = default()
    if isinstance(default, (list, tuple)):
        return list(default)
    if getattr(param, "multiple", False):
        return []
    return default if isinstance(default, (str, int, float)) else None


def _find_param(commands: list[click.Command], name: str) -> click.Parameter | None:
    for command in commands:
        for candidate in _commands(command):
            for param in candidate.params:
                if param.name == name:
                    return param
    return None


def _commands(command: click.Command) -> Iterator[click.Command]:
    yield command
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from _commands(sub)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def _file_line(loaded: ConfigFile) -> str:
    if loaded.path is None:
        return "no rrpcsync.toml in this folder or its parents: built-in defaults"
    env = f", [env.{loaded.env}]" if loaded.env else ""
    sections = f" (sections: {', '.join(loaded.envs)})" if loaded.envs else ""
    return f"config file: {loaded.path}{env}{sections}"
