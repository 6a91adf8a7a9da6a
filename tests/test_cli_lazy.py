"""The CLI imports a command's module only when the command is looked up (`--version` is fast)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import click

import rrpcsync.cli
from rrpcsync.cli.app import COMMAND_MODULES, cli

from .helpers import manifest_text, write

HEAVY = ("yaml", "httpx", "aiohttp", "jsonschema", "fastjsonschema", "rrpcsync.api")


def imported_after(*args: str) -> list[str]:
    code = (
        "import json, sys\n"
        "from rrpcsync.cli import cli, run_guarded\n"
        f"code = run_guarded(cli, {list(args)!r})\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(proc.stderr.splitlines()[-1])
    return loaded


def test_version_imports_no_command_module_and_no_heavy_library() -> None:
    loaded = imported_after("--version")
    commands = sorted({f"rrpcsync.cli.{module}" for module in COMMAND_MODULES.values()})
    assert [name for name in loaded if name in commands] == []
    assert [name for name in loaded if name.split(".")[0] in HEAVY or name in HEAVY] == []


def test_a_command_imports_only_its_own_module() -> None:
    loaded = imported_after("schema")
    assert "rrpcsync.cli.validate" in loaded
    assert "rrpcsync.cli.apply" not in loaded
    assert "rrpcsync.cli.tools" not in loaded


def test_the_command_table_matches_the_modules() -> None:
    """Every command module is in COMMAND_MODULES, and every entry names its real module."""
    for info in pkgutil.iter_modules(rrpcsync.cli.__path__):
        importlib.import_module(f"rrpcsync.cli.{info.name}")
    registered = {name: command.callback.__module__ for name, command in cli.commands.items()}
    assert set(registered) == set(COMMAND_MODULES)
    for name, module in registered.items():
        assert module == f"rrpcsync.cli.{COMMAND_MODULES[name]}", name


def test_unknown_commands_are_still_usage_errors() -> None:
    ctx = click.Context(cli)
    assert cli.get_command(ctx, "nope") is None
    assert "nope" not in cli.list_commands(ctx)


def test_validate_loads_no_state_store_planner_or_http_client(tmp_path: Path) -> None:
    manifest = write(tmp_path / "m.yaml", manifest_text())
    loaded = imported_after("-q", "validate", str(manifest))
    assert "rrpcsync.manifests.loader" in loaded
    unwanted = ("rrpcsync.state", "rrpcsync.planning.planner", "rrpcsync.run", "rrpcsync.cloud.")
    light = {"rrpcsync.cloud.tokens"}  # constants and a protocol
    assert [name for name in loaded if name.startswith(unwanted) and name not in light] == []
    assert [name for name in loaded if name.split(".")[0] in HEAVY[1:5]] == []
    assert "zoneinfo" not in loaded  # only manifests with maintenance windows need it
