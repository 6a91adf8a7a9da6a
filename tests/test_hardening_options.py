"""Options (issue 14): every float option refuses nan and inf as a usage error."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.types import FloatParamType

from rrpcsync.cli import cli
from rrpcsync.cli.options import FiniteFloat

from .helpers import manifest_text, run, write


def float_options() -> list[tuple[str, str]]:
    """(command, --option) for every float option of every command."""
    found = []

    def walk(group: click.Command, prefix: list[str]) -> None:
        if isinstance(group, click.Group):
            ctx = click.Context(group)
            for name in group.list_commands(ctx):
                command = group.get_command(ctx, name)
                assert command is not None
                walk(command, [*prefix, name])
            return
        for param in group.params:
            if isinstance(param, click.Option) and isinstance(param.type, FloatParamType):
                found.append((" ".join(prefix), param.opts[0]))

    walk(cli, [])
    return found


def test_every_float_option_is_a_finite_float() -> None:
    options = float_options()
    assert ("apply", "--max-rate") in options and ("apply", "--lock-timeout") in options
    for command, option in options:
        param = next(
            p for p in _command(command).params if isinstance(p, click.Option) and option in p.opts
        )
        assert isinstance(param.type, FiniteFloat), (command, option)


def _command(path: str) -> click.Command:
    command: click.Command | None = cli
    for name in path.split():
        assert isinstance(command, click.Group)
        command = command.get_command(click.Context(command), name)
    assert command is not None
    return command


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "Infinity", "1e999"])
@pytest.mark.parametrize(("command", "option"), float_options())
def test_non_finite_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    option: str,
    value: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "configs" / "m.yaml", manifest_text())
    result = run(capsys, *command.split(), f"{option}={value}")
    assert result.code == 1, (command, option, result.err)
    assert "is not a finite number" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_rate_refuses_non_finite_values(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "configs" / "m.yaml", manifest_text())
    for command in ("plan", "apply", "drift"):
        result = run(capsys, command, f"--rate={value}")
        assert result.code == 1, (command, result.err)
        assert "is not a finite number" in result.err


def test_a_resync_after_too_long_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "configs" / "m.yaml", manifest_text())
    result = run(capsys, "drift", "--resync-after", "9" * 400 + "d")
    assert result.code == 1
    assert "longer than 100 years" in result.err


def test_finite_values_still_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "configs" / "m.yaml", manifest_text())
    assert run(capsys, "plan", "--timeout", "3", "--rate", "5.5").code == 0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+inf"])
@pytest.mark.parametrize("key", ["rate", "timeout", "rollout.max-failure-rate"])
def test_the_config_file_refuses_non_finite_numbers(tmp_path: Path, key: str, value: str) -> None:
    from rrpcsync.cli.settings_file import load_config
    from rrpcsync.errors import UsageError

    path = tmp_path / "rrpcsync.toml"
    path.write_text(f"{key} = {value}\n")
    try:
        load_config(path, None)
    except UsageError as exc:
        assert str(exc).startswith(f"{path}:1: {key} must be "), str(exc)
    else:
        raise AssertionError(f"{key} = {value} was accepted")


def test_a_config_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    from rrpcsync.cli.settings_file import load_config
    from rrpcsync.errors import UsageError

    path = tmp_path / "rrpcsync.toml"
    os.mkfifo(path)
    with pytest.raises(UsageError, match="not a regular file"):
        load_config(path, None)
