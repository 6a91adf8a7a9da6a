"""The state's record codec: checked decoding of device records, and the fast byte-exact
JSON text of the state file and of journal lines (formats: docs/state.md)."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any, TypeGuard

from rrpcsync.errors import StateError
from rrpcsync.model import (
    DeviceRecord,
    ErrorInfo,
    Status,
    device_key_problem,
    is_sha256,
    payload_digest,
)
from rrpcsync.secrets import MASK as SENSITIVE_MASK
from rrpcsync.state.store import State

log = logging.getLogger("rrpcsync.state")

FORMAT = "rrpcsync-state"
VERSION = 1
JOURNAL_VERSION = 1
HEADER_FIELDS = ("format", "version", "lineage", "serial", "devices")  # the order written
RECORD_FIELDS = (  # sorted: the order written
    "adopted",
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
# `adopted` (`state adopt`, docs/state.md) likewise: only on adopted records.
OPTIONAL_RECORD_FIELDS = ("adopted", "observed", "observed_at")
REQUIRED_RECORD_FIELDS = tuple(n for n in RECORD_FIELDS if n not in OPTIONAL_RECORD_FIELDS)
ERROR_FIELDS = ("at", "code", "message")
_TEXT_OR_NULL_FIELDS = (
    "adopted",
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


# --------------------------------------------------------------------------- records


def record_to_dict(rec: DeviceRecord) -> dict[str, Any]:
    """The JSON form of a record: every field, nulls included (optional fields only when set),
    keys sorted."""
    error = rec.last_error
    observed = {} if rec.observed is None else {"observed": rec.observed}
    observed_at = {} if rec.observed_at is None else {"observed_at": rec.observed_at}
    adopted = {} if rec.adopted is None else {"adopted": rec.adopted}
    return {
        **adopted,
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


Shared = dict[str | None, str | None]


def record_from_dict(
    key: str, data: object, shared: Shared | None = None, check_hashes: bool = True
) -> DeviceRecord:
    """Validate one record's JSON form; StateError names the device key and the field.

    `shared` (one dict per load) keeps each repeated text once: a large state repeats a few
    payloads, digests, manifest names, times and replies in every record.
    (`check_hashes=False`: the caller checks many at once with `check_record_hashes`.)"""
    record = _plainly_valid_record(data, {} if shared is None else shared)
    if record is None:
        record = _checked_record(key, data)
    if check_hashes:
        _check_hashes(key, record)
    return record


_HEX_DIGITS = re.compile("[0-9a-f]*")


def check_record_hashes(records: Mapping[str, DeviceRecord]) -> None:
    """`_check_hashes` for every record, in bulk (a 100,000-device state loads in one pass);
    the first bad record is found again one by one, for its message."""
    values = list(records.values())
    hashes = [h for r in values for h in (r.payload_sha256, r.target_sha256) if h is not None]
    well_formed = all(len(h) == 64 for h in hashes) and _HEX_DIGITS.fullmatch("".join(hashes))
    sha256 = hashlib.sha256
    try:
        consistent = all(
            sha256(r.payload.encode()).hexdigest() == r.payload_sha256
            for r in values
            if r.payload is not None
            and r.payload_sha256 is not None
            and SENSITIVE_MASK not in r.payload
        )
    except UnicodeEncodeError:  # a lone surrogate: the slow path hashes it as written
        consistent = False
    if well_formed and consistent:
        return
    for key, record in records.items():
        _check_hashes(key, record)


def _check_hashes(key: str, record: DeviceRecord) -> None:
    """Hashes are SHA-256 hex, and `payload_sha256` is the hash of `payload` (unless the
    payload is stored masked: then the hash is of the real bytes, which are not stored)."""
    for name, value in (
        ("payload_sha256", record.payload_sha256),
        ("target_sha256", record.target_sha256),
    ):
        if value is not None and not is_sha256(value):
            raise _bad_record(key, f"field '{name}' must be 64 lowercase hex digits or null")
    payload, digest = record.payload, record.payload_sha256
    if payload is None or digest is None or SENSITIVE_MASK in payload:
        return
    if payload_digest(payload) != digest:
        raise _bad_record(
            key,
            "field 'payload_sha256' is not the SHA-256 of its 'payload' (was the payload "
            "edited by hand?); undo the edit, or restore the state's .backup",
        )


def _plainly_valid_record(data: object, shared: Shared) -> DeviceRecord | None:
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
    same = shared.setdefault
    return DeviceRecord(
        status=_STATUS_BY_VALUE[status],
        payload_sha256=same(payload_sha256, payload_sha256),
        payload=same(payload, payload),
        target_sha256=same(target_sha256, target_sha256),
        request_id=request_id,
        message_id=message_id,
        reply_base64=same(reply_base64, reply_base64),
        reply_text=same(reply_text, reply_text),
        applied_at=same(applied_at, applied_at),
        attempts=attempts,
        last_error=None if error is None else ErrorInfo(**error),
        manifest=same(manifest, manifest),
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
        problem = field_set_problem(data.keys(), REQUIRED_RECORD_FIELDS, OPTIONAL_RECORD_FIELDS)
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
        adopted=data.get("adopted"),
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
        problem = field_set_problem(value.keys(), ERROR_FIELDS)
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


def field_set_problem(
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
    problem = device_key_problem(key)
    if problem is not None:
        raise StateError(problem)


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


def _optional_variants(make: Callable[[Iterable[str]], str]) -> dict[tuple[bool, ...], str]:
    """Templates by which optional fields are set (adopted, observed, observed_at); the
    common record has none."""
    return {
        flags: make(
            n
            for n in RECORD_FIELDS
            if n not in OPTIONAL_RECORD_FIELDS or flags[OPTIONAL_RECORD_FIELDS.index(n)]
        )
        for flags in itertools.product((False, True), repeat=len(OPTIONAL_RECORD_FIELDS))
    }


_NONE_SET = (False,) * len(OPTIONAL_RECORD_FIELDS)
_STATE_RECORDS = _optional_variants(_state_record_template)
_STATE_RECORD = _STATE_RECORDS[_NONE_SET]
_STATE_ERROR = "{\n" + ",\n".join(f'        "{n}": %s' for n in ERROR_FIELDS) + "\n      }"
_JOURNAL_LINES = _optional_variants(_journal_line_template)
_JOURNAL_LINE = _JOURNAL_LINES[_NONE_SET]
_JOURNAL_ERROR = "{" + ",".join(f'"{n}":%s' for n in ERROR_FIELDS) + "}"
# where observed/observed_at go among the required values (adopted sorts first of all)
_OBSERVED_AT = sum(1 for n in REQUIRED_RECORD_FIELDS if n < "observed")


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


def _template(variants: dict[tuple[bool, ...], str], rec: DeviceRecord) -> str:
    return variants[rec.adopted is not None, rec.observed is not None, rec.observed_at is not None]


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
    if rec.observed is None and rec.observed_at is None and rec.adopted is None:
        return values
    observed = tuple(string(v) for v in (rec.observed, rec.observed_at) if v is not None)
    adopted = () if rec.adopted is None else (string(rec.adopted),)
    return (*adopted, *values[:_OBSERVED_AT], *observed, *values[_OBSERVED_AT:])


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
