"""The embedded SQL store: `--state sqlite:///path/to/state.db`, one row per device.

The database runs in WAL mode: readers never wait for a run, and each group commit appends
only the changed rows. Locks are flock(2) on files next to the database (they die with their
process): `<db>.<state>.lock` (shared by sharded runs, exclusive for the other commands) and
one `<db>.<state>.run-<id>.lock` per run in flight.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from urllib.parse import unquote

from rrpcsync.errors import StateError
from rrpcsync.state.lock import (
    describe_holder,
    flock_nonblocking,
    open_lock_file,
    try_lock,
    unlink_quietly,
)
from rrpcsync.state.sql import DEFAULT_STATE_NAME, Cursor, SqlStore

PREFIX = "sqlite:///"
BUSY_TIMEOUT_MS = 30_000
# Every commit appends whole pages to the WAL, and a pending record is a commit of its own:
# 1 KiB pages (not 4) write 2.5-4x fewer bytes per changed device and load as fast.
PAGE_SIZE = 1024


def sqlite_path(url: str) -> Path:
    """`sqlite:///state.db` is relative to the current folder, `sqlite:////abs/state.db` not."""
    if not url.startswith(PREFIX) or len(url) == len(PREFIX):
        raise StateError(
            f"{url}: a SQLite state is sqlite:///RELATIVE/PATH.db or sqlite:////ABSOLUTE/PATH.db"
        )
    rest = url[len(PREFIX) :]
    if "?" in rest or "#" in rest:
        raise StateError(f"{url}: a SQLite state URL takes no query or fragment")
    return Path(unquote(rest))


class SqliteStore(SqlStore):
    engine_name = "SQLite"
    id_column = "INTEGER PRIMARY KEY AUTOINCREMENT"
    big_integer = "INTEGER"

    def __init__(self, url: str, name: str = DEFAULT_STATE_NAME) -> None:
        self.path = sqlite_path(url) if url.startswith("sqlite:") else Path(url)
        super().__init__(url if url.startswith("sqlite:") else f"{PREFIX}{url}", name)
        self._state_fd: int | None = None
        self._run_fds: dict[str, int] = {}

    # ---- connection

    def _connect(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise StateError(f"{self._location}: the folder {self.path.parent} does not exist")
        if not self.path.exists():
            with contextlib.suppress(FileExistsError):  # private, like the JSON state file
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # a new database only
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise StateError(f"{self._location}: cannot open the database: {exc}") from None
        return conn

    def _database_errors(self) -> tuple[type[Exception], ...]:
        return (sqlite3.Error,)

    def _error(self, exc: Exception) -> StateError:
        return StateError(f"{self._location}: {exc}")

    def _begin(self, cursor: Cursor, durable: bool) -> None:
        # WAL + NORMAL: the commit is in the WAL file (the OS has it) but not fsync'd
        cursor.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        cursor.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first write

    def _table_exists(self, cur: Cursor, table: str) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        return cur.fetchone() is not None

    # ---- locks: flock on files beside the database

    def lock_file(self, run: str | None = None) -> Path:
        suffix = f".run-{run}" if run else ""
        return self.path.with_name(f"{self.path.name}.{self.name}{suffix}.lock")

    def _try_state_lock(self, shared: bool) -> bool:
        if self._state_fd is not None:
            raise StateError(f"{self.location}: this process already holds its lock")
        fd = try_lock(self.lock_file(), shared)
        self._state_fd = fd
        return fd is not None

    def _release_state_lock(self, shared: bool) -> None:
        fd, self._state_fd = self._state_fd, None
        if fd is not None:
            os.close(fd)

    def _hold_run(self, run: str) -> None:
        fd = try_lock(self.lock_file(run))
        if fd is None:
            raise StateError(f"{self.location}: run {run} is already held")
        self._run_fds[run] = fd

    def _release_run(self, run: str) -> None:
        fd = self._run_fds.pop(run, None)
        if fd is not None:
            unlink_quietly(self.lock_file(run))
            os.close(fd)

    def _run_alive(self, run: str) -> bool:
        if run in self._run_fds:
            return True
        path = self.lock_file(run)
        try:
            fd = open_lock_file(path, create=False)
        except FileNotFoundError:
            return False
        try:
            if not flock_nonblocking(fd, path):
                return True
            unlink_quietly(path)  # left by a run that was killed
            return False
        finally:
            os.close(fd)

    def _force_unlock(self) -> str:
        holder = self.holder()
        self.write_holder(None)
        self.forget_runs(self.active_runs_unchecked())
        unlink_quietly(self.lock_file())  # the next command locks a new file
        return (
            f"removed the lock of {self.location} held by {describe_holder(holder)} (--force); "
            "if that run is still going, it may still write the state"
        )
