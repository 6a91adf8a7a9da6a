"""Global options anywhere on the line: -v, -q, --color, --env; -q silences progress too."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.cli.app import global_options_first

from .helpers import manifest_text, run, write


def test_global_options_are_moved_before_the_command() -> None:
    assert global_options_first(["plan", "configs", "-q", "--color", "always", "-vv"]) == [
        "-q",
        "--color",
        "always",
        "-vv",
        "plan",
        "configs",
    ]
    assert global_options_first(["state", "list", "--env=prod", "--", "-q"]) == [
        "--env=prod",
        "state",
        "list",
        "--",
        "-q",
    ]


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "configs" / "m.yaml", manifest_text(devices="[d1, d2]"))
    return tmp_path


def test_quiet_and_verbose_after_the_command(
    capsys: pytest.CaptureFixture[str], fleet: Path
) -> None:
    loud = run(capsys, "validate")
    assert "valid: 1 file(s)" in loud.err
    quiet = run(capsys, "validate", "-q")
    assert quiet.code == 0 and quiet.err == ""
    assert run(capsys, "validate", "--quiet").err == ""


def test_color_always_colours_a_pipe_even_after_the_command(
    capsys: pytest.CaptureFixture[str], fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "\x1b[" not in run(capsys, "plan").out  # captured: not a terminal
    coloured = run(capsys, "plan", "--color", "always")
    assert "\x1b[32m+ 2 devices in m1" in coloured.out
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" in run(capsys, "plan", "--color=always").out  # asked for: NO_COLOR yields
    assert "\x1b[" not in run(capsys, "--color", "never", "plan").out


def test_quiet_silences_progress_lines(
    capsys: pytest.CaptureFixture[str], fleet: Path, monkeypatch: pytest.MonkeyPatch, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    monkeypatch.setenv("RRPCSYNC_ENDPOINT", emu.url)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", "emulator-token")
    loud = run(capsys, "apply", "--auto-approve")
    assert loud.code == 0, loud.err
    assert any(line.startswith("[####") for line in loud.err_lines)  # the progress line
    write(fleet / "configs" / "m.yaml", manifest_text(devices="[d1, d2]", payload="{a: 2}"))
    quiet = run(capsys, "apply", "--auto-approve", "-q")
    assert quiet.code == 0, quiet.err
    assert not any(line.startswith("[") for line in quiet.err_lines), quiet.err


def test_top_level_help_shows_whole_summaries(capsys: pytest.CaptureFixture[str]) -> None:
    import click

    from rrpcsync.cli import cli

    ctx = click.Context(cli, info_name="rrpcsync", max_content_width=60)
    text = cli.get_help(ctx)
    commands = text[text.index("Commands:") : text.index("Examples:")]
    assert "..." not in commands
    flat = " ".join(text.split())
    assert (
        "apply Send the plan's changes (create, update, retry, drift) and record every reply"
        in (flat)
    )
    assert "in the state." in flat
    state_help = run(capsys, "state", "--help").out
    listed = state_help[state_help.index("Commands:") :]
    assert "adopt" in listed and "..." not in listed


def test_completion_scripts_and_a_real_completion(capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import subprocess
    import sys

    for shell, marker in (
        ("bash", "complete -o"),
        ("zsh", "#compdef rrpcsync"),
        ("fish", "complete"),
    ):
        result = run(capsys, "completion", shell)
        assert result.code == 0, result.err
        assert marker in result.out and "_RRPCSYNC_COMPLETE" in result.out, shell
    assert run(capsys, "completion", "tcsh").code == 1
    env = {**os.environ, "COMP_WORDS": "rrpcsync state list --status ", "COMP_CWORD": "4"}
    env["_RRPCSYNC_COMPLETE"] = "bash_complete"
    proc = subprocess.run(
        [sys.executable, "-m", "rrpcsync"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.split() == ["plain,applied", "plain,failed", "plain,pending"]


def test_emulator_logs_one_line_per_request_with_the_token_masked(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import httpx

    from rrpcsync.emulator.server import request_line

    body = b'{"Action":"AppPublishRRPCMessage","AccessToken":"tok-123","ProductId":"P1",'
    body += b'"DeviceName":"d1","Payload":"pin=4711"}'
    line = request_line(body, 200, b'{"Response":{"Error":{"Code":"X.Y"}}}', 0.004)
    assert line == "AppPublishRRPCMessage P1/d1 AccessToken=*** -> 200 X.Y 4ms"
    assert "tok-123" not in line and "4711" not in line

    for quiet in (False, True):
        args = [sys.executable, "-m", "rrpcsync", *(["-q"] if quiet else []), "emulator"]
        proc = subprocess.Popen(
            [*args, "--port", "0"], stderr=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        try:
            assert proc.stderr is not None
            # -q: nothing is printed, not even the address; find the listening socket
            url = _wait_for_port(proc.pid) if quiet else proc.stderr.readline().split()[-1]
            body_json = json.loads(body)
            httpx.post(url, json={**body_json, "AccessToken": "emulator-token"}, timeout=10)
            httpx.post(url, json={**body_json, "DeviceName": "d2"}, timeout=10)
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
        lines = err.splitlines()
        if quiet:
            assert lines == []
        else:
            assert len(lines) == 2
            assert lines[0].startswith("AppPublishRRPCMessage P1/d1 AccessToken=*** -> 200 ")
            assert lines[1].startswith("AppPublishRRPCMessage P1/d2 AccessToken=*** -> 200 ")
            assert "tok-123" not in err and "emulator-token" not in err


def _wait_for_port(pid: int) -> str:
    """The emulator's URL from the sockets the process listens on (Linux /proc)."""
    import time

    for _ in range(100):
        inodes = set()
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            target = os.readlink(fd) if (fd_dir / fd.name).is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = row.split()
            if parts[9] in inodes and parts[3] == "0A":  # LISTEN
                return f"http://127.0.0.1:{int(parts[1].split(':')[1], 16)}/"
        time.sleep(0.1)
    raise AssertionError("the emulator did not listen")
