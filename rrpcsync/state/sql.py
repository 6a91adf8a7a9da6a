"""What the SQL stores share: the schema, its migrations, and the store itself.

`SqlStore` implements the `StateStore` protocol on any DB-API connection; an engine
(`rrpcsync.state.sqlite`, `rrpcsync.state.postgres`) supplies the connection, the few bits of
SQL that differ, and the locks that die with their holder (flock on SQLite, advisory locks on
PostgreSQL). One database holds several states (`--state-name`), one row per device.

Writes are per device: a run's results are committed as they arrive (group commits), and
`save` writes only the keys `State.put`/`State.drop` changed, then bumps the serial. Nothing
is rewritten whole. The model is documented in docs/state.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from rrpcsync.errors import LockedError, StateError
from rrpcsync.jsontext import gc_paused
from rrpcsync.model import DeviceRecord, ErrorInfo, Status
from rrpcsync.state.lock import describe_holder, holder_info
from rrpcsync.state.records import record_from_dict, record_to_dict
from rrpcsync.state.store import RunRecord, State, new_lineage

log = logging.getLogger("rrpcsync.state")

SCHEMA_VERSION = 2
DEFAULT_STATE_NAME = "default"
POLL_SECONDS = 0.1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# Each migration takes the schema from version N-1 to N; a new database runs them all.
# `{id}` is the engine's auto-increment primary key column, `{big}` its 64-bit integer.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: states, one row per device, the lock holder, the run history
        "CREATE TABLE rrpcsync_schema (version INTEGER NOT NULL)",
        "CREATE TABLE rrpcsync_states (name TEXT PRIMARY KEY, lineage TEXT NOT NULL,"
        " serial {big} NOT NULL)",
        "CREATE TABLE rrpcsync_devices (state TEXT NOT NULL, key TEXT NOT NULL,"
        " serial {big} NOT NULL, status TEXT NOT NULL, payload_sha256 TEXT, payload TEXT,"
        " target_sha256 TEXT, request_id TEXT, message_id {big}, reply_base64 TEXT,"
        " reply_text TEXT, applied_at TEXT, attempts INTEGER NOT NULL, error_code TEXT,"
        " error_message TEXT, error_at TEXT, manifest TEXT, observed TEXT, observed_at TEXT,"
        " record TEXT, PRIMARY KEY (state, key)){devices_options}",
        "CREATE TABLE rrpcsync_locks (state TEXT PRIMARY KEY, holder TEXT NOT NULL)",
        "CREATE TABLE rrpcsync_runs (id {id}, state TEXT NOT NULL, started_at TEXT NOT NULL,"
        " finished_at TEXT NOT NULL, command TEXT NOT NULL, ci_url TEXT, commit_sha TEXT,"
        " sent INTEGER NOT NULL, applied INTEGER NOT NULL, failed INTEGER NOT NULL,"
        " failed_by_code TEXT NOT NULL, counts TEXT NOT NULL)",
        "CREATE INDEX rrpcsync_runs_by_state ON rrpcsync_runs (state, id)",
        "INSERT INTO rrpcsync_schema (version) VALUES (0)",
    ),
    (  # 2: sharded applies: the runs in flight and the devices each one has claimed
        "CREATE TABLE rrpcsync_active (state TEXT NOT NULL, run TEXT NOT NULL,"
        " holder TEXT NOT NULL, PRIMARY KEY (state, run))",
        "CREATE TABLE rrpcsync_claims (state TEXT NOT NULL, key TEXT NOT NULL,"
        " run TEXT NOT NULL, PRIMARY KEY (state, key))",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION

# A record's fields have one column each (DeviceRecord's order; last_error in three), so a
# load builds records without parsing JSON. `record` holds the record as JSON instead, only
# when a field holds what the engine cannot store as text (NUL, a lone surrogate).
_FIELD_COLUMNS = (
    "status",
    "payload_sha256",
    "payload",
    "target_sha256",
    "request_id",
    "message_id",
    "reply_base64",
    "reply_text",
    "applied_at",
    "attempts",
    "error_code",
    "error_message",
    "error_at",
    "manifest",
    "observed",
    "observed_at",
    "record",
)
_DEVICE_COLUMNS = ", ".join(("key", "serial", *_FIELD_COLUMNS))
_UPSERT_DEVICE = (
    f"INSERT INTO rrpcsync_devices (state, {_DEVICE_COLUMNS})"
    f" VALUES ({', '.join('?' for _ in range(len(_FIELD_COLUMNS) + 3))})"
    " ON CONFLICT (state, key) DO UPDATE SET serial = excluded.serial, "
    + ", ".join(f"{name} = excluded.{name}" for name in _FIELD_COLUMNS)
)
_STATUS_BY_VALUE = {status.value: status for status in Status}
# What `plan` reads of every device (`load_summary`): the rest (payloads, replies, times) is
# fetched for the devices a plan changes only.
_SUMMARY_COLUMNS = (
    "key, serial, status, payload_sha256, target_sha256, attempts, error_code, manifest, record"
)
_RUN_COLUMNS = (
    "started_at, finished_at, command, ci_url, commit_sha, sent, applied, failed,"
    " failed_by_code, counts"
)


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


def check_state_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise StateError(
            f"state name {json.dumps(name)} must be 1-64 letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def name_key(namespace: str, name: str) -> int:
    """A signed 64-bit key for `name`, namespaced (PostgreSQL advisory locks)."""
    digest = hashlib.sha256(f"rrpcsync:{namespace}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# --------------------------------------------------------------------------- records


def record_json(record: DeviceRecord) -> str:
    """The record as compact JSON, its keys sorted (the JSON file's form, one line)."""
    text = json.dumps(record_to_dict(record), ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it as a \\u escape
        return json.dumps(record_to_dict(record), separators=(",", ":"))
    return text


def device_row(state: str, serial: int, key: str, record: DeviceRecord) -> tuple[Any, ...]:
    if not storable(record) or record.adopted is not None:
        # adopted records (`state adopt`) keep their extra field in the JSON column
        kept = (record.status.value, record.payload_sha256, None, record.target_sha256)
        blank = (None,) * 5 + (record.attempts, None, None, None, record.manifest, None, None)
        return (state, key, serial, *kept, *blank, record_json(record))
    error = record.last_error
    return (
        state,
        key,
        serial,
        record.status.value,
        *record[1:10],
        *((None, None, None) if error is None else error),
        record.manifest,
        record.observed,
        record.observed_at,
        None,
    )


def storable(record: DeviceRecord) -> bool:
    """Whether every text field can be a text column: no NUL (PostgreSQL refuses it) and
    no lone surrogate (not UTF-8)."""
    texts = [value for value in record if type(value) is str]
    if record.last_error is not None:
        texts.extend(record.last_error)
    return all("\x00" not in text and (text.isascii() or _encodes(text)) for text in texts)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def record_from_row(row: Sequence[Any]) -> DeviceRecord:
    """A record from a row of `key, serial, <_FIELD_COLUMNS>`."""
    key = row[0]
    if row[18] is not None:
        return read_record(key, row[18])
    status = _STATUS_BY_VALUE.get(row[2])
    if status is None:
        raise StateError(f"device '{key}': stored status {row[2]!r} is not a status")
    error = None if row[12] is None else ErrorInfo(row[12], row[13], row[14])
    return DeviceRecord._make((status, *row[3:11], int(row[11]), error, *row[15:18], None))


def summary_from_row(row: Sequence[Any]) -> DeviceRecord:
    """A summary record from a row of `_SUMMARY_COLUMNS`: what a plan diffs (status, hashes,
    attempts, the last error's code, manifest); payloads, replies and times are left out."""
    key = row[0]
    if row[8] is not None:
        return summary_of(read_record(key, row[8]))
    status = _STATUS_BY_VALUE.get(row[2])
    if status is None:
        raise StateError(f"device '{key}': stored status {row[2]!r} is not a status")
    error = None if row[6] is None else ErrorInfo(row[6], "", "")
    return DeviceRecord(
        status, row[3], None, row[4], attempts=int(row[5]), last_error=error, manifest=row[7]
    )


def summary_of(record: DeviceRecord) -> DeviceRecord:
    """`record` cut down to what `summary_from_row` reads."""
    error = record.last_error
    return DeviceRecord(
        record.status,
        record.payload_sha256,
        None,
        record.target_sha256,
        attempts=record.attempts,
        last_error=None if error is None else ErrorInfo(error.code, "", ""),
        manifest=record.manifest,
    )


def read_record(key: str, text: str) -> DeviceRecord:
    try:
        data = json.loads(text)
    except ValueError:
        raise StateError(f"device '{key}': its stored record is not valid JSON") from None
    return record_from_dict(key, data)


def run_row(state: str, run: RunRecord) -> tuple[Any, ...]:
    return (
        state,
        run.started_at,
        run.finished_at,
        run.command,
        run.ci_url,
        run.commit,
        run.sent,
        run.applied,
        run.failed,
        json.dumps(dict(run.failed_by_code), sort_keys=True),
        json.dumps(dict(run.counts), sort_keys=True),
    )


def run_from_row(row: Sequence[Any]) -> RunRecord:
    started, finished, command, ci, commit, sent, applied, failed, by_code, counts = row
    return RunRecord(
        started_at=started,
        finished_at=finished,
        command=command,
        ci_url=ci,
        commit=commit,
        sent=int(sent),
        applied=int(applied),
        failed=int(failed),
        failed_by_code=json.loads(by_code),
        counts=json.loads(counts),
    )


# --------------------------------------------------------------------------- the store


class SqlStore(ABC):
    """One named state in a SQL database; an engine subclass supplies the connection."""

    id_column = "INTEGER PRIMARY KEY"
    big_integer = "BIGINT"
    devices_options = ""
    engine_name = "SQL"

    def __init__(self, location: str, name: str = DEFAULT_STATE_NAME) -> None:
        self._location = location
        self.name = check_state_name(name)
        self._conn: Any = None
        self._mutex = threading.RLock()

    # ---- engine specifics

    @abstractmethod
    def _connect(self) -> Any:
        """A new DB-API connection, in autocommit mode (transactions are explicit)."""

    @abstractmethod
    def _begin(self, cursor: Cursor, durable: bool) -> None:
        """Start a write transaction (SQLite takes the write lock at once); unless `durable`,
        its commit need not wait for the disk (it survives a killed process, or client)."""

    def _begin_read(self, cursor: Cursor) -> None:
        cursor.execute("BEGIN")

    @abstractmethod
    def _try_state_lock(self, shared: bool) -> bool:
        """Take the state's lock (shared: a sharded run) if free; it dies with the holder."""

    @abstractmethod
    def _release_state_lock(self, shared: bool) -> None: ...

    @abstractmethod
    def _hold_run(self, run: str) -> None:
        """Mark run `run` as alive until `_release_run` (or the process/connection dies)."""

    @abstractmethod
    def _release_run(self, run: str) -> None: ...

    @abstractmethod
    def _run_alive(self, run: str) -> bool: ...

    @abstractmethod
    def _force_unlock(self) -> str:
        """Take the lock away from a holder that may be alive (`state unlock --force`)."""

    def _schema_lock(self, cursor: Cursor) -> None:  # noqa: B027 (SQLite: BEGIN IMMEDIATE)
        """Serialize schema creation between processes (inside the transaction)."""

    def _error(self, exc: Exception) -> StateError:
        return StateError(f"{self.location}: {exc}")

    def _database_errors(self) -> tuple[type[Exception], ...]:
        return ()

    # ---- connection, transactions, schema

    @property
    def location(self) -> str:
        suffix = "" if self.name == DEFAULT_STATE_NAME else f" (state {self.name})"
        return f"{self._location}{suffix}"

    def connection(self) -> Any:
        if self._conn is None:
            conn = self._connect()
            try:
                self._conn = conn
                self._ensure_schema()
            except BaseException:
                self._conn = None
                with contextlib.suppress(Exception):
                    conn.close()
                raise
        return self._conn

    def close(self) -> None:
        with self._mutex:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def q(self, sql: str) -> str:
        """`sql` in the driver's parameter style (the shared SQL uses `?`)."""
        return sql

    @contextlib.contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Cursor]:
        with self._mutex, self._translated():
            conn = self.connection()
            cursor = conn.cursor()
            self._begin(cursor, durable)
            try:
                yield cursor
            except BaseException:
                with contextlib.suppress(Exception):
                    cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    @contextlib.contextmanager
    def reading(self) -> Iterator[Cursor]:
        """A consistent snapshot for several reads."""
        with self._mutex, self._translated():
            cursor = self.connection().cursor()
            self._begin_read(cursor)
            try:
                yield cursor
            finally:
                with contextlib.suppress(Exception):
                    cursor.execute("COMMIT")

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        errors = self._database_errors()
        try:
            yield
        except errors as exc:
            raise self._error(exc) from None

    def _ensure_schema(self) -> None:
        with self.transaction() as cur:
            self._schema_lock(cur)
            version = self._schema_version(cur)
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self._location}: the database has rrpcsync schema version {version}, "
                    f"newer than this rrpcsync's {SCHEMA_VERSION}; upgrade rrpcsync"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                self._migrate(cur, number)

    def _schema_version(self, cur: Cursor) -> int:
        if not self._table_exists(cur, "rrpcsync_schema"):
            return 0
        cur.execute("SELECT version FROM rrpcsync_schema")
        row = cur.fetchone()
        return 0 if row is None else int(row[0])

    @abstractmethod
    def _table_exists(self, cur: Cursor, table: str) -> bool: ...

    def ddl(self, statement: str) -> str:
        return statement.format(
            id=self.id_column, big=self.big_integer, devices_options=self.devices_options
        )

    def _migrate(self, cur: Cursor, number: int) -> None:
        for statement in MIGRATIONS[number - 1]:
            cur.execute(self.ddl(statement))
        cur.execute(self.q("UPDATE rrpcsync_schema SET version = ?"), (number,))
        if number > 1:
            log.info("%s: migrated the rrpcsync schema to version %d", self._location, number)

    # ---- StateStore: reading

    def exists(self) -> bool:
        with self.reading() as cur:
            return self._header(cur) is not None

    def _header(self, cur: Cursor) -> tuple[str, int] | None:
        cur.execute(
            self.q("SELECT lineage, serial FROM rrpcsync_states WHERE name = ?"), (self.name,)
        )
        row = cur.fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def load(self) -> State:
        with self.reading() as cur:
            header = self._header(cur)
            if header is None:
                return State(self.location, new_lineage())
            cur.execute(
                self.q(f"SELECT {_DEVICE_COLUMNS} FROM rrpcsync_devices WHERE state = ?"),
                (self.name,),
            )
            rows = cur.fetchall()
        lineage, serial = header
        with gc_paused():
            devices = {row[0]: record_from_row(row) for row in rows}
        unsaved = sum(1 for row in rows if row[1] > serial)
        return State(self.location, lineage, serial, devices, exists=True, replayed=unsaved)

    def load_summary(self) -> State:
        """The state as `plan` needs it: every device's summary (`summary_of`), not its full
        record; `records(keys)` fetches the full records of the devices the plan changes."""
        with self.reading() as cur:
            header = self._header(cur)
            if header is None:
                return State(self.location, new_lineage())
            cur.execute(
                self.q(f"SELECT {_SUMMARY_COLUMNS} FROM rrpcsync_devices WHERE state = ?"),
                (self.name,),
            )
            rows = cur.fetchall()
        lineage, serial = header
        with gc_paused():
            devices = {row[0]: summary_from_row(row) for row in rows}
        unsaved = sum(1 for row in rows if row[1] > serial)
        return State(self.location, lineage, serial, devices, exists=True, replayed=unsaved)

    def full_records(self, summaries: Mapping[str, DeviceRecord]) -> dict[str, DeviceRecord] | None:
        """The full records of these devices (their summaries from `load_summary`), or None if
        another run wrote one since (its summary is not the stored record's any more)."""
        full = self.records(summaries)
        if any(
            key not in full or summary_of(full[key]) != summary
            for key, summary in summaries.items()
        ):
            return None
        return full

    def records(self, keys: Iterable[str]) -> dict[str, DeviceRecord]:
        """The stored records of these keys now (a sharded run re-checks what it claimed)."""
        wanted = list(keys)
        found: dict[str, DeviceRecord] = {}
        with self.reading() as cur:
            for chunk in chunks(wanted, 500):
                marks = ", ".join("?" for _ in chunk)
                cur.execute(
                    self.q(
                        f"SELECT {_DEVICE_COLUMNS} FROM rrpcsync_devices"
                        f" WHERE state = ? AND key IN ({marks})"
                    ),
                    (self.name, *chunk),
                )
                found.update((row[0], record_from_row(row)) for row in cur.fetchall())
        return found

    # ---- StateStore: writing

    def recorder(self, state: State) -> SqlRecorder:
        return SqlRecorder(self, state)

    def write_records(
        self, state: State, items: Sequence[tuple[str, DeviceRecord]], durable: bool
    ) -> None:
        """Commit these results at once (a group commit); the state's row is made if new."""
        serial = state.serial + 1  # rows newer than the state's serial: not yet saved
        rows = [device_row(self.name, serial, key, record) for key, record in items]
        with self.transaction(durable) as cur:
            self._ensure_state_row(cur, state)
            cur.executemany(self.q(_UPSERT_DEVICE), rows)

    def _ensure_state_row(self, cur: Cursor, state: State) -> None:
        cur.execute(
            self.q(
                "INSERT INTO rrpcsync_states (name, lineage, serial) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO NOTHING"
            ),
            (self.name, state.lineage, state.serial),
        )
        header = self._header(cur)
        if header is not None and header[0] != state.lineage and not state.exists:
            state.lineage = header[0]  # new when loaded: another run created it since; join it
        elif header is not None and header[0] != state.lineage:
            raise StateError(
                f"{self.location} now has lineage {header[0]}, not {state.lineage} (it was "
                "replaced while this run was going); nothing was written"
            )

    def save(self, state: State) -> None:
        with self.transaction() as cur:
            self._ensure_state_row(cur, state)
            serial = self._next_serial(cur, state)
            self._write_changed(cur, state, serial)
        state.serial = serial
        state.exists = True
        state.replayed = 0
        state.changed.clear()

    def _next_serial(self, cur: Cursor, state: State) -> int:
        header = self._header(cur)
        stored = state.serial if header is None else header[1]
        serial = max(stored, state.serial) + 1  # a concurrent sharded run may have saved
        cur.execute(
            self.q("UPDATE rrpcsync_states SET serial = ? WHERE name = ?"), (serial, self.name)
        )
        return serial

    def _write_changed(self, cur: Cursor, state: State, serial: int) -> None:
        kept = [key for key in state.changed if key in state.devices]
        dropped = [key for key in state.changed if key not in state.devices]
        cur.executemany(
            self.q(_UPSERT_DEVICE),
            [device_row(self.name, serial, key, state.devices[key]) for key in sorted(kept)],
        )
        cur.executemany(
            self.q("DELETE FROM rrpcsync_devices WHERE state = ? AND key = ?"),
            [(self.name, key) for key in sorted(dropped)],
        )

    def replace(self, state: State) -> None:
        """Make the stored state exactly `state` (lineage, serial, devices): migrate, push."""
        rows = [device_row(self.name, state.serial, k, r) for k, r in sorted(state.devices.items())]
        with self.transaction() as cur:
            cur.execute(self.q("DELETE FROM rrpcsync_devices WHERE state = ?"), (self.name,))
            cur.execute(self.q("DELETE FROM rrpcsync_states WHERE name = ?"), (self.name,))
            cur.execute(
                self.q("INSERT INTO rrpcsync_states (name, lineage, serial) VALUES (?, ?, ?)"),
                (self.name, state.lineage, state.serial),
            )
            cur.executemany(self.q(_UPSERT_DEVICE), rows)

    # ---- run history

    def record_run(self, run: RunRecord) -> None:
        with self.transaction() as cur:
            cur.execute(
                self.q(
                    f"INSERT INTO rrpcsync_runs (state, {_RUN_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                run_row(self.name, run),
            )

    def runs(self) -> list[RunRecord]:
        with self.reading() as cur:
            cur.execute(
                self.q(f"SELECT {_RUN_COLUMNS} FROM rrpcsync_runs WHERE state = ? ORDER BY id"),
                (self.name,),
            )
            return [run_from_row(row) for row in cur.fetchall()]

    # ---- locking: the whole state (exclusive), or a sharded run (shared + claims)

    def lock(self, command: str, timeout: float = 0.0) -> SqlLock:
        return SqlLock(self, command, timeout)

    def begin_run(self, command: str, timeout: float = 0.0) -> ShardedRun:
        return ShardedRun(self, command, timeout)

    def wait_for_lock(self, shared: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        announced = False
        while not self._try_state_lock(shared):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockedError(self.locked_message())
            if not announced:
                log.info("waiting up to %.0fs for the lock on %s", timeout, self.location)
                announced = True
            time.sleep(min(POLL_SECONDS, remaining))

    def holder(self) -> dict[str, Any] | None:
        with self.reading() as cur:
            cur.execute(self.q("SELECT holder FROM rrpcsync_locks WHERE state = ?"), (self.name,))
            row = cur.fetchone()
        return None if row is None else parse_json_object(row[0])

    def write_holder(self, holder: Mapping[str, Any] | None) -> None:
        with self.transaction() as cur:
            cur.execute(self.q("DELETE FROM rrpcsync_locks WHERE state = ?"), (self.name,))
            if holder is not None:
                cur.execute(
                    self.q("INSERT INTO rrpcsync_locks (state, holder) VALUES (?, ?)"),
                    (self.name, json.dumps(dict(holder), sort_keys=True)),
                )

    def active_runs(self) -> dict[str, dict[str, Any]]:
        """The sharded runs in flight (their holder info), after forgetting dead ones."""
        with self.reading() as cur:
            cur.execute(
                self.q("SELECT run, holder FROM rrpcsync_active WHERE state = ?"), (self.name,)
            )
            rows = cur.fetchall()
        alive = {run: parse_json_object(text) or {} for run, text in rows if self._run_alive(run)}
        dead = [run for run, _ in rows if run not in alive]
        if dead:
            self.forget_runs(dead)
        return alive

    def forget_runs(self, runs: Sequence[str]) -> None:
        with self.transaction() as cur:
            for run in runs:
                for table in ("rrpcsync_claims", "rrpcsync_active"):
                    cur.execute(
                        self.q(f"DELETE FROM {table} WHERE state = ? AND run = ?"),
                        (self.name, run),
                    )

    def locked_message(self) -> str:
        runs = self.active_runs()
        if runs:
            who = "; ".join(describe_holder(holder) for holder in runs.values())
            return (
                f"state {self.location} has {len(runs)} apply run(s) in flight: {who}; wait for "
                "them (--lock-timeout SECONDS)"
            )
        return (
            f"state {self.location} is locked by {describe_holder(self.holder())}; wait for it "
            "(--lock-timeout SECONDS), or use `rrpcsync state unlock` if it is stale"
        )

    def unlock(self, force: bool) -> str:
        if self._try_state_lock(shared=False):
            try:
                holder = self.holder()
                self.write_holder(None)
                self.forget_runs(list(self.active_runs_unchecked()))
            finally:
                self._release_state_lock(shared=False)
            left = f": removed the record left by {describe_holder(holder)}" if holder else ""
            return f"no lock held on {self.location}{left}"
        who = self.locked_message()
        if not force:
            raise LockedError(
                f"{who}; it may still be running: use `rrpcsync state unlock --force` "
                "if you are sure that run is gone"
            )
        return self._force_unlock()

    def active_runs_unchecked(self) -> list[str]:
        with self.reading() as cur:
            cur.execute(self.q("SELECT run FROM rrpcsync_active WHERE state = ?"), (self.name,))
            return [row[0] for row in cur.fetchall()]

    # ---- claims (sharded applies)

    def claim(self, run: str, keys: Sequence[str]) -> dict[str, str]:
        """Claim `keys` for `run`; returns the keys another live run holds, naming that run."""
        self._forget_dead_claimants(run)
        with self.transaction() as cur:
            cur.executemany(
                self.q(
                    "INSERT INTO rrpcsync_claims (state, key, run) VALUES (?, ?, ?)"
                    " ON CONFLICT (state, key) DO NOTHING"
                ),
                [(self.name, key, run) for key in keys],
            )
            cur.execute(
                self.q(
                    "SELECT c.key, a.holder FROM rrpcsync_claims c JOIN rrpcsync_active a"
                    " ON a.state = c.state AND a.run = c.run WHERE c.state = ? AND c.run <> ?"
                ),
                (self.name, run),
            )
            others = {key: text for key, text in cur.fetchall()}
        wanted = set(keys)
        return {
            key: describe_holder(parse_json_object(text))
            for key, text in others.items()
            if key in wanted
        }

    def _forget_dead_claimants(self, run: str) -> None:
        with self.reading() as cur:
            cur.execute(
                self.q("SELECT DISTINCT run FROM rrpcsync_claims WHERE state = ? AND run <> ?"),
                (self.name, run),
            )
            claimants = [row[0] for row in cur.fetchall()]
        dead = [other for other in claimants if not self._run_alive(other)]
        if dead:
            log.info("%s: released the claims of %d run(s) that died", self.location, len(dead))
            self.forget_runs(dead)

    def register_run(self, run: str, holder: Mapping[str, Any]) -> None:
        with self.transaction() as cur:
            cur.execute(
                self.q("INSERT INTO rrpcsync_active (state, run, holder) VALUES (?, ?, ?)"),
                (self.name, run, json.dumps(dict(holder), sort_keys=True)),
            )


def parse_json_object(text: object) -> dict[str, Any] | None:
    try:
        value = json.loads(str(text))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- recorder


class SqlRecorder:
    """Commits each batch of results as it arrives (the executor batches: group commits)."""

    def __init__(self, store: SqlStore, state: State) -> None:
        self.store = store
        self.state = state
        self._closed = False

    def append_many(self, items: Iterable[tuple[str, DeviceRecord]], sync: bool = True) -> None:
        """Commit them; `sync=False` (pending records) does not wait for the disk: it survives
        a killed process (or client), not a power cut of the database's machine."""
        if self._closed:
            raise ValueError(f"recorder of {self.store.location} is closed")
        batch = list(items)
        if batch:
            self.store.write_records(self.state, batch, durable=sync)

    def close(self) -> None:
        self._closed = True


# --------------------------------------------------------------------------- locks


class SqlLock:
    """The exclusive lock on one state: no other command, and no sharded run, writes it."""

    def __init__(self, store: SqlStore, command: str, timeout: float) -> None:
        self.store = store
        self.command = command
        self.timeout = timeout
        self.held = False

    def acquire(self) -> None:
        if self.held:
            return
        self.store.wait_for_lock(shared=False, timeout=self.timeout)
        self.held = True
        try:
            previous = self.store.holder()
            if previous:
                log.warning(
                    "took over a stale lock left by %s: it died without unlocking",
                    describe_holder(previous),
                )
            self.store.write_holder(holder_info(self.command))
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            with contextlib.suppress(StateError):
                self.store.write_holder(None)
        finally:
            self.store._release_state_lock(shared=False)

    def __enter__(self) -> SqlLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class ShardedRun:
    """A run that writes only the devices it claims: others with disjoint claims go at once.

    Entering takes the state's lock shared (an exclusive command such as `state rm` waits for
    every run), registers the run, and holds a lock of its own that dies with it, so that its
    claims are released when it is killed.
    """

    def __init__(self, store: SqlStore, command: str, timeout: float) -> None:
        self.store = store
        self.command = command
        self.timeout = timeout
        self.run = uuid.uuid4().hex
        self.holder = holder_info(command)
        self.holder["run"] = self.run
        self._entered = False

    def __enter__(self) -> ShardedRun:
        self.store.wait_for_lock(shared=True, timeout=self.timeout)
        try:
            self.store._hold_run(self.run)
            self.store.register_run(self.run, self.holder)
        except BaseException:
            self.store._release_run(self.run)
            self.store._release_state_lock(shared=True)
            raise
        self._entered = True
        return self

    def claim(self, keys: Sequence[str]) -> dict[str, str]:
        """Claim the devices this run will send; returns those another run holds (skip them)."""
        return self.store.claim(self.run, keys)

    def __exit__(self, *exc_info: object) -> None:
        if not self._entered:
            return
        self._entered = False
        try:
            with contextlib.suppress(StateError):
                self.store.forget_runs([self.run])
        finally:
            try:
                self.store._release_run(self.run)
            finally:
                self.store._release_state_lock(shared=True)
