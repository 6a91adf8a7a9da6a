"""`rrpcsync state …` commands, plan formats and exit codes, and two runs racing for the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.state.jsonfile import load_state

from .helpers import ROOT, manifest_text, run, write

TOKEN = "emulator-token"


@pytest.fixture
def applied_fleet(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator: Any,
) -> Any:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    emu = emulator({"devices": {"P1/d1": {"reply": "fine"}, "P1/d2": {"offline": True}}})
    monkeypatch.setenv("RRPCSYNC_ENDPOINT", emu.url)
    write(tmp_path / "configs" / "m.yaml", manifest_text(devices="[d1, d2]"))
    assert run(capsys, "apply", "configs", "--auto-approve", "--retries", "0").code == 3
    return emu


def test_state_list_text_and_json(capsys: pytest.CaptureFixture[str], applied_fleet: Any) -> None:
    result = run(capsys, "state", "list")
    assert result.code == 0
    lines = [line.split() for line in result.out_lines]
    assert lines[0] == ["DEVICE", "STATUS", "MANIFEST", "APPLIED", "AT", "LAST", "ERROR"]
    assert lines[1][:3] == ["P1/d1", "applied", "m1"] and lines[1][3].startswith("20")
    assert lines[2] == ["P1/d2", "failed", "m1", "-", "FailedOperation.DeviceOffline"]
    assert result.err_lines[-1] == "2 device(s): 1 applied, 1 failed (serial 1)"
    doc = json.loads(run(capsys, "state", "list", "--format", "json").out)
    assert doc["counts"] == {"applied": 1, "failed": 1}
    assert doc["devices"]["P1/d2"]["last_error"] == "FailedOperation.DeviceOffline"


def test_state_show_decodes_the_reply(
    capsys: pytest.CaptureFixture[str], applied_fleet: Any
) -> None:
    result = run(capsys, "state", "show", "P1/d1", "--format", "json")
    record = json.loads(result.out)["P1/d1"]
    assert (record["status"], record["reply_text"], record["reply_base64"]) == (
        "applied",
        "fine",
        "ZmluZQ==",
    )
    missing = run(capsys, "state", "show", "P1/nope")
    assert missing.code == 1
    assert "P1/nope is not in rrpcsync.state.json" in missing.err


def test_state_rm_forgets_so_the_next_apply_resends(
    capsys: pytest.CaptureFixture[str], applied_fleet: Any
) -> None:
    assert run(capsys, "state", "rm", "P1/d1", "P1/ghost").code == 1  # all or nothing
    assert "P1/d1" in load_state(Path("rrpcsync.state.json")).devices
    assert run(capsys, "state", "rm", "P1/d1").code == 0
    assert "P1/d1" not in load_state(Path("rrpcsync.state.json")).devices
    assert "+ P1/d1" in run(capsys, "plan", "configs").out


def test_plan_detailed_exitcode_and_formats(
    capsys: pytest.CaptureFixture[str], applied_fleet: Any
) -> None:
    assert run(capsys, "plan", "configs", "--detailed-exitcode").code == 2
    assert run(capsys, "plan", "configs", "--detailed-exitcode", "--target", "P1/d1").code == 0
    bad = run(capsys, "plan", "configs", "--detailed-exitcode", "--selector", "a b")
    assert bad.code == 1  # usage errors are 1, never 2
    md = run(capsys, "plan", "configs", "--format", "markdown", "--out-markdown", "c.md")
    assert md.out.startswith("<!-- rrpcsync-plan -->")
    assert Path("c.md").read_text().rstrip("\n") == md.out.rstrip("\n")


def test_invalid_manifests_make_plan_print_the_validate_output(
    capsys: pytest.CaptureFixture[str], applied_fleet: Any
) -> None:
    write(Path("configs") / "bad.yaml", manifest_text("bad", product="P-1"))
    result = run(capsys, "plan", "configs", "--detailed-exitcode")
    assert result.code == 1
    assert result.out == ""
    assert result.err_lines[0].startswith("configs/bad.yaml:6:14: error: $.spec.productId")


def test_malformed_state_exits_1_and_keeps_the_file(
    capsys: pytest.CaptureFixture[str], applied_fleet: Any
) -> None:
    Path("rrpcsync.state.json").write_text('{"format": "something-else"}')
    result = run(capsys, "plan", "configs")
    assert result.code == 1
    assert result.err.startswith("error: rrpcsync.state.json")
    assert Path("rrpcsync.state.json").read_text() == '{"format": "something-else"}'


def test_a_second_apply_is_refused_with_exit_4_naming_the_holder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "default": {"latency": 0.3}})
    write(tmp_path / "configs" / "m.yaml", manifest_text(devices="[a, b, c, d, e, f]"))
    env = {
        **os.environ,
        "RRPCSYNC_ACCESS_TOKEN": TOKEN,
        "RRPCSYNC_ENDPOINT": emu.url,
        "PYTHONPATH": str(ROOT),
    }
    args = ["apply", "configs", "--auto-approve", "--parallelism", "1", "--rate", "100"]
    first = subprocess.Popen(
        [sys.executable, "-m", "rrpcsync", *args],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while emu.stats(include_log=False)["requests_total"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        second = subprocess.run(
            [sys.executable, "-m", "rrpcsync", *args],
            cwd=tmp_path,
            env=env,
            text=True,
            capture_output=True,
            check=False,
        )
    finally:
        first.communicate(timeout=60)
    assert second.returncode == 4
    assert f"rrpcsync.state.json is locked by apply (pid {first.pid} on " in second.stderr
    assert first.returncode == 0
    waited = subprocess.run(
        [sys.executable, "-m", "rrpcsync", *args, "--lock-timeout", "5"],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        check=False,
    )
    assert waited.returncode == 0
    assert "No changes." in waited.stdout
