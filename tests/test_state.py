"""The state file, its backup and the apply journal (rrpcsync/state.py, docs/state.md)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rrpcsync.errors import ExitCode, StateError
from rrpcsync.model import DeviceRecord, ErrorInfo, Status, payload_digest
from rrpcsync.state import jsonfile as state_module
from rrpcsync.state.jsonfile import (
    RECORD_FIELDS,
    Journal,
    State,
    backup_path,
    journal_path,
    journal_text,
    load_state,
    new_lineage,
    record_from_dict,
    record_to_dict,
    save_state,
    state_document,
    state_text,
    utc_now,
)

LINEAGE = "6f1c0a52-5d7e-4c1b-9d1e-0a4b7a000001"

APPLIED_PAYLOAD = '{"method":"set_config","params":{"name":"温度","unit":"°C"}}'
APPLIED = DeviceRecord(
    status=Status.APPLIED,
    payload_sha256=payload_digest(APPLIED_PAYLOAD),
    payload=APPLIED_PAYLOAD,
    target_sha256=payload_digest(APPLIED_PAYLOAD),
    request_id="3f8e6c1e-0000-4000-8000-000000000001",
    message_id=74,
    reply_base64="QUJDRA==",
    reply_text="ABCD ✓",
    applied_at="2026-11-28T12:00:00Z",
    attempts=1,
    last_error=None,
    manifest="thermostats-floor-3",
)
FAILED = DeviceRecord(
    status=Status.FAILED,
    target_sha256="b" * 64,
    request_id="3f8e6c1e-0000-4000-8000-000000000002",
    attempts=3,
    last_error=ErrorInfo("FailedOperation.DeviceOffline", "设备离线", "2026-11-28T12:00:05Z"),
    manifest="thermostats-floor-3",
)
PENDING = DeviceRecord(status=Status.PENDING, target_sha256="c" * 64, attempts=1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "rrpcsync.state.json"


def make_state(path: Path, **devices: DeviceRecord) -> State:
    return State(
        path, LINEAGE, devices={key.replace("__", "/"): rec for key, rec in devices.items()}
    )


def saved(path: Path) -> State:
    state = make_state(path, P__applied=APPLIED, P__failed=FAILED, Q__pending=PENDING)
    save_state(state)
    return state


def state_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": "rrpcsync-state",
        "version": 1,
        "lineage": LINEAGE,
        "serial": 3,
        "devices": {"P/d": record_to_dict(APPLIED)},
    }
    doc.update(overrides)
    return doc


def with_record(**fields: Any) -> dict[str, Any]:
    record = {**record_to_dict(APPLIED), **fields}
    return state_doc(devices={"P/d": {k: v for k, v in record.items() if v is not ...}})


# --------------------------------------------------------------------------- round trip


def test_save_then_load_keeps_every_field(path: Path) -> None:
    state = saved(path)
    loaded = load_state(path)
    assert loaded.devices == state.devices
    assert (loaded.lineage, loaded.serial, loaded.exists, loaded.replayed) == (LINEAGE, 1, True, 0)


def test_record_fields_are_the_model_fields() -> None:
    assert set(RECORD_FIELDS) == set(DeviceRecord._fields)
    assert list(RECORD_FIELDS) == sorted(RECORD_FIELDS)


def test_file_is_sorted_indented_utf8_with_nulls_kept(path: Path) -> None:
    state = saved(path)
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(state_document(state, 1), indent=2, ensure_ascii=False) + "\n"
    assert text.startswith(
        '{\n  "format": "rrpcsync-state",\n  "version": 1,\n'
        f'  "lineage": "{LINEAGE}",\n  "serial": 1,\n  "devices": {{\n    "P/applied": {{\n'
        '      "applied_at": "2026-11-28T12:00:00Z",\n      "attempts": 1,\n'
        '      "last_error": null,\n'
    )
    assert '"reply_text": "ABCD ✓"' in text  # not \u-escaped
    assert '      "last_error": {\n        "at": "2026-11-28T12:00:05Z",\n' in text
    assert list(json.loads(text)["devices"]) == ["P/applied", "P/failed", "Q/pending"]


def test_empty_state_text(path: Path) -> None:
    save_state(State(path, LINEAGE))
    assert json.loads(path.read_text())["devices"] == {}
    assert path.read_text() == json.dumps(state_document(State(path, LINEAGE), 1), indent=2) + "\n"


def test_serial_goes_up_on_every_save_and_lineage_stays(path: Path) -> None:
    state = saved(path)
    save_state(state)
    save_state(load_state(path))
    loaded = load_state(path)
    assert (loaded.serial, loaded.lineage) == (3, LINEAGE)


def test_backup_holds_the_previous_version(path: Path) -> None:
    state = saved(path)
    first = path.read_bytes()
    assert not backup_path(path).exists()  # nothing to keep on the first save
    del state.devices["Q/pending"]
    save_state(state)
    assert backup_path(path).read_bytes() == first
    assert load_state(backup_path(path)).serial == 1
    assert "Q/pending" not in load_state(path).devices


def test_backup_is_a_copy_where_hard_links_fail(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved(path)
    first = path.read_bytes()

    def no_links(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    save_state(load_state(path))
    assert backup_path(path).read_bytes() == first
    assert stat.S_IMODE(backup_path(path).stat().st_mode) == 0o600


def test_state_files_are_private(path: Path) -> None:
    state = saved(path)
    save_state(state)
    with Journal.open(state) as journal:
        journal.append_many([("P/x", PENDING)])
    for file in (path, backup_path(path), journal_path(path)):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


def test_missing_file_is_an_empty_state_with_a_new_lineage(path: Path) -> None:
    one, two = load_state(path), load_state(path)
    assert (one.serial, one.devices, one.exists, one.replayed) == (0, {}, False, 0)
    assert one.lineage != two.lineage
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", one.lineage
    )
    assert not path.exists()  # loading never writes


def test_save_follows_a_symlink(path: Path, tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    saved(real)
    path.symlink_to(real)
    save_state(load_state(path))
    assert path.is_symlink()
    assert load_state(real).serial == 2


def test_helpers() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now())
    assert new_lineage() != new_lineage()
    assert record_from_dict("P/d", record_to_dict(FAILED)) == FAILED


# --------------------------------------------------------------------------- malformed states


MALFORMED = [
    pytest.param(
        "[]", "not a rrpcsync state file: expected a JSON object, not an array", id="array"
    ),
    pytest.param(
        state_doc(format="terraform"),
        'not a rrpcsync state file: "format" is "terraform", not "rrpcsync-state"',
        id="wrong-format",
    ),
    pytest.param(
        {k: v for k, v in state_doc().items() if k != "format"},
        'not a rrpcsync state file: it has no "format": "rrpcsync-state"',
        id="no-format",
    ),
    pytest.param(
        state_doc(version=2),
        "written by a newer rrpcsync (state format version 2; this rrpcsync reads version 1)",
        id="newer-version",
    ),
    pytest.param(state_doc(version="1"), "field 'version' must be an integer", id="version-type"),
    pytest.param(state_doc(version=0), "unsupported state format version 0", id="old-version"),
    pytest.param(
        {k: v for k, v in state_doc().items() if k != "lineage"},
        "missing field 'lineage'",
        id="no-lineage",
    ),
    pytest.param(state_doc(lineage=7), "field 'lineage' must be a non-empty string", id="lineage"),
    pytest.param(state_doc(serial=-1), "field 'serial' must be an integer >= 0", id="serial"),
    pytest.param(state_doc(serial=True), "field 'serial' must be an integer >= 0", id="serial-b"),
    pytest.param(state_doc(devices=[]), "field 'devices' must be an object", id="devices"),
    pytest.param(state_doc(extra=1), "unknown field 'extra'", id="unknown-top-field"),
    pytest.param(
        state_doc(devices={"nodevice": record_to_dict(APPLIED)}),
        "device key 'nodevice' is not of the form ProductId/DeviceName",
        id="bad-key",
    ),
    pytest.param(state_doc(devices={"P/d": 5}), "device 'P/d': must be an object", id="record"),
    pytest.param(
        with_record(attempts=...), "device 'P/d': missing field 'attempts'", id="missing-field"
    ),
    pytest.param(
        with_record(attempts="1"),
        "device 'P/d': field 'attempts' must be an integer >= 0, not a string",
        id="attempts-type",
    ),
    pytest.param(
        with_record(attempts=-1), "device 'P/d': field 'attempts' must be", id="attempts-neg"
    ),
    pytest.param(
        with_record(message_id=True),
        "device 'P/d': field 'message_id' must be an integer or null, not a boolean",
        id="message-id-type",
    ),
    pytest.param(
        with_record(payload=5),
        "device 'P/d': field 'payload' must be a string or null, not a number",
        id="payload-type",
    ),
    pytest.param(
        with_record(status="done"),
        "device 'P/d': field 'status' must be applied | failed | pending, not \"done\"",
        id="unknown-status",
    ),
    pytest.param(
        with_record(status=None), "device 'P/d': field 'status' must be", id="status-null"
    ),
    pytest.param(
        with_record(note="x"), "device 'P/d': unknown field 'note'", id="unknown-record-field"
    ),
    pytest.param(
        with_record(last_error="offline"),
        "device 'P/d': field 'last_error' must be an object {code, message, at} or null",
        id="error-type",
    ),
    pytest.param(
        with_record(last_error={"message": "m", "at": "t"}),
        "device 'P/d': field 'last_error': missing field 'code'",
        id="error-fields",
    ),
    pytest.param(
        with_record(last_error={"code": "c", "message": "m", "at": 1}),
        "device 'P/d': field 'last_error.at' must be a string, not a number",
        id="error-at",
    ),
]


@pytest.mark.parametrize(("content", "message"), MALFORMED)
def test_malformed_state_is_refused_and_left_alone(path: Path, content: Any, message: str) -> None:
    text = content if isinstance(content, str) else json.dumps(content)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StateError) as caught:
        load_state(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert caught.value.exit_code == ExitCode.ERROR
    assert path.read_text(encoding="utf-8") == text


def test_invalid_json_names_line_and_column(path: Path) -> None:
    path.write_text('{\n  "format": "rrpcsync-state",\n  "version": 1,,\n}\n')
    with pytest.raises(StateError, match=r"state\.json:3:16: not valid JSON: Expecting"):
        load_state(path)


def test_invalid_json_points_at_the_backup(path: Path) -> None:
    saved(path)
    save_state(load_state(path))
    path.write_text('{"format": "rrpcsync-st')
    with pytest.raises(StateError) as caught:
        load_state(path)
    assert f"{path}:1:12: not valid JSON" in str(caught.value)
    assert f"the previous version is in {backup_path(path)}" in str(caught.value)


def test_empty_and_non_utf8_files(path: Path) -> None:
    path.write_bytes(b"")
    with pytest.raises(StateError, match="the file is empty"):
        load_state(path)
    path.write_bytes(b'{"format": "\xff"}')
    with pytest.raises(StateError, match=r"not UTF-8 text \(byte 12\)"):
        load_state(path)


def test_unreadable_state_is_a_state_error(path: Path) -> None:
    path.mkdir()
    with pytest.raises(StateError, match="cannot read state file"):
        load_state(path)


# --------------------------------------------------------------------------- atomic save


def test_crash_before_rename_leaves_old_file_and_no_temp(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = saved(path)
    before = path.read_bytes()
    real_replace = os.replace

    def crash_on_state_rename(src: Any, dst: Any) -> None:
        if Path(dst) == path:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_state_rename)
    state.devices.clear()
    with pytest.raises(StateError, match=r"cannot write state file .*it was not changed"):
        save_state(state)
    assert path.read_bytes() == before
    assert state.serial == 1  # not bumped by a failed save
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, backup_path(path).name]


def test_any_failed_rename_cleans_up(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = saved(path)
    before = path.read_bytes()

    def crash(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StateError, match="No space left on device"):
        save_state(state)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_crash_while_writing_temp_file_cleans_up(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = saved(path)
    before = path.read_bytes()

    def crash(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_state(state)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_missing_folder_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot write state file"):
        save_state(State(tmp_path / "no" / "state.json", LINEAGE))


# --------------------------------------------------------------------------- journal


def journal_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in journal_path(path).read_text().splitlines()]


def test_journal_replays_on_load_and_later_entry_wins(path: Path) -> None:
    state = saved(path)
    with Journal.open(state) as journal:
        journal.append("P/new", PENDING)
        journal.flush()
        journal.append_many([("P/new", APPLIED), ("P/failed", APPLIED)])
    loaded = load_state(path)
    assert loaded.replayed == 3
    assert loaded.devices["P/new"] == APPLIED
    assert loaded.devices["P/failed"] == APPLIED
    assert loaded.devices["Q/pending"] == PENDING
    assert loaded.serial == 1
    assert journal_lines(path)[0] == {
        "v": 1,
        "lineage": LINEAGE,
        "base_serial": 1,
        "key": "P/new",
        "record": record_to_dict(PENDING),
    }


def test_save_folds_the_journal_in_and_removes_it(path: Path) -> None:
    state = saved(path)
    with Journal.open(state) as journal:
        journal.append_many([("P/new", APPLIED)])
    loaded = load_state(path)
    save_state(loaded)
    assert not journal_path(path).exists()
    again = load_state(path)
    assert (again.replayed, again.serial, again.devices["P/new"]) == (0, 2, APPLIED)


def test_close_flushes_what_was_appended(path: Path) -> None:
    state = saved(path)
    journal = Journal.open(state)
    journal.append("P/new", APPLIED)
    journal.close()
    journal.close()  # idempotent
    assert load_state(path).devices["P/new"] == APPLIED


def test_journal_writes_are_batched_one_fsync_per_flush(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = saved(path)
    journal = Journal.open(state)
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    for number in range(100):
        journal.append(f"P/d{number}", APPLIED)
    journal.flush()
    journal.flush()  # nothing pending: no write, no fsync
    journal.append_many([(f"P/e{number}", FAILED) for number in range(50)])
    journal.close()
    assert len(synced) == 2
    assert load_state(path).replayed == 150


def test_many_appends_are_fast(path: Path) -> None:
    state = saved(path)
    started = time.perf_counter()
    with Journal.open(state) as journal:
        for number in range(0, 20_000, 100):
            journal.append_many((f"P/d{n}", APPLIED) for n in range(number, number + 100))
    assert time.perf_counter() - started < 5
    assert load_state(path).replayed == 20_000


def test_torn_last_line_is_ignored_with_a_warning(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = saved(path)
    with Journal.open(state) as journal:
        journal.append_many([("P/a", APPLIED), ("P/b", APPLIED)])
    data = journal_path(path).read_bytes()
    journal_path(path).write_bytes(data[: len(data) - 40])  # killed mid-write
    with caplog.at_level(logging.WARNING, logger="rrpcsync.state"):
        loaded = load_state(path)
    assert "P/a" in loaded.devices and "P/b" not in loaded.devices
    assert loaded.warnings == [
        f"{journal_path(path)}:2: ignored an incomplete last line (a run was killed)"
    ]
    assert "ignored an incomplete last line" in caplog.text


def test_invalid_last_line_with_newline_is_ignored(path: Path) -> None:
    state = saved(path)
    with Journal.open(state) as journal:
        journal.append_many([("P/a", APPLIED)])
    with open(journal_path(path), "ab") as file:
        file.write(b"\0" * 30 + b"\n")  # a block of zeros where a crash left the last write
    loaded = load_state(path)
    assert loaded.replayed == 1
    assert "invalid last line" in loaded.warnings[0]


def test_reopening_after_a_torn_line_drops_it_so_new_entries_stay_valid(path: Path) -> None:
    state = saved(path)
    with Journal.open(state) as journal:
        journal.append_many([("P/a", APPLIED)])
    with open(journal_path(path), "ab") as file:
        file.write(b'{"v":1,"lineage":"')
    with Journal.open(load_state(path)) as journal:
        journal.append_many([("P/b", FAILED)])
    loaded = load_state(path)
    assert (loaded.replayed, loaded.warnings) == (2, [])
    assert loaded.devices["P/b"] == FAILED


@pytest.mark.parametrize("tail", [b"\0\0\0\n", b'\0\0\0\n{"v":1,', b"\n\n\0"])
def test_reopening_drops_exactly_what_replay_ignores(path: Path, tail: bytes) -> None:
    state = saved(path)
    with Journal.open(state) as journal:
        journal.append_many([("P/a", APPLIED)])
    with open(journal_path(path), "ab") as file:
        file.write(tail)
    loaded = load_state(path)
    assert loaded.replayed == 1 and loaded.warnings
    with Journal.open(loaded) as journal:
        journal.append_many([("P/b", FAILED)])
    again = load_state(path)
    assert (again.replayed, again.warnings) == (2, [])


def test_blank_lines_are_skipped(path: Path) -> None:
    state = saved(path)
    with Journal.open(state) as journal:
        journal.append_many([("P/a", APPLIED)])
    with open(journal_path(path), "ab") as file:
        file.write(b"\n  \n")
    with Journal.open(load_state(path)) as journal:
        journal.append_many([("P/b", FAILED)])
    loaded = load_state(path)
    assert (loaded.replayed, loaded.warnings) == (2, [])


def test_closed_journal_refuses_appends(path: Path) -> None:
    journal = Journal.open(saved(path))
    journal.close()
    with pytest.raises(ValueError, match="is closed"):
        journal.append("P/a", APPLIED)


def test_corrupt_middle_line_names_the_line(path: Path) -> None:
    state = saved(path)
    with Journal.open(state) as journal:
        journal.append_many([("P/a", APPLIED), ("P/b", APPLIED), ("P/c", APPLIED)])
    lines = journal_path(path).read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:20] + b"\n"
    journal_path(path).write_bytes(b"".join(lines))
    with pytest.raises(StateError, match=r"\.journal:2: not a valid journal entry"):
        load_state(path)


def test_invalid_record_in_journal_names_line_key_and_field(path: Path) -> None:
    saved(path)
    record = {**record_to_dict(APPLIED), "attempts": "x"}
    entry = {"v": 1, "lineage": LINEAGE, "key": "P/a", "record": record}
    journal_path(path).write_text(json.dumps(entry) + "\n")
    with pytest.raises(StateError, match=r"\.journal:1: device 'P/a': field 'attempts'"):
        load_state(path)


def test_journal_of_another_lineage_is_refused(path: Path) -> None:
    saved(path)
    other = State(path, new_lineage(), serial=1)
    with Journal.open(other) as journal:
        journal.append_many([("P/a", APPLIED)])
    with pytest.raises(StateError, match="journal belongs to another state") as caught:
        load_state(path)
    assert f"{journal_path(path)}:1:" in str(caught.value)


def test_journal_from_a_newer_rrpcsync_is_refused(path: Path) -> None:
    saved(path)
    entry = {"v": 2, "lineage": LINEAGE, "key": "P/a", "record": record_to_dict(APPLIED)}
    journal_path(path).write_text(json.dumps(entry) + "\n")
    with pytest.raises(StateError, match="newer rrpcsync"):
        load_state(path)


def test_journal_entries_without_base_serial_are_replayed(path: Path) -> None:
    saved(path)
    entry = {"v": 1, "lineage": LINEAGE, "key": "P/a", "record": record_to_dict(APPLIED)}
    journal_path(path).write_text(json.dumps(entry) + "\n")
    assert load_state(path).devices["P/a"] == APPLIED


def test_first_apply_killed_before_any_save_keeps_its_journal(path: Path) -> None:
    fresh = load_state(path)
    with Journal.open(fresh) as journal:
        journal.append_many([("P/a", APPLIED)])
    loaded = load_state(path)
    assert (loaded.lineage, loaded.replayed, loaded.exists) == (fresh.lineage, 1, False)
    save_state(loaded)
    assert load_state(path).lineage == fresh.lineage


def test_journal_already_folded_in_by_a_save_is_not_replayed(path: Path) -> None:
    # A save that crashed after the rename, before deleting the journal.
    state = saved(path)
    with Journal.open(state) as journal:
        journal.append_many([("P/a", APPLIED)])
    leftover = journal_path(path).read_bytes()
    loaded = load_state(path)
    del loaded.devices["P/a"]  # e.g. `state rm P/a`
    save_state(loaded)
    journal_path(path).write_bytes(leftover)
    again = load_state(path)
    assert (again.replayed, "P/a" in again.devices) == (0, False)


def test_journal_newer_than_the_state_is_refused(path: Path) -> None:
    state = saved(path)
    save_state(state)
    with Journal.open(state) as journal:
        journal.append_many([("P/a", APPLIED)])
    shutil.copy(backup_path(path), path)  # an older state restored by hand
    with pytest.raises(StateError, match=r"written on top of serial 2, but .* has serial 1"):
        load_state(path)


def test_journal_continues_after_a_save_removed_it(path: Path) -> None:
    state = saved(path)
    with Journal.open(state) as journal:
        journal.append_many([("P/a", APPLIED)])
        state.devices["P/a"] = APPLIED
        save_state(state)  # a checkpoint mid-run
        journal.append_many([("P/b", FAILED)])
    loaded = load_state(path)
    assert (loaded.serial, loaded.replayed, loaded.devices["P/b"]) == (2, 1, FAILED)


def test_failed_journal_write_leaves_no_torn_line(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = saved(path)
    journal = Journal.open(state)
    journal.append_many([("P/a", APPLIED)])
    size = journal_path(path).stat().st_size
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(StateError, match=r"cannot write journal .*No space left"):
        journal.append_many([("P/b", APPLIED)])
    assert journal_path(path).stat().st_size == size
    monkeypatch.undo()
    journal.flush()  # the entry is still pending and goes out now
    journal.close()
    assert load_state(path).devices["P/b"] == APPLIED


def test_lone_surrogates_are_escaped_not_crashed_on(path: Path) -> None:
    odd = APPLIED._replace(
        payload="bad \ud800 text ✓", payload_sha256=payload_digest("bad \ud800 text ✓")
    )
    state = make_state(path, P__odd=odd)
    save_state(state)
    with Journal.open(state) as journal:
        journal.append_many([("P/j", odd)])
    loaded = load_state(path)
    assert loaded.devices["P/odd"] == odd == loaded.devices["P/j"]
    assert "✓" in path.read_text(encoding="utf-8")  # other strings stay readable


# --------------------------------------------------------------------------- properties

optional_text = st.none() | st.text()
sha256s = st.none() | st.text("0123456789abcdef", min_size=64, max_size=64)
records = st.builds(
    DeviceRecord,
    status=st.sampled_from(Status),
    payload_sha256=sha256s,
    payload=optional_text,
    target_sha256=sha256s,
    request_id=optional_text,
    message_id=st.none() | st.integers(),
    reply_base64=optional_text,
    reply_text=optional_text,
    applied_at=optional_text,
    attempts=st.integers(min_value=0),
    last_error=st.none() | st.builds(ErrorInfo, code=st.text(), message=st.text(), at=st.text()),
    manifest=optional_text,
    observed=optional_text,  # the optional fields, in every combination
    observed_at=optional_text,
    adopted=st.none() | st.sampled_from(["probe", "assumed"]),
).map(
    lambda rec: (
        rec
        if rec.payload is None or rec.payload_sha256 is None
        else rec._replace(payload_sha256=payload_digest(rec.payload))
    )
)
name = st.text(min_size=1).filter(lambda text: "/" not in text)
keys = st.builds(lambda product, device: f"{product}/{device}", name, name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(devices=st.dictionaries(keys, records, max_size=5), serial=st.integers(0, 10**6))
def test_save_load_round_trips_any_records(
    tmp_path_factory: pytest.TempPathFactory, devices: dict[str, DeviceRecord], serial: int
) -> None:
    path = tmp_path_factory.mktemp("prop") / "state.json"
    state = State(path, LINEAGE, serial, dict(devices))
    save_state(state)
    loaded = load_state(path)
    assert (loaded.devices, loaded.serial) == (devices, serial + 1)


@settings(max_examples=60, deadline=None)
@given(devices=st.dictionaries(keys, records, max_size=5))
def test_written_text_is_exactly_what_json_dumps_writes(devices: dict[str, DeviceRecord]) -> None:
    state = State(Path("s.json"), LINEAGE, 4, devices)
    doc = state_document(state, 5)
    assert state_text(state, 5) == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    for key, record in devices.items():
        entry = {"v": 1, "lineage": LINEAGE, "base_serial": 4, "key": key}
        entry["record"] = record_to_dict(record)
        compact = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
        assert journal_text(LINEAGE, 4, key, record) == compact + "\n"


@settings(max_examples=40, deadline=None)
@given(entries=st.lists(st.tuples(keys, records), max_size=8))
def test_journal_replay_round_trips_any_records(
    tmp_path_factory: pytest.TempPathFactory, entries: list[tuple[str, DeviceRecord]]
) -> None:
    path = tmp_path_factory.mktemp("prop") / "state.json"
    state = State(path, LINEAGE)
    save_state(state)
    with Journal.open(state) as journal:
        journal.append_many(entries)
    assert load_state(path).devices == dict(entries)


# --------------------------------------------------------------------------- scale


@pytest.mark.slow
def test_a_100k_device_state_saves_and_loads_quickly(path: Path) -> None:
    state = State(path, LINEAGE)
    for number in range(100_000):
        state.devices[f"ASBHKN/dev-{number:06d}"] = APPLIED._replace(
            request_id=f"req-{number}", message_id=number
        )
    started = time.perf_counter()
    save_state(state)
    saving = time.perf_counter() - started
    started = time.perf_counter()
    loaded = load_state(path)
    loading = time.perf_counter() - started
    assert loaded.devices == state.devices
    assert saving < 6.0, saving  # generous for slow CI runners; well under a second on a laptop
    assert loading < 6.0, loading


def test_module_logger_name() -> None:
    assert state_module.log.name == "rrpcsync.state"
