"""The apply journal: one JSON line per device result, fsync'd before the device counts as
done; replayed on top of the state by the next command (docs/state.md)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from rrpcsync import jsontext
from rrpcsync.errors import StateError
from rrpcsync.jsontext import gc_paused
from rrpcsync.model import DeviceRecord
from rrpcsync.state.files import append_durably, open_for_append, reopen_if_removed
from rrpcsync.state.paths import open_private, read_private
from rrpcsync.state.records import (
    JOURNAL_VERSION,
    check_key,
    is_int,
    journal_text,
    json_type,
    record_from_dict,
    utf8,
)
from rrpcsync.state.store import State

log = logging.getLogger("rrpcsync.state")


def journal_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".journal")


# --------------------------------------------------------------------------- journal replay


def replay_journal(state: State) -> None:
    """Apply `<state>.journal` on top of `state`: later entries for a key win."""
    path = journal_path(Path(state.location))
    try:
        raw = read_private(path, "journal")
    except FileNotFoundError:
        return
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
        entry = jsontext.loads(line, max_depth=None)  # entries are checked field by field
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, or over a limit
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
            fd = open_for_append(path)
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
            self._fd = reopen_if_removed(self._fd, self.path)
            append_durably(self._fd, data, sync)
        except OSError as exc:
            raise StateError(f"cannot write journal {self.path}: {exc.strerror}") from None
        self._pending.clear()


def journal_line(lineage: str, base_serial: int, key: str, record: DeviceRecord) -> bytes:
    return utf8(lambda string: journal_text(lineage, base_serial, key, record, string))


def drop_torn_tail(path: Path) -> None:
    """Cut what replay ignores (a torn or invalid last line), so new entries follow valid ones."""
    try:
        fd = open_private(path, os.O_RDWR, "journal")
    except FileNotFoundError:
        return
    with os.fdopen(fd, "rb+") as file:
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
            jsontext.loads(line, max_depth=None)
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
