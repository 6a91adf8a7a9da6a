"""The shared SQL store: `--state postgresql://user@host:5432/db?sslmode=…`.

Needs the optional extra `pip install 'rrpcsync[postgres]'` (psycopg 3). The password comes
from `PGPASSWORD`, `~/.pgpass` or the URL (libpq reads them); messages name the database by
its URL without the password. Locks are session advisory locks, so a run that is killed, or
whose connection drops, frees them: the state's lock is keyed on a namespaced hash of the
state name (`rrpcsync:state:NAME`), shared by sharded runs and exclusive for other commands;
each run in flight also holds one of its own (`rrpcsync:run:ID`).
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from rrpcsync.errors import StateError
from rrpcsync.state.lock import describe_holder
from rrpcsync.state.sql import DEFAULT_STATE_NAME, Cursor, SqlStore, name_key

SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_S = 10
_SECRET_PARAMS = frozenset({"password", "passfile"})


def is_postgres_url(spec: str) -> bool:
    return spec.startswith(SCHEMES)


def public_url(url: str) -> str:
    """The URL as messages show it: no password, in the user part or the query."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        user = user.partition(":")[0]
        netloc = f"{user}@{host}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    shown = urlencode([(k, "***" if k in _SECRET_PARAMS else v) for k, v in query])
    return urlunsplit((parts.scheme, netloc, parts.path, shown, ""))


def url_password(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.password:
        return unquote(parts.password)
    for key, value in parse_qsl(parts.query):
        if key == "password":
            return value
    return None


def _advisory_ids(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as (classid, objid): its high and low 32 bits."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


class PostgresStore(SqlStore):
    engine_name = "PostgreSQL"
    id_column = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    big_integer = "BIGINT"
    devices_options = " WITH (fillfactor = 70)"  # room for in-page (HOT) updates of a row

    def __init__(self, url: str, name: str = DEFAULT_STATE_NAME) -> None:
        if not is_postgres_url(url):
            raise StateError(f"{public_url(url)}: not a postgresql:// URL")
        super().__init__(public_url(url), name)
        self._url = url
        self._secret = url_password(url)
        self._state_key = name_key("state", self.name)
        self._runs: set[str] = set()
        self._locks_held = 0
        self._lost = False

    # ---- connection

    def _connect(self) -> Any:
        if self._lost:
            raise StateError(
                f"{self._location}: the connection to the database was lost while this run "
                "held its lock; what was committed before is kept: run the command again"
            )
        psycopg = import_psycopg()
        try:
            return psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="rrpcsync",
            )
        except psycopg.Error as exc:
            raise StateError(
                f"{self._location}: cannot connect to the database: {self._clean(exc)}"
            ) from None

    def _database_errors(self) -> tuple[type[Exception], ...]:
        return (import_psycopg().Error,)

    def _clean(self, exc: Exception) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if self._secret:
            text = text.replace(self._secret, "***")
        return text.replace(self._url, self._location)

    def _error(self, exc: Exception) -> StateError:
        conn = self._conn
        if conn is not None and (conn.closed or conn.broken):
            self._conn = None
            with contextlib.suppress(Exception):
                conn.close()
            if self._locks_held:
                self._lost = True
            return StateError(
                f"{self._location}: lost the connection to the database ({self._clean(exc)}); "
                "the results committed before are kept: run the command again"
            )
        return StateError(f"{self._location}: {self._clean(exc)}")

    def q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _begin(self, cursor: Cursor, durable: bool) -> None:
        cursor.execute("BEGIN")
        if not durable:  # the server has the commit; it need not wait for its WAL flush
            cursor.execute("SET LOCAL synchronous_commit TO off")

    def _begin_read(self, cursor: Cursor) -> None:
        cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def _schema_lock(self, cursor: Cursor) -> None:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (name_key("schema", "rrpcsync"),))

    def _table_exists(self, cur: Cursor, table: str) -> bool:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        return bool(cur.fetchone()[0])

    # ---- advisory locks (session level: they die with the connection)

    def _advisory(self, function: str, key: int) -> bool:
        with self._mutex, self._translated():
            cur = self.connection().cursor()
            cur.execute(f"SELECT {function}(%s)", (key,))
            return bool(cur.fetchone()[0])

    def _try_state_lock(self, shared: bool) -> bool:
        taken = self._advisory(
            "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock", self._state_key
        )
        self._locks_held += taken
        return taken

    def _release_state_lock(self, shared: bool) -> None:
        self._unlock(
            "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock", self._state_key
        )

    def _unlock(self, function: str, key: int) -> None:
        self._locks_held = max(0, self._locks_held - 1)
        if self._conn is None:
            return  # the connection is gone, and its locks with it
        with contextlib.suppress(StateError):
            self._advisory(function, key)
        if not self._locks_held and self._lost:
            self._lost = False

    def _hold_run(self, run: str) -> None:
        if not self._advisory("pg_try_advisory_lock", name_key("run", run)):
            raise StateError(f"{self.location}: run {run} is already held")
        self._locks_held += 1
        self._runs.add(run)

    def _release_run(self, run: str) -> None:
        if run in self._runs:
            self._runs.discard(run)
            self._unlock("pg_advisory_unlock", name_key("run", run))

    def _run_alive(self, run: str) -> bool:
        if run in self._runs:
            return True
        key = name_key("run", run)
        if not self._advisory("pg_try_advisory_lock", key):
            return True
        self._advisory("pg_advisory_unlock", key)
        return False

    def _force_unlock(self) -> str:
        holder = self.holder()
        classid, objid = _advisory_ids(self._state_key)
        with self.reading() as cur:
            cur.execute(
                "SELECT DISTINCT pid FROM pg_locks WHERE locktype = 'advisory'"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid = %s AND objid = %s AND objsubid = 1 AND pid <> pg_backend_pid()",
                (classid, objid),
            )
            pids = [row[0] for row in cur.fetchall()]
        ended = [pid for pid in pids if self._terminate(pid)]
        self.write_holder(None)
        return (
            f"ended {len(ended)} database session(s) holding the lock of {self.location} "
            f"({describe_holder(holder)}) (--force); their runs stop at their next write"
        )

    def _terminate(self, pid: int) -> bool:
        try:
            with self._mutex, self._translated():
                cur = self.connection().cursor()
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
                return bool(cur.fetchone()[0])
        except StateError as exc:
            raise StateError(
                f"{exc}; ending another session needs the pg_signal_backend role or the same "
                "database user"
            ) from None


def import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StateError(
            "the PostgreSQL store needs psycopg 3: pip install 'rrpcsync[postgres]'"
        ) from None
    return psycopg
