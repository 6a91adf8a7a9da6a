"""Docs follow the code: every command, option and exit code is documented."""

from __future__ import annotations

import re

import click

from rrpcsync.cli import cli
from rrpcsync.errors import ExitCode

from .helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = README + "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))


def commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    """Every command, loaded through click's lookup (the CLI imports a command's module only
    when the command is looked up)."""
    found = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        full = f"{prefix}{name}"
        found.append((full, command))
        if isinstance(command, click.Group):
            found += commands(command, full + " ")
    return found


def test_every_command_is_in_the_readme() -> None:
    for name, _ in commands(cli):
        assert f"rrpcsync {name}" in README or f"`{name} " in README, name


def test_every_option_is_documented() -> None:
    missing = [
        f"{opt} of `rrpcsync {name}`"
        for name, command in [("", cli), *commands(cli)]
        for param in command.params
        for opt in param.opts
        if opt.startswith("--") and opt not in DOCS
    ]
    assert missing == []


def test_every_manifest_key_is_documented() -> None:
    from rrpcsync.manifests.loader import schema

    full = schema()
    spec_keys = full["properties"]["spec"]["properties"]
    missing = [f"spec.{key}" for key in spec_keys if f"spec.{key}" not in DOCS]
    defs = full["$defs"]
    for name in ("window", "override", "rollout", "probe", "expect"):
        missing += [f"{name}.{key}" for key in defs[name]["properties"] if f"`{key}`" not in DOCS]
    assert missing == []


def test_every_exit_code_is_in_the_readme_table() -> None:
    for code in ExitCode:
        assert re.search(rf"^\| {int(code)} \|", README, flags=re.M), code


def test_readme_setup_commands_and_ci_use_the_same_test_command() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.S)
    assert blocks[0] == "pip install . && rrpcsync demo"
    assert blocks[1] == "pip install -e '.[dev]' && pytest"
    assert blocks[1] in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_sql_schema_is_documented() -> None:
    """docs/state.md names every table of the SQL stores and the schema version."""
    from rrpcsync.state.sql import MIGRATIONS, SCHEMA_VERSION

    state_doc = (ROOT / "docs" / "state.md").read_text(encoding="utf-8")
    tables = {
        match
        for statements in MIGRATIONS
        for statement in statements
        for match in re.findall(r"CREATE TABLE (\w+)", statement)
    }
    assert tables and all(f"`{table}`" in state_doc for table in tables), tables
    assert f"the schema version ({SCHEMA_VERSION})" in state_doc
