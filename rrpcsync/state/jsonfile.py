"""The state file: load (replaying the apply journal), atomic save, and the journal itself.

Only this module writes the state. The formats are documented for users in docs/state.md;
the lock (`StateLock`, `unlock`, `read_holder`) lives in rrpcsync/lock.py and is re-exported.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import operator
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from json.encoder import encode_basestring, encode_basestring_ascii
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

from rrpcsync.errors import StateError
from rrpcsync.model import DeviceRecord, ErrorInfo, Status
from rrpcsync.state.lock import StateLock, lock_path, read_holder, unlink_quietly, unlock
from rrpcsync.state.store import RunRecord, State, new_lineage, utc_now

__all__ = [
    "FORMAT",
    "JOURNAL_VERSION",
    "RECORD_FIELDS",
    "VERSION",
    "Journal",
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

FORMAT = "rrpcsync-state"
VERSION = 1
JOURNAL_VERSION = 1
HEADER_FIELDS = ("format", "version", "lineage", "serial", "devices")  # the order written
RECORD_FIELDS = (  # sorted: the order written
    "applied_at",
    "attempts",
    "last_error",
    "manifest",
    "message_id",
    "observed",
    "observed_at",
    "payload",
    "payload_sha256",
    "reply_base64",
    "reply_text",
    "request_id",
    "status",
    "target_sha256",
)
# Added within version 1 (drift probes, docs/drift.md): written only when set, so the records
# of devices never probed read exactly as before, and files without them load.
OPTIONAL_RECORD_FIELDS = ("observed", "observed_at")
REQUIRED_RECORD_FIELDS = tuple(n for n in RECORD_FIELDS if n not in OPTIONAL_RECORD_FIELDS)
ERROR_FIELDS = ("at", "code", "message")
_TEXT_OR_NULL_FIELDS = (
    "applied_at",
    "manifest",
    "observed",
    "observed_at",
    "payload",
    "payload_sha256",
    "reply_base64",
    "reply_text",
    "request_id",
    "target_sha256",
)
_RECORD_FIELD_SET = frozenset(REQUIRED_RECORD_FIELDS)
_ALL_RECORD_FIELD_SET = frozenset(RECORD_FIELDS)
_ERROR_FIELD_SET = frozenset(ERROR_FIELDS)
_TEXT_OR_NULL_TYPES = frozenset({str, type(None)})
_INT_OR_NULL_TYPES = frozenset({int, type(None)})
_record_values = operator.itemgetter(*REQUIRED_RECORD_FIELDS)
_STATUS_BY_VALUE = {status.value: status for status in Status}


def journal_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".journal")


def backup_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".backup")


# --------------------------------------------------------------------------- records


def record_to_dict(rec: DeviceRecord) -> dict[str, Any]:
    """The JSON form of a record: every field, nulls included (optional fields only when set),
    keys sorted."""
    error = rec.last_error
    observed = {} if rec.observed is None else {"observed": rec.observed}
    observed_at = {} if rec.observed_at is None else {"observed_at": rec.observed_at}
    return {
        "applied_at": rec.applied_at,
        "attempts": rec.attempts,
        "last_error": None
        if error is None
        else {"at": error.at, "code": error.code, "message": error.message},
        "manifest": rec.manifest,
        "message_id": rec.message_id,
        **observed,
        **observed_at,
        "payload": rec.payload,
        "payload_sha256": rec.payload_sha256,
        "reply_base64": rec.reply_base64,
        "reply_text": rec.reply_text,
        "request_id": rec.request_id,
        "status": rec.status.value,
        "target_sha256": rec.target_sha256,
    }


def record_from_dict(key: str, data: object) -> DeviceRecord:
    """Validate one record's JSON form; StateError names the device key and the field."""
    record = _plainly_valid_record(data)
    return record if record is not None else _checked_record(key, data)


def _plainly_valid_record(data: object) -> DeviceRecord | None:
    """The record if `data` is exactly what save writes (type checks in bulk); else None."""
    if type(data) is not dict or data.keys() != _RECORD_FIELD_SET:
        return None
    (
        applied_at,
        attempts,
        error,
        manifest,
        message_id,
        payload,
        payload_sha256,
        reply_base64,
        reply_text,
        request_id,
        status,
        target_sha256,
    ) = _record_values(data)
    texts = {
        type(applied_at),
        type(manifest),
        type(payload),
        type(payload_sha256),
        type(reply_base64),
        type(reply_text),
        type(request_id),
        type(target_sha256),
    }
    if not (
        texts <= _TEXT_OR_NULL_TYPES
        and type(message_id) in _INT_OR_NULL_TYPES
        and type(attempts) is int
        and attempts >= 0
        and type(status) is str
        and status in _STATUS_BY_VALUE
        and (error is None or _is_plain_error(error))
    ):
        return None
    return DeviceRecord(
        status=_STATUS_BY_VALUE[status],
        payload_sha256=payload_sha256,
        payload=payload,
        target_sha256=target_sha256,
        request_id=request_id,
        message_id=message_id,
        reply_base64=reply_base64,
        reply_text=reply_text,
        applied_at=applied_at,
        attempts=attempts,
        last_error=None if error is None else ErrorInfo(**error),
        manifest=manifest,
    )


def _is_plain_error(error: object) -> bool:
    return (
        type(error) is dict
        and error.keys() == _ERROR_FIELD_SET
        and {type(value) for value in error.values()} == {str}
    )


def _checked_record(key: str, data: object) -> DeviceRecord:
    if not isinstance(data, dict):
        raise _bad_record(key, f"must be an object, not {json_type(data)}")
    if not _RECORD_FIELD_SET <= data.keys() <= _ALL_RECORD_FIELD_SET:
        problem = _field_set_problem(data.keys(), REQUIRED_RECORD_FIELDS, OPTIONAL_RECORD_FIELDS)
        raise _bad_record(key, problem)
    for name in _TEXT_OR_NULL_FIELDS:
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise _bad_field(key, name, "a string or null", value)
    return DeviceRecord(
        status=_status(key, data["status"]),
        payload_sha256=data["payload_sha256"],
        payload=data["payload"],
        target_sha256=data["target_sha256"],
        request_id=data["request_id"],
        message_id=_message_id(key, data["message_id"]),
        reply_base64=data["reply_base64"],
        reply_text=data["reply_text"],
        applied_at=data["applied_at"],
        attempts=_attempts(key, data["attempts"]),
        last_error=_last_error(key, data["last_error"]),
        manifest=data["manifest"],
        observed=data.get("observed"),
        observed_at=data.get("observed_at"),
    )


def _status(key: str, value: object) -> Status:
    status = _STATUS_BY_VALUE.get(value) if isinstance(value, str) else None
    if status is None:
        choices = " | ".join(_STATUS_BY_VALUE)
        raise _bad_record(key, f"field 'status' must be {choices}, not {json.dumps(value)}")
    return status


def _message_id(key: str, value: object) -> int | None:
    if value is None or is_int(value):
        return value
    raise _bad_field(key, "message_id", "an integer or null", value)


def _attempts(key: str, value: object) -> int:
    if is_int(value) and value >= 0:
        return value
    raise _bad_field(key, "attempts", "an integer >= 0", value)


def _last_error(key: str, value: object) -> ErrorInfo | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad_field(key, "last_error", "an object {code, message, at} or null", value)
    if value.keys() != _ERROR_FIELD_SET:
        problem = _field_set_problem(value.keys(), ERROR_FIELDS)
        raise _bad_record(key, f"field 'last_error': {problem}")
    for name in ERROR_FIELDS:
        if not isinstance(value[name], str):
            raise _bad_field(key, f"last_error.{name}", "a string", value[name])
    return ErrorInfo(code=value["code"], message=value["message"], at=value["at"])


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _field_set_problem(
    present: Iterable[str], expected: Iterable[str], optional: Iterable[str] = ()
) -> str:
    present_set, expected_set = set(present), set(expected)
    missing = sorted(expected_set - present_set)
    if missing:
        return f"missing field '{missing[0]}'"
    unknown = sorted(present_set - expected_set - set(optional), key=str)
    return f"unknown field '{unknown[0]}' (a typo, or written by a newer rrpcsync?)"


def _bad_record(key: str, problem: str) -> StateError:
    return StateError(f"device '{key}': {problem}")


def _bad_field(key: str, name: str, expected: str, value: object) -> StateError:
    return _bad_record(key, f"field '{name}' must be {expected}, not {json_type(value)}")


def check_key(key: str) -> None:
    product_id, slash, device_name = key.partition("/")
    if not (product_id and slash and device_name) or "/" in device_name:
        raise StateError(f"device key '{key}' is not of the form ProductId/DeviceName")


# --------------------------------------------------------------------------- load


def load_state(path: Path) -> State:
    """Read the state (a missing file is an empty state) and replay its journal on top."""
    state = read_state_file(Path(path))
    replay_journal(state)
    return state


def read_state_file(path: Path) -> State:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return State(str(path), new_lineage())
    except OSError as exc:
        raise StateError(f"cannot read state file {path}: {exc.strerror}") from None
    with gc_paused():
        doc = _parse_state_json(path, raw)
        try:
            lineage, serial, devices = _header(doc)
            records = _records(devices)
        except StateError as exc:
            raise StateError(f"{path}: {exc}") from None
    if raw.count(b'"status"') > len(records):  # more records written than read: a repeated key?
        _check_unique_keys(path, raw)
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


def _check_unique_keys(path: Path, raw: bytes) -> None:
    """json.loads keeps the last of repeated keys: a second "devices" (or device key) would
    silently hide records, even all of them. Only run when the cheap count above disagrees."""
    try:
        json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_pairs)
    except _RepeatedKey as exc:
        raise StateError(
            f"{path}: the key {json.dumps(exc.args[0], ensure_ascii=False)} appears twice in "
            f"one object (a bad merge or edit?){_backup_hint(path)}"
        ) from None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    # Building 10^5 records (and 10^6 JSON values) triggers repeated full collections that
    # find nothing to free; pausing the collector makes a large load about a third faster.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parse_state_json(path: Path, raw: bytes) -> object:
    if not raw.strip():
        raise StateError(f"{path}: the file is empty{_backup_hint(path)}")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StateError(f"{path}: not UTF-8 text (byte {exc.start}){_backup_hint(path)}") from None
    except json.JSONDecodeError as exc:
        raise StateError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}{_backup_hint(path)}"
        ) from None


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
        raise StateError(_field_set_problem(doc.keys(), HEADER_FIELDS))
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
    for key, data in devices.items():
        check_key(key)
        records[key] = record_from_dict(key, data)
    return records


# --------------------------------------------------------------------------- journal replay


def replay_journal(state: State) -> None:
    """Apply `<state>.journal` on top of `state`: later entries for a key win."""
    path = journal_path(Path(state.location))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateError(f"cannot read journal {path}: {exc.strerror}") from None
    lines = raw.split(b"\n")
    if lines[-1]:
        _warn(state, f"{path}:{len(lines)}: ignored an incomplete last line (a run was killed)")
    lines.pop()  # the torn tail, or b"" after the final newline
    with gc_paused():
        _replay_lines(state, path, lines)


def _replay_lines(state: State, path: Path, lines: list[bytes]) -> None:
    adopt_lineage = not state.exists  # the first apply died before saving: take its lineage
    for number, line in enumerate(lines, start=1):
        entry = _journal_entry(state, path, number, line, is_last=number == len(lines))
        if entry is None:
            continue
        if adopt_lineage and isinstance(entry.get("lineage"), str):
            state.lineage = entry["lineage"]
        adopt_lineage = False
        _replay_entry(state, path, number, entry)


def _warn(state: State, message: str) -> None:
    state.warnings.append(message)
    log.warning("%s", message)


def _journal_entry(
    state: State, path: Path, number: int, line: bytes, is_last: bool
) -> dict[str, Any] | None:
    if not line.strip():
        return None  # a blank line (an editor's) holds no entry
    try:
        entry = json.loads(line)
    except ValueError as exc:  # JSONDecodeError or UnicodeDecodeError
        if is_last:  # garbage after a crash (e.g. a block of zeros) where the last write was
            _warn(state, f"{path}:{number}: ignored an invalid last line (a run was killed)")
            return None
        raise StateError(
            f"{path}:{number}: not a valid journal entry ({exc}); fix or delete that line (or "
            "the whole journal, and the devices it recorded will be sent again)"
        ) from None
    if not isinstance(entry, dict):
        raise StateError(f"{path}:{number}: a journal entry must be an object")
    return entry


def _replay_entry(state: State, path: Path, number: int, entry: dict[str, Any]) -> None:
    try:
        key, record = _entry_record(state, entry)
    except StateError as exc:
        raise StateError(f"{path}:{number}: {exc}") from None
    if record is not None:
        state.devices[key] = record
        state.replayed += 1


def _entry_record(state: State, entry: dict[str, Any]) -> tuple[str, DeviceRecord | None]:
    """The entry's key and record; record None if the state already contains it."""
    version = entry.get("v")
    if version != JOURNAL_VERSION:
        raise StateError(
            f"journal entry version {json.dumps(version)}, not {JOURNAL_VERSION} "
            "(written by a newer rrpcsync?)"
        )
    _check_lineage(state, entry.get("lineage"))
    key = entry.get("key")
    if not isinstance(key, str):
        raise StateError("journal entry has no 'key'")
    check_key(key)
    record = record_from_dict(key, entry.get("record"))
    return key, (record if _entry_is_new(state, entry.get("base_serial")) else None)


def _check_lineage(state: State, lineage: object) -> None:
    if not isinstance(lineage, str) or not lineage:
        raise StateError("journal entry has no 'lineage'")
    if lineage != state.lineage:
        raise StateError(
            f"journal belongs to another state (lineage {lineage}, but {state.location} has "
            f"lineage {state.lineage}); move the journal away if it was left over from another "
            "state"
        )


def _entry_is_new(state: State, base_serial: object) -> bool:
    # An entry is written on top of state serial N. A save (N -> N+1) that crashed after the
    # rename but before deleting the journal leaves entries that are already in the state.
    if base_serial is None:
        return True
    if not is_int(base_serial):
        raise StateError(f"'base_serial' must be an integer, not {json_type(base_serial)}")
    if base_serial > state.serial:
        raise StateError(
            f"journal entry was written on top of serial {base_serial}, but {state.location} has "
            f"serial {state.serial} (was an older state restored?); move the journal away to use "
            "the state as it is"
        )
    return base_serial == state.serial


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


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, backup link, rename, fsync the folder."""
    target = path.resolve() if path.is_symlink() else path
    try:
        temp = _write_temp_file(target, data)
        try:
            keep_backup(target)
            os.replace(temp, target)
        except BaseException:
            unlink_quietly(temp)
            raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StateError(
            f"cannot write state file {target}: {reason}; it was not changed"
        ) from None
    try:
        fsync_dir(target.parent)
    except OSError as exc:
        raise StateError(f"wrote {target} but cannot sync its folder: {exc.strerror}") from None


def _write_temp_file(target: Path, data: bytes) -> Path:
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:  # mkstemp: mode 0600
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        unlink_quietly(Path(name))
        raise
    return Path(name)


def keep_backup(target: Path) -> None:
    """Make `<state>.backup` the current file (a hard link, or a copy), before it is replaced."""
    backup = backup_path(target)
    staging = backup.with_name(f".{backup.name}.tmp")
    unlink_quietly(staging)
    try:
        os.link(target, staging)
    except FileNotFoundError:
        return  # the first save: nothing to keep
    except OSError:  # no hard links on this file system
        _copy_private(target, staging)
    else:
        _make_link_private(target, staging)
    try:
        os.replace(staging, backup)
    except BaseException:
        unlink_quietly(staging)
        raise


def _make_link_private(target: Path, link: Path) -> None:
    """The link shares the state file's inode, whose mode may be looser (a git checkout or a
    CI cache writes 0644): tighten it (the state file is about to be replaced by a 0600 one
    anyway), or copy the file if this user may not."""
    if stat.S_IMODE(os.stat(link).st_mode) & 0o077 == 0:
        return
    try:
        os.chmod(link, 0o600)
    except OSError:
        unlink_quietly(link)
        _copy_private(target, link)


def _copy_private(source: Path, destination: Path) -> None:
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def remove_journal(state_path: Path) -> None:
    try:
        os.unlink(journal_path(state_path))
    except FileNotFoundError:
        pass
    except OSError as exc:  # harmless: its entries carry base_serial, so replay skips them
        log.warning("cannot remove journal %s: %s", journal_path(state_path), exc.strerror)


# --------------------------------------------------------------------------- JSON text
# The state and journal texts are filled into templates rather than made by json.dumps: with
# indent, json.dumps runs its pure-Python encoder (seconds for 100,000 devices), and even the
# compact C encoder costs more to set up than a record takes. Tests check the output is exactly
# json.dumps(..., indent=2 / separators=(",", ":"), ensure_ascii=False).

StringEncoder = Callable[[str], str]

_STATE_HEAD = (
    '{\n  "format": %s,\n  "version": %d,\n  "lineage": %s,\n  "serial": %d,\n  "devices": '
)


def _state_record_template(names: Iterable[str]) -> str:
    return "    %s: {\n" + ",\n".join(f'      "{n}": %s' for n in names) + "\n    }"


def _journal_line_template(names: Iterable[str]) -> str:
    return (
        '{"v":%d,"lineage":%s,"base_serial":%d,"key":%s,"record":{'
        + ",".join(f'"{n}":%s' for n in names)
        + "}}\n"
    )


def _optional_variants(make: Callable[[Iterable[str]], str]) -> dict[tuple[bool, bool], str]:
    """Templates by (observed set, observed_at set); the common record has neither."""
    return {
        (observed, at): make(
            n for n in RECORD_FIELDS if (n != "observed" or observed) and (n != "observed_at" or at)
        )
        for observed in (False, True)
        for at in (False, True)
    }


_STATE_RECORDS = _optional_variants(_state_record_template)
_STATE_RECORD = _STATE_RECORDS[False, False]
_STATE_ERROR = "{\n" + ",\n".join(f'        "{n}": %s' for n in ERROR_FIELDS) + "\n      }"
_JOURNAL_LINES = _optional_variants(_journal_line_template)
_JOURNAL_LINE = _JOURNAL_LINES[False, False]
_JOURNAL_ERROR = "{" + ",".join(f'"{n}":%s' for n in ERROR_FIELDS) + "}"
_OPTIONAL_AT = RECORD_FIELDS.index(OPTIONAL_RECORD_FIELDS[0])  # both sort side by side there


def state_text(state: State, serial: int, string: StringEncoder = encode_basestring) -> str:
    """The state file's text: `json.dumps(state_document(...), indent=2, ensure_ascii=False)`."""
    head = _STATE_HEAD % (string(FORMAT), VERSION, string(state.lineage), serial)
    if not state.devices:
        return head + "{}\n}\n"
    devices = state.devices
    records = ",\n".join(
        _template(_STATE_RECORDS, devices[key])
        % (string(key), *encoded_fields(devices[key], _STATE_ERROR, string))
        for key in sorted(devices)
    )
    return f"{head}{{\n{records}\n  }}\n}}\n"


def journal_text(
    lineage: str,
    base_serial: int,
    key: str,
    record: DeviceRecord,
    string: StringEncoder = encode_basestring,
) -> str:
    """One journal line: the entry as compact JSON, then a newline."""
    fields = encoded_fields(record, _JOURNAL_ERROR, string)
    line = _template(_JOURNAL_LINES, record)
    return line % (JOURNAL_VERSION, string(lineage), base_serial, string(key), *fields)


def _template(variants: dict[tuple[bool, bool], str], rec: DeviceRecord) -> str:
    return variants[rec.observed is not None, rec.observed_at is not None]


def encoded_fields(
    rec: DeviceRecord, error_template: str, string: StringEncoder
) -> tuple[str, ...]:
    """The record's values as JSON text, in RECORD_FIELDS order (optional ones when set)."""
    error = rec.last_error
    values = (
        "null" if rec.applied_at is None else string(rec.applied_at),
        f"{rec.attempts:d}",
        "null"
        if error is None
        else error_template % (string(error.at), string(error.code), string(error.message)),
        "null" if rec.manifest is None else string(rec.manifest),
        "null" if rec.message_id is None else f"{rec.message_id:d}",
        "null" if rec.payload is None else string(rec.payload),
        "null" if rec.payload_sha256 is None else string(rec.payload_sha256),
        "null" if rec.reply_base64 is None else string(rec.reply_base64),
        "null" if rec.reply_text is None else string(rec.reply_text),
        "null" if rec.request_id is None else string(rec.request_id),
        string(rec.status.value),
        "null" if rec.target_sha256 is None else string(rec.target_sha256),
    )
    if rec.observed is None and rec.observed_at is None:
        return values
    optional = tuple(string(v) for v in (rec.observed, rec.observed_at) if v is not None)
    return (*values[:_OPTIONAL_AT], *optional, *values[_OPTIONAL_AT:])


def utf8(make_text: Callable[[StringEncoder], str]) -> bytes:
    """UTF-8 of the text; strings with a lone surrogate (not encodable) are \\u-escaped."""
    try:
        return make_text(encode_basestring).encode("utf-8")
    except UnicodeEncodeError:
        return make_text(_escape_if_not_utf8).encode("utf-8")


def _escape_if_not_utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return encode_basestring_ascii(text)
    return encode_basestring(text)


# --------------------------------------------------------------------------- journal


class Journal:
    """Append-only JSON lines next to the state: one entry per device result.

    `append` buffers; `flush` writes the buffer and fsyncs once, so a caller counts a device as
    done only after `flush` (or `append_many`) returns. Thread-safe. Do not `save_state` while
    entries are buffered: save deletes the journal (later flushes start a new file).
    """

    def __init__(self, state: State, path: Path, fd: int) -> None:
        self.state = state
        self.path = path
        self._fd: int | None = fd
        self._pending: list[bytes] = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, state: State) -> Journal:
        path = journal_path(Path(state.location))
        try:
            drop_torn_tail(path)
            fd = _open_for_append(path)
        except OSError as exc:
            raise StateError(f"cannot open journal {path}: {exc.strerror}") from None
        return cls(state, path, fd)

    def append(self, key: str, record: DeviceRecord) -> None:
        line = journal_line(self.state.lineage, self.state.serial, key, record)
        with self._lock:
            self._check_open()
            self._pending.append(line)

    def append_many(self, items: Iterable[tuple[str, DeviceRecord]], sync: bool = True) -> None:
        """Append all, then write them with one fsync (`sync=False`: hand them to the OS only,
        which survives a killed process but not a power cut)."""
        lineage, serial = self.state.lineage, self.state.serial
        lines = [journal_line(lineage, serial, key, record) for key, record in items]
        with self._lock:
            self._check_open()
            self._pending.extend(lines)
            self._flush_pending(sync=False)
            fd = self._fd
        if sync and fd is not None:
            # outside the lock: writers that only hand records to the OS (the event loop's
            # pending records) must not wait for this fsync; it covers their bytes too
            try:
                os.fsync(fd)
            except OSError as exc:
                raise StateError(f"cannot write journal {self.path}: {exc.strerror}") from None

    def flush(self) -> None:
        with self._lock:
            self._flush_pending()

    def close(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            try:
                self._flush_pending()
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._fd is None:
            raise ValueError(f"journal {self.path} is closed")

    def _flush_pending(self, sync: bool = True) -> None:
        if not self._pending or self._fd is None:
            return
        data = b"".join(self._pending)
        try:
            self._fd = _reopen_if_removed(self._fd, self.path)
            _append_durably(self._fd, data, sync)
        except OSError as exc:
            raise StateError(f"cannot write journal {self.path}: {exc.strerror}") from None
        self._pending.clear()


def journal_line(lineage: str, base_serial: int, key: str, record: DeviceRecord) -> bytes:
    return utf8(lambda string: journal_text(lineage, base_serial, key, record, string))


def _open_for_append(path: Path) -> int:
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if created:
        fsync_dir(path.parent)  # so the journal itself survives a power cut
    return fd


def _reopen_if_removed(fd: int, path: Path) -> int:
    try:
        on_disk = os.stat(path)
        held = os.fstat(fd)
        if (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino):
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)  # a save removed it: entries now go on top of the new serial
    return _open_for_append(path)


def _append_durably(fd: int, data: bytes, sync: bool = True) -> None:
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    except OSError:
        _truncate_quietly(fd, start)  # do not leave a torn line for the next append to follow
        raise


def _truncate_quietly(fd: int, size: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, size)


def drop_torn_tail(path: Path) -> None:
    """Cut what replay ignores (a torn or invalid last line), so new entries follow valid ones."""
    if not path.exists():
        return
    with open(path, "rb+") as file:
        size = file.seek(0, os.SEEK_END)
        end = _end_of_valid_lines(file, size)
        if end < size:
            file.truncate(end)
            file.flush()
            os.fsync(file.fileno())
            log.warning("%s: removed an incomplete last entry (a run was killed)", path)


def _end_of_valid_lines(file: BinaryIO, size: int) -> int:
    end = _rfind_newline(file, size) + 1  # bytes after the last newline are a torn write
    if end == 0:
        return 0
    line_start = _rfind_newline(file, end - 1) + 1
    file.seek(line_start)
    line = file.read(end - 1 - line_start)
    try:
        if line.strip():
            json.loads(line)
    except ValueError:
        return line_start  # an invalid last line, as replay_journal ignores it
    return end


def _rfind_newline(file: BinaryIO, end: int, block: int = 65536) -> int:
    """Offset of the last b"\\n" before `end`, or -1."""
    while end > 0:
        start = max(0, end - block)
        file.seek(start)
        found = file.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found
        end = start
    return -1


# --------------------------------------------------------------------------- the store


def history_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".history")


class JsonFileStore:
    """The state as one JSON file, with its journal, backup, lock and run history beside it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def location(self) -> str:
        return str(self.path)

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

    def holder(self) -> dict[str, Any] | None:
        return read_holder(self.path)

    def unlock(self, force: bool) -> str:
        return unlock(self.path, force)

    def record_run(self, run: RunRecord) -> None:
        """One JSON line per run in `<state>.history` (0600), appended durably."""
        line = json.dumps(run._asdict(), ensure_ascii=False, sort_keys=True) + "\n"
        path = history_path(self.path)
        try:
            fd = _open_for_append(path)
            try:
                _append_durably(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
        except OSError as exc:
            raise StateError(f"cannot write run history {path}: {exc.strerror}") from None

    def runs(self) -> list[RunRecord]:
        path = history_path(self.path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"cannot read run history {path}: {exc}") from None
        runs = []
        for number, line in enumerate(lines, 1):
            try:
                runs.append(RunRecord(**json.loads(line)))
            except (ValueError, TypeError):
                _warn_history(path, number)
        return runs


def _warn_history(path: Path, number: int) -> None:
    log.warning("%s:%d: ignored a run history line that is not a run record", path, number)
