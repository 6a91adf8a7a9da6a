"""The state lock: `<state>.lock`, held with flock(2) by every command that writes the state.

The kernel lock is the truth; the JSON inside the file only says who holds it. A lock file
whose flock is free was left by a run that died, so it is taken over. Release unlinks the file
before closing it, so a process that locks a file must check that the path still names the
file it locked (otherwise it locked an orphan and tries again). Formats: docs/state.md.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rrpcsync import jsontext
from rrpcsync.errors import LockedError, StateError
from rrpcsync.state.paths import open_private, read_private, resolve_state_path
from rrpcsync.state.paths import unlink_quietly as unlink_quietly  # re-exported (stores use it)

log = logging.getLogger("rrpcsync.state")

POLL_SECONDS = 0.1
REOPEN_TRIES = 100  # replaced between open and flock this often: something is wrong
_HOLDER_MAX_BYTES = 64 * 1024


def lock_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".lock")


class StateLock:
    """Exclusive lock on one state file; a context manager, or `acquire()`/`release()`."""

    def __init__(self, state_path: Path, command: str, timeout: float = 0.0) -> None:
        self.state_path = resolve_state_path(state_path)
        self.path = lock_path(self.state_path)
        self.command = command
        self.timeout = timeout
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, polling up to `timeout` seconds; raise LockedError naming the holder."""
        if self._fd is not None:
            return
        self._fd = self._wait_for_lock()
        try:
            warn_if_taking_over(self.path, read_holder_fd(self._fd))
            write_holder(self._fd, holder_info(self.command))
        except OSError as exc:
            self.release()
            raise StateError(f"cannot write lock file {self.path}: {exc.strerror}") from None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if is_current_file(fd, self.path):  # not if `unlock --force` gave it to another run
                unlink_quietly(self.path)
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _wait_for_lock(self) -> int:
        deadline = time.monotonic() + self.timeout
        announced = False
        while (fd := try_lock(self.path)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockedError(locked_message(self.state_path, read_holder(self.state_path)))
            if not announced:
                log.info("waiting up to %.0fs for the lock on %s", self.timeout, self.state_path)
                announced = True
            time.sleep(min(POLL_SECONDS, remaining))
        return fd


# --------------------------------------------------------------------------- flock primitives


def try_lock(path: Path, shared: bool = False) -> int | None:
    """An fd holding the flock (exclusive, or `shared`) of the file now at `path`, or None if
    another process holds it the other way. A file its holder released (unlinked), or that
    `state unlock --force` removed, between our open and flock is opened again."""
    for _ in range(REOPEN_TRIES):
        fd = open_lock_file(path, create=True)
        try:
            locked = flock_nonblocking(fd, path, shared)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            return None
        if is_current_file(fd, path):
            return fd
        os.close(fd)
    raise StateError(f"cannot lock {path}: it keeps being replaced")


def open_lock_file(path: Path, create: bool) -> int:
    flags = os.O_RDWR | (os.O_CREAT if create else 0)  # never O_TRUNC
    try:
        return open_private(path, flags, "lock file")
    except FileNotFoundError:
        if not create:
            raise
        raise StateError(f"cannot create lock file {path}: its folder does not exist") from None


def flock_nonblocking(fd: int, path: Path, shared: bool = False) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise StateError(f"cannot lock {path}: {exc.strerror}") from None
    return True


def is_current_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


# --------------------------------------------------------------------------- holder info


def holder_info(command: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "ci_url": ci_url(os.environ if env is None else env),
        "command": command,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def ci_url(env: Mapping[str, str]) -> str | None:
    """The GitHub Actions run that holds the lock, when running in one."""
    parts = [env.get(name) for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    if not all(parts):
        return None
    server, repository, run_id = parts
    return f"{str(server).rstrip('/')}/{repository}/actions/runs/{run_id}"


def write_holder(fd: int, holder: Mapping[str, Any]) -> None:
    data = (json.dumps(holder, sort_keys=True) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def read_holder(state_path: Path) -> dict[str, Any] | None:
    """Who holds (or last held) the lock of this state, or None if there is no lock file."""
    try:
        path = lock_path(resolve_state_path(state_path))
        data = read_private(path, "lock file", _HOLDER_MAX_BYTES)
    except FileNotFoundError:
        return None
    return parse_holder(data)


def read_holder_fd(fd: int) -> dict[str, Any] | None:
    return parse_holder(os.pread(fd, _HOLDER_MAX_BYTES, 0))


def parse_holder(data: bytes) -> dict[str, Any] | None:
    try:
        holder = jsontext.loads(data)
    except ValueError:  # empty, torn, too deep, or not ours
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: Mapping[str, Any] | None) -> str:
    if not holder:
        return "another process (it has not written who it is)"
    details = [f"pid {holder.get('pid')} on {holder.get('host')}", f"since {holder.get('started')}"]
    if holder.get("ci_url"):
        details.append(str(holder["ci_url"]))
    return f"{holder.get('command', 'another command')} ({', '.join(details)})"


def holder_is_dead(holder: Mapping[str, Any] | None) -> bool:
    """True only when we can tell: the holder ran on this host and its pid is gone."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    return isinstance(pid, int) and not isinstance(pid, bool) and not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def locked_message(state_path: Path, holder: Mapping[str, Any] | None) -> str:
    message = f"state {state_path} is locked by {describe_holder(holder)}"
    if holder_is_dead(holder):
        return (
            f"{message}; that pid is no longer running, so the lock looks stale (a forked child "
            "may still hold it): use `rrpcsync state unlock` to remove it"
        )
    return (
        f"{message}; wait for it (--lock-timeout SECONDS), "
        "or use `rrpcsync state unlock` if it is stale"
    )


def warn_if_taking_over(path: Path, previous: Mapping[str, Any] | None) -> None:
    # A clean release unlinks the file, so holder info in a file we just locked was left
    # behind by a run that died (SIGKILL, power loss) while holding it.
    if previous:
        log.warning(
            "took over a stale lock left by pid %s (%s on %s, since %s): it died without unlocking",
            previous.get("pid"),
            previous.get("command"),
            previous.get("host"),
            previous.get("started"),
        )


# --------------------------------------------------------------------------- unlock


def unlock(state_path: Path, force: bool) -> str:
    """Remove the lock file of a run that died; returns a message for the user."""
    state_path = resolve_state_path(state_path)
    path = lock_path(state_path)
    try:
        fd = open_lock_file(path, create=False)
    except FileNotFoundError:
        return f"no lock: {path} does not exist"
    try:
        return _unlock_open_file(fd, path, state_path, force)
    finally:
        os.close(fd)


def _unlock_open_file(fd: int, path: Path, state_path: Path, force: bool) -> str:
    holder = read_holder_fd(fd)
    who = describe_holder(holder)
    if flock_nonblocking(fd, path):
        remove_if_current(fd, path)
        left_by = f", left by {who}" if holder else ""
        return f"removed {path}: nobody held it{left_by}"
    if holder_is_dead(holder):
        remove_if_current(fd, path)
        return f"removed a stale lock {path} of {who}: that process is no longer running"
    if not force:
        raise LockedError(
            f"state {state_path} is locked by {who}, which may still be running; wait for it, or "
            "use `rrpcsync state unlock --force` if you are sure that run is gone"
        )
    unlink_quietly(path)
    return (
        f"removed {path} held by {who} (--force); if that run is still going, "
        "it may still write the state"
    )


def remove_if_current(fd: int, path: Path) -> None:
    if is_current_file(fd, path):
        unlink_quietly(path)
