"""A real PostgreSQL server for the tests: initdb + pg_ctl into a temporary folder.

It listens on 127.0.0.1 (a free port) and a unix socket in its folder, with password
authentication (scram-sha-256) for the user `rrpcsync`, so the tests can check the password
never leaks. As root (CI), initdb and postgres refuse to run, so they run as `nobody`.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USER = "rrpcsync"
PASSWORD = "pg-Secret-4242-xyzzy"
UNPRIVILEGED = "nobody"
START_TIMEOUT_S = 60
# Tests only kill clients, never the server's machine: no need to wait for the disk.
FAST_SETTINGS = "-c fsync=off -c full_page_writes=off"


def find_bin(name: str) -> str | None:
    """A PostgreSQL program: on PATH, or in Debian's /usr/lib/postgresql/N/bin (newest)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
    return candidates[-1] if candidates else None


def _version_key(path: str) -> tuple[int, str]:
    version = Path(path).parent.parent.name
    return (int(version) if version.isdigit() else 0, path)


def missing_reason() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None."""
    for name in ("initdb", "pg_ctl"):
        if find_bin(name) is None:
            return f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev]')"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    folder: Path
    port: int
    run_as: pwd.struct_passwd | None
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres", password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@/{database}?host={self.folder}&port={self.port}"

    def run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the server's user."""
        extra: dict[str, Any] = {}
        if self.run_as is not None:
            extra = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(
            list(args),
            check=True,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.folder,
            timeout=START_TIMEOUT_S,
            **extra,
            **kwargs,
        )

    def start(self, settings: str = FAST_SETTINGS) -> None:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        assert initdb and pg_ctl
        pwfile = self.folder / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        self._own(pwfile)
        self.run(
            initdb,
            "-D",
            str(self.data),
            "-U",
            USER,
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}"
            f" -c max_connections=60 -c shared_buffers=16MB {settings}"
        )
        log = self.folder / "server.log"
        self.run(pg_ctl, "-D", str(self.data), "-l", str(log), "-o", options, "-w", "start")

    def stop(self) -> None:
        pg_ctl = find_bin("pg_ctl")
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.run(str(pg_ctl), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _own(self, path: Path) -> None:
        if self.run_as is not None:
            os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.url(), autocommit=True)

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL (with the password)."""
        name = f"t{next(self._names)}_{os.getpid()}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def terminate_sessions(self, application: str = "rrpcsync") -> int:
        """End every session of that application (pg_terminate_backend); returns how many."""
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (application,),
            ).fetchall()
        return sum(1 for (ended,) in rows if ended)


@contextlib.contextmanager
def running_server(settings: str = FAST_SETTINGS) -> Iterator[PgServer]:
    """A server for the duration of the block; `settings` ("" = PostgreSQL's defaults, as
    the benchmarks use) are extra `-c name=value` options."""
    run_as = pwd.getpwnam(UNPRIVILEGED) if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="rrpcsync-pg-", dir="/tmp"))  # short: socket path
    server = PgServer(folder, free_port(), run_as)
    try:
        server._own(folder)
        try:
            server.start(settings)
        except subprocess.CalledProcessError as exc:
            log = folder / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL failed: {exc.cmd}: {exc.stderr}\n{tail}") from None
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
