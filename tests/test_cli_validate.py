"""`rrpcsync validate`, `schema`, global options and exit codes, through the real CLI boundary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from rrpcsync import __version__

from .helpers import EXAMPLES, ROOT, manifest_text, run, write

INVALID = sorted((EXAMPLES / "invalid").glob("*.y*ml"))


def test_examples_validate(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "validate", str(EXAMPLES / "configs"))
    assert result.code == 0
    assert result.err_lines == ["valid: 3 file(s), 4 manifest(s), 10 device(s)"]
    assert result.out == ""


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_every_invalid_example_fails_with_its_own_message(
    capsys: pytest.CaptureFixture[str], path: Path
) -> None:
    result = run(capsys, "validate", str(path))
    assert result.code == 1
    first = result.err_lines[0]
    assert first.startswith(f"{path}:"), first
    assert ": error: " in first


def test_invalid_examples_have_distinct_messages(capsys: pytest.CaptureFixture[str]) -> None:
    messages = set()
    for path in INVALID:
        first = run(capsys, "validate", str(path)).err_lines[0]
        messages.add(first.split(": error: ", 1)[1])
    assert len(messages) == len(INVALID)


def test_text_format_lists_every_error_with_location(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "m.yaml", manifest_text(product="P-1", devices="[ok, 'bad name']"))
    result = run(capsys, "validate", str(path))
    assert result.code == 1
    assert result.err_lines[:2] == [
        f"{path}:6:14: error: $.spec.productId: 'P-1' is not allowed: product IDs are 1–32 "
        "letters or digits",
        f"{path}:8:17: error: $.spec.devices[1]: 'bad name' is not allowed: device names are "
        "1–48 letters, digits or _ : . -",
    ]
    assert result.err_lines[2] == "2 error(s); 1 file(s), 0 manifest(s), 0 device(s)"


def test_json_format(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path / "m.yaml", manifest_text(devices="[]"))
    result = run(capsys, "validate", "--format", "json", str(path))
    assert result.code == 1
    assert json.loads(result.out) == [
        {
            "file": str(path),
            "line": 8,
            "column": 3,
            "path": "$.spec.devices",
            "message": "must list at least one device",
        }
    ]


def test_json_format_when_valid_is_an_empty_list(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "validate", "--format", "json", str(EXAMPLES / "configs"))
    assert (result.code, json.loads(result.out)) == (0, [])


def test_github_format_prints_annotations(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path / "m,1.yaml", manifest_text(devices="[]"))
    result = run(capsys, "validate", "--format", "github", str(path))
    assert result.code == 1
    escaped = str(path).replace(",", "%2C")
    assert result.out_lines == [
        f"::error file={escaped},line=8,col=3::$.spec.devices: must list at least one device"
    ]


def test_default_path_is_configs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "validate").err_lines[0] == "configs:1:1: error: $: no such file or folder"
    write(tmp_path / "configs" / "m.yaml", manifest_text())
    assert run(capsys, "validate").code == 0


def test_usage_errors_exit_1_not_2(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "validate", "--format", "xml")
    assert result.code == 1
    assert "Invalid value for '--format'" in result.err


def test_schema_command_prints_the_packaged_schema(capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, "schema")
    schema = json.loads(result.out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["apiVersion"] == {
        "const": "rrpcsync/v1",
        "description": "Manifest format version.",
    }


def test_every_command_has_examples_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    from rrpcsync.cli import cli

    def walk(command: click.Command | None, prefix: list[str]) -> list[list[str]]:
        found = [prefix]
        if isinstance(command, click.Group):  # commands load when looked up
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                found.extend(walk(command.get_command(ctx, name), [*prefix, name]))
        return found

    for path in walk(cli, []):
        result = run(capsys, *path, "-h")
        assert result.code == 0, path
        assert "Examples:" in result.out, f"no examples in help of {path}"


def test_version_and_module_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rrpcsync", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"rrpcsync, version {__version__}"


def test_unexpected_errors_are_short_without_verbose(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rrpcsync.manifests import loader as manifest

    def boom(*_: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(manifest, "load_manifests", boom)
    result = run(capsys, "validate", "x")
    assert result.code == 1
    assert result.err_lines[0] == "internal error: RuntimeError: kaboom"
    assert "Traceback" not in result.err
    assert "Traceback" in run(capsys, "-v", "validate", "x").err
