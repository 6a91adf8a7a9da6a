"""Triage: `state list` filters, `state rm` globs, `state mv`, `apply --only-failed`,
`state show` with the reply decoded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.model import DeviceRecord, ErrorInfo, Status
from rrpcsync.state.jsonfile import load_state, save_state

from .helpers import manifest_text, run, write

STATE = "rrpcsync.state.json"
AT = "2026-11-28T12:00:00Z"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def ok(payload: str, manifest: str = "m1", reply: str = "ok") -> DeviceRecord:
    return DeviceRecord(
        Status.APPLIED, sha(payload), payload, sha(payload), "r", 1, None, reply, AT, 1, None,
        manifest,
    )  # fmt: skip


def bad(code: str, manifest: str = "m1") -> DeviceRecord:
    return DeviceRecord(
        Status.FAILED,
        target_sha256=sha("x"),
        attempts=1,
        last_error=ErrorInfo(code, "it failed", AT),
        manifest=manifest,
    )


PAYLOAD = '{"method":"set","params":{"a":1}}'


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state in several situations, and the manifests that declare most of it."""
    monkeypatch.chdir(tmp_path)
    state = load_state(tmp_path / STATE)
    state.devices.update(
        {
            "P1/d1": ok(PAYLOAD, reply='{"code":0,"msg":"done"}'),
            "P1/d2": bad("FailedOperation.DeviceOffline"),
            "P1/d3": bad("InternalError", manifest="gateways-north"),
            "P1/long-device-name-7": DeviceRecord(Status.PENDING, manifest="m1"),
            "P2/e1": ok(PAYLOAD, manifest="gateways-south"),
        }
    )
    save_state(state)
    write(tmp_path / "configs" / "a.yaml", manifest_text(devices="[d1, d2]"))
    (tmp_path / "configs" / "a.yaml").write_text(
        (tmp_path / "configs" / "a.yaml")
        .read_text()
        .replace("  name: m1\n", "  name: m1\n  labels: {site: north}\n"),
        encoding="utf-8",
    )
    write(tmp_path / "configs" / "b.yaml", manifest_text(name="m2", product="P2", devices="[e1]"))
    return tmp_path


def keys(result: Any) -> list[str]:
    return [line.split()[0] for line in result.out_lines[1:]]


def test_state_list_prints_a_header_and_aligned_columns(
    capsys: pytest.CaptureFixture[str], recorded: Path
) -> None:
    result = run(capsys, "state", "list")
    assert result.code == 0, result.err
    header, *rows = result.out_lines
    assert header.index("STATUS") == len("P1/long-device-name-7") + 2
    status_column = header.index("STATUS")
    assert all(row[status_column - 2 : status_column] == "  " for row in rows)
    assert [row[status_column:].split()[0] for row in rows] == [
        "applied",
        "failed",
        "failed",
        "pending",
        "applied",
    ]
    d2 = next(row for row in rows if row.startswith("P1/d2 "))
    assert d2.split() == ["P1/d2", "failed", "m1", "-", "FailedOperation.DeviceOffline"]
    assert result.err_lines[-1] == "5 device(s): 2 applied, 2 failed, 1 pending (serial 1)"


def test_state_list_filters_combine(capsys: pytest.CaptureFixture[str], recorded: Path) -> None:
    assert keys(run(capsys, "state", "list", "--status", "failed")) == ["P1/d2", "P1/d3"]
    both = run(capsys, "state", "list", "--status", "failed", "--status", "pending")
    assert keys(both) == ["P1/d2", "P1/d3", "P1/long-device-name-7"]
    assert keys(run(capsys, "state", "list", "--manifest", "gateways-*")) == ["P1/d3", "P2/e1"]
    coded = run(capsys, "state", "list", "--error-code", "FailedOperation.*")
    assert keys(coded) == ["P1/d2"]
    assert coded.err_lines[-1] == "1 of 5 device(s): 1 failed (serial 1)"
    assert keys(run(capsys, "state", "list", "--target", "P2/*")) == ["P2/e1"]
    mixed = run(capsys, "state", "list", "--target", "P1/*", "--status", "applied")
    assert keys(mixed) == ["P1/d1"]
    # labels come from the manifests; devices no longer declared have none
    assert keys(run(capsys, "state", "list", "--selector", "site=north")) == ["P1/d1", "P1/d2"]
    assert keys(run(capsys, "state", "list", "configs", "-l", "!site")) == ["P2/e1"]
    doc = json.loads(run(capsys, "state", "list", "--status", "failed", "--format", "json").out)
    assert sorted(doc["devices"]) == ["P1/d2", "P1/d3"]
    assert doc["counts"] == {"failed": 2}


def test_state_show_prints_the_reply_as_text_and_json_indented(
    capsys: pytest.CaptureFixture[str], recorded: Path
) -> None:
    result = run(capsys, "state", "show", "P1/d1")
    assert result.code == 0, result.err
    lines = result.out_lines
    assert lines[0] == "P1/d1"
    assert "  status:         applied" in lines
    at = lines.index("  reply:")
    assert lines[at + 1 : at + 5] == ["    {", '      "code": 0,', '      "msg": "done"', "    }"]
    assert '\\"' not in result.out  # not an escaped string
    state = load_state(recorded / STATE)
    state.devices["P1/d1"] = ok(PAYLOAD, reply="line one\nline two\x07")
    save_state(state)
    text = run(capsys, "state", "show", "P1/d1").out_lines
    at = text.index("  reply:")
    assert text[at + 1 : at + 3] == ["    line one", "    line two\\x07"]
    as_json = json.loads(run(capsys, "state", "show", "P1/d1", "--format", "json").out)
    assert as_json["P1/d1"]["reply_text"] == "line one\nline two\x07"


def test_state_rm_globs_count_and_need_yes_without_a_terminal(
    capsys: pytest.CaptureFixture[str], recorded: Path
) -> None:
    refused = run(capsys, "state", "rm", "P1/d*")
    assert refused.code == 1
    assert "3 device(s) match: P1/d1, P1/d2, P1/d3" in refused.err
    assert "3 devices match; pass --yes to forget them without a terminal" in refused.err
    assert len(load_state(recorded / STATE).devices) == 5
    nothing = run(capsys, "state", "rm", "P9/*", "P1/d1")
    assert nothing.code == 1
    assert "no device in the state matches P9/*; nothing changed" in nothing.err
    one = run(capsys, "state", "rm", "P1/d?")  # a glob, but only P1/d1..3 match: needs --yes
    assert one.code == 1
    done = run(capsys, "state", "rm", "P1/d*", "P2/e1", "--yes")
    assert done.code == 0, done.err
    assert "removed 4 device(s) from rrpcsync.state.json" in done.err
    assert sorted(load_state(recorded / STATE).devices) == ["P1/long-device-name-7"]
    single = run(capsys, "state", "rm", "P1/long-*")  # one match: no --yes needed
    assert single.code == 0, single.err


def test_state_mv_renames_a_product_so_the_plan_is_unchanged(
    capsys: pytest.CaptureFixture[str], recorded: Path
) -> None:
    state = load_state(recorded / STATE)
    state.devices["P1/d2"] = ok(PAYLOAD)
    save_state(state)
    write(recorded / "configs" / "a.yaml", manifest_text(product="NEWP", devices="[d1, d2]"))
    (recorded / "configs" / "b.yaml").unlink()
    before = run(capsys, "plan", "configs")
    assert "+ 2 devices in m1" in before.out
    moved = run(capsys, "state", "mv", "P1/*", "P2/*")
    assert moved.code == 0, moved.err
    assert "renamed P1/d1 → P2/d1 and 3 more in rrpcsync.state.json; nothing was sent" in moved.err
    assert run(capsys, "state", "mv", "P2/d1", "P2/e1").code == 1  # taken
    assert run(capsys, "state", "mv", "P2/*", "NEWP/*").code == 0
    records = load_state(recorded / STATE).devices
    assert sorted(records) == [
        "NEWP/d1",
        "NEWP/d2",
        "NEWP/d3",
        "NEWP/e1",
        "NEWP/long-device-name-7",
    ]
    assert records["NEWP/d1"] == ok(PAYLOAD, reply='{"code":0,"msg":"done"}')
    after = run(capsys, "plan", "configs")
    assert "+ NEWP" not in after.out and "~ NEWP/d1" not in after.out
    assert "Plan: 0 to create, 0 to update, 0 to retry, 3 orphaned, 2 unchanged." in after.out
    bad_pattern = run(capsys, "state", "mv", "NEWP/*", "OTHER")
    assert bad_pattern.code == 1
    assert "one `*` each" in bad_pattern.err
    missing = run(capsys, "state", "mv", "NOPE/x", "NOPE/y")
    assert "NOPE/x is not in the state; nothing changed" in missing.err


def test_apply_only_failed_sends_only_the_failed_devices(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator: Any,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", "emulator-token")
    emu = emulator({"auto_devices": True, "devices": {"P1/d2": {"offline": True}}})
    monkeypatch.setenv("RRPCSYNC_ENDPOINT", emu.url)
    write(tmp_path / "configs" / "m.yaml", manifest_text(devices="[d1, d2, d3]"))
    assert run(capsys, "apply", "configs", "--auto-approve", "--retries", "0").code == 3
    emu.configure({"devices": {"P1/d2": {"offline": False}}})
    emu.reset()
    write(  # d1 and d3 would be updated too, but only d2 failed last time
        tmp_path / "configs" / "m.yaml",
        manifest_text(devices="[d1, d2, d3]", payload="{method: set, params: {a: 2}}"),
    )
    planned = run(capsys, "plan", "configs", "--only-failed", "--format", "json")
    assert [c["key"] for c in json.loads(planned.out)["changes"]] == ["P1/d2"]
    applied = run(capsys, "apply", "configs", "--only-failed", "--auto-approve")
    assert applied.code == 0, applied.err
    per_device = emu.stats()["per_device"]
    assert [key for key, stats in per_device.items() if stats["acked"]] == ["P1/d2"]
    assert load_state(tmp_path / STATE).devices["P1/d2"].status is Status.APPLIED


def test_triage_commands_work_on_a_sql_store(
    capsys: pytest.CaptureFixture[str], recorded: Path
) -> None:
    from rrpcsync.state import open_store

    url = f"sqlite:///{recorded}/state.db"
    store = open_store(url)
    with store.lock("test"):
        state = store.load()
        for key, record in load_state(recorded / STATE).devices.items():
            state.put(key, record)
        store.save(state)
    listed = run(capsys, "state", "list", "--state", url, "--status", "failed")
    assert keys(listed) == ["P1/d2", "P1/d3"]
    assert run(capsys, "state", "mv", "P2/*", "P3/*", "--state", url).code == 0
    assert run(capsys, "state", "rm", "P1/d*", "--yes", "--state", url).code == 0
    remaining = json.loads(run(capsys, "state", "list", "--state", url, "--format", "json").out)
    assert sorted(remaining["devices"]) == ["P1/long-device-name-7", "P3/e1"]
    shown = run(capsys, "state", "show", "P3/e1", "--state", url)
    assert shown.code == 0 and "  status:         applied" in shown.out_lines
