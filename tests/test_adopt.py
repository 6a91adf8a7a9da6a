"""`state adopt`: record declared devices as applied without sending their payload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.model import Status
from rrpcsync.state import JsonFileStore
from rrpcsync.state.jsonfile import load_state

from .helpers import run
from .test_drift import DESIRED, FAST, NO_PROBE, PROBED, STATE, TOKEN, acked, hand_edited, manifest


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def adopt(capsys: pytest.CaptureFixture[str], emu: Any, *extra: str) -> Any:
    return run(capsys, "state", "adopt", "configs", "--endpoint", emu.url, *FAST, *extra)


def payload_requests(emu: Any) -> list[str]:
    """Devices that applied a payload (the probes do not)."""
    return [entry["device"] for entry in emu.stats()["log"] if entry["applied"]]


def test_assume_in_sync_records_applied_without_sending(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    manifest(env, ["d1", "d2", "d3"], NO_PROBE)
    refused = adopt(capsys, emu, "--assume-in-sync")  # no terminal, no --auto-approve
    assert refused.code == 1
    assert "= 3 device(s) recorded as applied, nothing sent" in refused.out
    assert "Adopt: 3 device(s) (assumed in sync, not acknowledged), 0 left out." in refused.out
    assert "refusing to adopt without confirmation" in refused.err
    assert not (env / STATE).exists()
    done = adopt(capsys, emu, "--assume-in-sync", "--auto-approve", "--target", "P1/d[12]")
    assert done.code == 0, done.err
    assert "adopted 2 device(s) into rrpcsync.state.json on your word; nothing was sent" in (
        done.err
    )
    assert emu.stats()["log"] == []  # not one request
    records = load_state(env / STATE).devices
    assert sorted(records) == ["P1/d1", "P1/d2"]
    written = json.loads((env / STATE).read_text(encoding="utf-8"))["devices"]["P1/d1"]
    assert next(iter(written.items())) == ("adopted", "assumed")  # the keys stay sorted
    record = records["P1/d1"]
    assert (record.status, record.adopted, record.request_id, record.reply_text) == (
        Status.APPLIED,
        "assumed",
        None,
        None,
    )
    planned = run(capsys, "plan", "configs", "--format", "json")
    assert [c["key"] for c in json.loads(planned.out)["changes"]] == ["P1/d3"]
    shown = run(capsys, "state", "show", "P1/d1").out_lines
    assert "  adopted:        assumed in sync, never acknowledged" in shown
    again = adopt(capsys, emu, "--assume-in-sync", "--auto-approve", "--target", "P1/d1")
    assert "Nothing to adopt" in again.out


def test_probe_adopts_only_devices_that_report_the_desired_config(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True, "devices": {"P1/d4": {"offline": True}}})
    emu.set_memory("P1/d1", DESIRED)
    emu.set_memory("P1/d2", {**DESIRED, "params": {**DESIRED["params"], "uptime": 9}})  # ignored
    emu.set_memory("P1/d3", hand_edited(interval=99))
    manifest(env, ["d1", "d2", "d3", "d4"])
    result = adopt(capsys, emu, "--probe", "--auto-approve", "--retries", "0")
    assert result.code == 0, result.err
    assert "= 2 device(s) recorded as applied, nothing sent" in result.out
    assert "Not adopted (2): apply sends them their payload" in result.out
    assert (
        "  P1/d3  (configs/m.yaml:12): reports another config than the manifests declare"
        in result.out_lines
    )
    assert any(
        line.startswith("  P1/d4  (configs/m.yaml:12): unreachable") for line in result.out_lines
    )
    assert len(emu.stats()["log"]) == 4  # one probe each
    assert payload_requests(emu) == []  # and nothing else
    assert acked(emu) == {}
    records = load_state(env / STATE).devices
    assert sorted(records) == ["P1/d1", "P1/d2"]
    assert records["P1/d1"].adopted == "probe"
    assert json.loads(records["P1/d2"].observed or "null")["params"]["uptime"] == 9
    planned = run(capsys, "plan", "configs", "--format", "json")
    assert [c["key"] for c in json.loads(planned.out)["changes"]] == ["P1/d3", "P1/d4"]


def test_probe_lists_devices_whose_manifest_has_no_probe(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    manifest(env, ["d1"], NO_PROBE)
    result = adopt(capsys, emu, "--probe", "--auto-approve")
    assert result.code == 0, result.err
    assert (
        "  P1/d1  (configs/m.yaml:8): its manifest has no spec.probe to ask it" in result.out_lines
    )
    assert not (env / STATE).exists()


def test_adopt_honours_the_lock_and_needs_a_mode(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    manifest(env, ["d1"], PROBED)
    assert "needs --probe or --assume-in-sync" in adopt(capsys, emu).err
    with JsonFileStore(str(env / STATE)).lock("apply"):
        locked = adopt(capsys, emu, "--assume-in-sync", "--auto-approve")
    assert locked.code == 4
    assert not (env / STATE).exists()


def test_adopt_works_on_a_sql_store(
    capsys: pytest.CaptureFixture[str], env: Path, emulator: Any
) -> None:
    emu = emulator({"auto_devices": True})
    manifest(env, ["d1", "d2"], NO_PROBE)
    url = f"sqlite:///{env}/state.db"
    done = adopt(capsys, emu, "--assume-in-sync", "--auto-approve", "--state", url)
    assert done.code == 0, done.err
    listed = run(capsys, "state", "list", "--state", url, "--format", "json")
    assert sorted(json.loads(listed.out)["devices"]) == ["P1/d1", "P1/d2"]
    shown = run(capsys, "state", "show", "P1/d1", "--state", url).out_lines
    assert "  adopted:        assumed in sync, never acknowledged" in shown
    planned = run(capsys, "plan", "configs", "--state", url, "--format", "json")
    assert json.loads(planned.out)["changes"] == []
    assert emu.stats()["log"] == []
