"""Output hygiene (issue 14): control characters escaped and workflow commands neutralised in
everything printed; a full disk while journaling stops the run without a traceback."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.cli.terminal import one_line, safe_text
from rrpcsync.state import journal as journal_module

from .helpers import manifest_text, run, write

TOKEN = "emulator-token"
HOSTILE = "ok\x1b]0;pwned\x07\n::error::pwned\r\u202e ##[error]legacy \ud800"
WORKFLOW_COMMAND = re.compile(r"^\s*::[a-z-]+", re.MULTILINE)


def assert_safe(text: str) -> None:
    assert "\x1b]" not in text and "\x07" not in text and "\r" not in text
    assert "\u202e" not in text and "\ud800" not in text
    assert not WORKFLOW_COMMAND.search(text), text
    assert "##[error]" not in text


def test_safe_text_escapes_and_neutralises() -> None:
    shown = safe_text(HOSTILE)
    assert_safe(shown)
    assert "\\u001b]0;pwned\\u0007" in shown
    assert "\\::error::pwned" in shown
    assert safe_text("\x1b[31mred\x1b[0m") == "\x1b[31mred\x1b[0m"  # our own colours
    assert one_line("a\nb") == "a\\nb"


@pytest.fixture
def hostile_fleet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: Any
) -> tuple[Path, str]:
    raw = HOSTILE.replace("\ud800", "")  # raw bytes must be UTF-8; a lone surrogate is JSON's
    escaped = '{"m": "ok\\u001b]0;pwned\\u0007\\n::error::pwned \\ud800 \\u202e"}'
    emu = emulator({"devices": {"P1/d1": {"reply": raw}, "P1/d2": {"reply": escaped}}})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    payload = '"line one\\n::error::from a payload\\e]0;title\\a ##[warning]x"'
    write(tmp_path / "configs" / "m.yaml", manifest_text(payload=payload, devices="[d1, d2]"))
    return tmp_path, emu.url


def test_plan_text_and_markdown_escape_payloads(
    capsys: pytest.CaptureFixture[str], hostile_fleet: tuple[Path, str]
) -> None:
    folder, _ = hostile_fleet
    for fmt in ("text", "markdown", "json"):
        result = run(capsys, "plan", "configs", "--format", fmt)
        assert result.code == 0, result.err
        assert_safe(result.out + result.err)
    result = run(capsys, "plan", "configs", "--out", "plan.json", "--out-markdown", "plan.md")
    assert result.code == 0, result.err
    markdown = (folder / "plan.md").read_text()
    assert "\x1b" not in markdown and "\x07" not in markdown
    saved = json.loads((folder / "plan.json").read_text())
    assert "\x1b]0;title\x07" in saved["changes"][0]["payload"]  # the same payload, escaped


def test_apply_summary_and_state_commands_escape_replies(
    capsys: pytest.CaptureFixture[str], hostile_fleet: tuple[Path, str]
) -> None:
    _, url = hostile_fleet
    applied = run(capsys, "apply", "configs", "--auto-approve", "--endpoint", url)
    assert applied.code == 0, applied.err
    results = [applied, run(capsys, "state", "list")]
    for key in ("P1/d1", "P1/d2"):
        shown = run(capsys, "state", "show", key)
        assert shown.code == 0, shown.err
        assert "]0;pwned" in shown.out
        results += [shown, run(capsys, "state", "show", key, "--format", "json")]
    for result in results:
        assert_safe(result.out + result.err)


def test_errors_naming_a_hostile_file_are_one_safe_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "configs" / "m.yaml", manifest_text())
    state = tmp_path / "evil\x1b]0;x\x07\n::error::y.json"
    state.write_text("{not json")
    result = run(capsys, "plan", "configs", "--state", str(state))
    assert result.code == 1
    assert len(result.err_lines) == 1, result.err
    assert_safe(result.err)


def test_github_annotations_are_still_workflow_commands(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "configs" / "m.yaml", manifest_text(devices="['bad name']"))
    result = run(capsys, "validate", "configs", "--format", "github")
    assert result.code == 1
    assert result.out.startswith("::error file=")


# --------------------------------------------------------------------------- disk full


def test_a_full_disk_while_journaling_stops_without_a_traceback(
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator: Any,
) -> None:
    emu = emulator({"auto_devices": True})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    write(tmp_path / "configs" / "m.yaml", manifest_text(devices="[d1, d2, d3, d4, d5, d6]"))
    real = journal_module.append_durably
    calls = {"n": 0}

    def fill_up(fd: int, data: bytes, sync: bool = True) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data, sync)

    monkeypatch.setattr(journal_module, "append_durably", fill_up)
    from rrpcsync.cli import cli, run_guarded

    capfd.readouterr()
    code = run_guarded(cli, ["apply", "configs", "--auto-approve", "--endpoint", emu.url])
    captured = capfd.readouterr()
    assert code == 1, captured.err
    assert "No space left on device" in captured.err
    assert "never retrieved" not in captured.err
    assert "Traceback" not in captured.err
    assert captured.err.count("error:") == 1, captured.err
