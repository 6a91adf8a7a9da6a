"""The JSON state file: load (replaying the journal), atomic save with a backup, and
`JsonFileStore`, the default `StateStore`. The formats are documented in docs/state.md."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from rrpcsync import jsontext
from rrpcsync.errors import StateError
from rrpcsync.jsontext import gc_paused
from rrpcsync.model import DeviceRecord
from rrpcsync.state.files import append_durably, backup_path, open_for_append, write_atomically
from rrpcsync.state.journal import Journal, journal_path, replay_journal
from rrpcsync.state.lock import StateLock, lock_path, read_holder, unlock
from rrpcsync.state.paths import read_private, resolve_state_path
from rrpcsync.state.records import (
    FORMAT,
    HEADER_FIELDS,
    JOURNAL_VERSION,
    RECORD_FIELDS,
    VERSION,
    Shared,
    check_key,
    check_record_hashes,
    field_set_problem,
    is_int,
    journal_text,
    json_type,
    record_from_dict,
    record_to_dict,
    state_text,
    utf8,
)
from rrpcsync.state.store import RunRecord, State, new_lineage, utc_now

__all__ = [
    "FORMAT",
    "JOURNAL_VERSION",
    "RECORD_FIELDS",
    "VERSION",
    "Journal",
    "JsonFileStore",
    "State",
    "StateLock",
    "backup_path",
    "journal_path",
    "journal_text",
    "load_state",
    "lock_path",
    "new_lineage",
    "read_holder",
    "record_from_dict",
    "record_to_dict",
    "save_state",
    "state_document",
    "state_text",
    "unlock",
    "utc_now",
]

log = logging.getLogger("rrpcsync.state")


# --------------------------------------------------------------------------- load


def load_state(path: Path) -> State:
    """Read the state (a missing file is an empty state) and replay its journal on top."""
    state = read_state_file(resolve_state_path(path))
    replay_journal(state)
    return state


def read_state_file(path: Path) -> State:
    try:
        raw = read_private(path, "state file")
    except FileNotFoundError:
        return State(str(path), new_lineage())
    written = raw.count(b'"status"')  # records as written, compared with those read below
    text = _decoded_state(path, raw)
    del raw  # a 1M-device state is ~700 MB: never hold the bytes, the text and the values at once
    with gc_paused():
        doc = _parse_state_json(path, text)
        try:
            lineage, serial, devices = _header(doc)
            if written > len(devices):  # more records written than read: a repeated key?
                _check_unique_keys(path, text)
            del text
            records = _records(devices)
        except StateError as exc:
            raise StateError(f"{path}: {exc}") from None
    return State(str(path), lineage, serial, records, exists=True)


class _RepeatedKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return mapping


def _check_unique_keys(path: Path, text: str) -> None:
    """json.loads keeps the last of repeated keys: a second "devices" (or device key) would
    silently hide records, even all of them. Only run when the cheap count above disagrees."""
    try:
        jsontext.loads(text, max_depth=None, object_pairs_hook=_unique_pairs)
    except _RepeatedKey as exc:
        raise StateError(
            f"the key {json.dumps(exc.args[0], ensure_ascii=False)} appears twice in "
            f"one object (a bad merge or edit?){_backup_hint(path)}"
        ) from None


def _decoded_state(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateError(f"{path}: not UTF-8 text (byte {exc.start}){_backup_hint(path)}") from None
    if not text or text.isspace():
        raise StateError(f"{path}: the file is empty{_backup_hint(path)}")
    return text


def _parse_state_json(path: Path, text: str) -> object:
    try:
        return jsontext.loads(text, max_depth=None)  # the codec checks shapes
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}{_backup_hint(path)}"
        ) from None
    except ValueError as exc:  # too deep, or a number too long
        raise StateError(f"{path}: not a usable state file: {exc}{_backup_hint(path)}") from None


def _backup_hint(path: Path) -> str:
    backup = backup_path(path)
    return f"; the previous version is in {backup}" if backup.exists() else ""


def _header(doc: object) -> tuple[str, int, dict[str, object]]:
    if not isinstance(doc, dict):
        raise StateError(f"not a rrpcsync state file: expected a JSON object, not {json_type(doc)}")
    if "format" not in doc:
        raise StateError(f'not a rrpcsync state file: it has no "format": "{FORMAT}"')
    if doc["format"] != FORMAT:
        found = json.dumps(doc["format"], ensure_ascii=False)
        raise StateError(f'not a rrpcsync state file: "format" is {found}, not "{FORMAT}"')
    _check_version(doc.get("version"))
    if doc.keys() != set(HEADER_FIELDS):
        raise StateError(field_set_problem(doc.keys(), HEADER_FIELDS))
    lineage, serial, devices = doc["lineage"], doc["serial"], doc["devices"]
    if not isinstance(lineage, str) or not lineage:
        raise StateError(f"field 'lineage' must be a non-empty string, not {json_type(lineage)}")
    if not is_int(serial) or serial < 0:
        raise StateError(f"field 'serial' must be an integer >= 0, not {json.dumps(serial)}")
    if not isinstance(devices, dict):
        raise StateError(f"field 'devices' must be an object, not {json_type(devices)}")
    return lineage, serial, devices


def _check_version(version: object) -> None:
    if not is_int(version):
        raise StateError(f"field 'version' must be an integer, not {json.dumps(version)}")
    if version > VERSION:
        raise StateError(
            f"written by a newer rrpcsync (state format version {version}; this rrpcsync "
            f"reads version {VERSION}); upgrade rrpcsync"
        )
    if version < VERSION:
        raise StateError(f"unsupported state format version {version}")


def _records(devices: dict[str, object]) -> dict[str, DeviceRecord]:
    records: dict[str, DeviceRecord] = {}
    shared: Shared = {}  # equal texts kept once (at 1M devices: about a fifth of the memory)
    for key, data in devices.items():
        check_key(key)
        records[key] = record_from_dict(key, data, shared, check_hashes=False)
    check_record_hashes(records)
    return records


# --------------------------------------------------------------------------- save


def save_state(state: State) -> None:
    """Write the state with serial + 1 atomically, keep the old file as backup, drop the journal."""
    serial = state.serial + 1
    data = encode_state(state, serial)
    write_atomically(Path(state.location), data)
    state.serial = serial
    state.exists = True
    state.replayed = 0
    remove_journal(Path(state.location))


def state_document(state: State, serial: int) -> dict[str, Any]:
    devices = {key: record_to_dict(state.devices[key]) for key in sorted(state.devices)}
    return {
        "format": FORMAT,
        "version": VERSION,
        "lineage": state.lineage,
        "serial": serial,
        "devices": devices,
    }


def encode_state(state: State, serial: int) -> bytes:
    return utf8(lambda string: state_text(state, serial, string))


def remove_journal(state_path: Path) -> None:
    try:
        os.unlink(journal_path(state_path))
    except FileNotFoundError:
        pass
    except OSError as exc:  # harmless: its entries carry base_serial, so replay skips them
        log.warning("cannot remove journal %s: %s", journal_path(state_path), exc.strerror)


# --------------------------------------------------------------------------- the store


def history_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".history")


class JsonFileStore:
    """The state as one JSON file, with its journal, backup, lock and run history beside it."""

    def __init__(self, path: Path | str) -> None:
        self.path = resolve_state_path(path)  # a symlink and its target share one lock

    @property
    def location(self) -> str:
        return str(self.path)

    def files(self) -> tuple[Path, ...]:
        """Every file of this state: outputs must never be written onto one of them."""
        path = self.path
        return (
            path,
            backup_path(path),
            journal_path(path),
            lock_path(path),
            history_path(path),
        )

    def exists(self) -> bool:
        return self.path.exists()

    def lock(self, command: str, timeout: float = 0.0) -> StateLock:
        return StateLock(self.path, command, timeout=timeout)

    def load(self) -> State:
        return load_state(self.path)

    def recorder(self, state: State) -> Journal:
        return Journal.open(state)

    def save(self, state: State) -> None:
        save_state(state)

    def replace(self, state: State) -> None:
        """Make the file exactly `state`, its serial kept (`state migrate`, `state push`)."""
        write_atomically(self.path, encode_state(state, state.serial))
        remove_journal(self.path)

    def holder(self) -> dict[str, Any] | None:
        return read_holder(self.path)

    def unlock(self, force: bool) -> str:
        return unlock(self.path, force)

    def record_run(self, run: RunRecord) -> None:
        """One JSON line per run in `<state>.history` (0600), appended durably."""
        line = json.dumps(run._asdict(), ensure_ascii=False, sort_keys=True) + "\n"
        path = history_path(self.path)
        try:
            fd = open_for_append(path, "run history")
            try:
                append_durably(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        except OSError as exc:
            raise StateError(f"cannot write run history {path}: {exc.strerror}") from None

    def runs(self) -> list[RunRecord]:
        path = history_path(self.path)
        try:
            lines = read_private(path, "run history").decode("utf-8").splitlines()
        except FileNotFoundError:
            return []
        except UnicodeDecodeError as exc:
            raise StateError(f"cannot read run history {path}: {exc}") from None
        runs = []
        for number, line in enumerate(lines, 1):
            try:
                runs.append(RunRecord(**jsontext.loads(line)))
            except (ValueError, TypeError, RecursionError):
                _warn_history(path, number)
        return runs


def _warn_history(path: Path, number: int) -> None:
    log.warning("%s:%d: ignored a run history line that is not a run record", path, number)
