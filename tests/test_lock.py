"""The state lock (rrpcsync/lock.py): flock-based, with holder info, stale takeover, unlock."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rrpcsync.errors import ExitCode, LockedError
from rrpcsync.state import lock as lock_module
from rrpcsync.state.jsonfile import StateLock, read_holder, unlock
from rrpcsync.state.lock import ci_url, lock_path

ROOT = Path(__file__).resolve().parent.parent
HOLDER = """
import sys, time
from pathlib import Path
from rrpcsync.state.jsonfile import StateLock
lock = StateLock(Path(sys.argv[1]), sys.argv[2])
lock.acquire()
print("locked", flush=True)
time.sleep(float(sys.argv[3]))
lock.release()
"""
HolderFactory = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "rrpcsync.state.json"


@pytest.fixture(autouse=True)
def no_github_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def holder(state_path: Path) -> Iterator[HolderFactory]:
    started: list[subprocess.Popen[str]] = []

    def start(seconds: float = 30.0, command: str = "apply") -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(state_path), command, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline() == "locked\n"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def hold_flock_as(state_path: Path, holder: dict[str, object]) -> int:
    """Hold the flock from this process with someone else's holder info (e.g. a forked child)."""
    fd = os.open(lock_path(state_path), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps(holder).encode())
    return fd


def holder_info(pid: int, host: str | None = None) -> dict[str, object]:
    return {
        "command": "apply",
        "pid": pid,
        "host": host or socket.gethostname(),
        "started": "2026-11-28T12:00:00Z",
        "ci_url": None,
    }


# --------------------------------------------------------------------------- acquire/release


def test_acquire_writes_holder_info_and_release_removes_the_file(state_path: Path) -> None:
    lock = StateLock(state_path, "apply")
    lock.acquire()
    info = read_holder(state_path)
    assert info is not None
    assert info["command"] == "apply"
    assert info["pid"] == os.getpid()
    assert info["host"] == socket.gethostname()
    assert info["ci_url"] is None
    assert time.strptime(info["started"], "%Y-%m-%dT%H:%M:%SZ")
    assert stat.S_IMODE(lock_path(state_path).stat().st_mode) == 0o600
    lock.release()
    lock.release()  # idempotent
    assert not lock_path(state_path).exists()
    assert read_holder(state_path) is None


def test_context_manager_releases_on_error(state_path: Path) -> None:
    with pytest.raises(RuntimeError), StateLock(state_path, "state rm"):
        assert lock_path(state_path).exists()
        raise RuntimeError("boom")
    assert not lock_path(state_path).exists()
    with StateLock(state_path, "apply"):  # free again
        pass


def test_second_lock_in_the_same_process_is_refused(state_path: Path) -> None:
    with StateLock(state_path, "apply"), pytest.raises(LockedError, match="locked by apply"):
        StateLock(state_path, "state rm").acquire()


def test_another_process_holding_it_gives_locked_error_naming_the_holder(
    state_path: Path, holder: HolderFactory
) -> None:
    process = holder(command="apply")
    with pytest.raises(LockedError) as caught:
        StateLock(state_path, "apply").acquire()
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.LOCKED
    assert message.startswith(
        f"state {state_path} is locked by apply "
        f"(pid {process.pid} on {socket.gethostname()}, since "
    )
    assert "wait for it (--lock-timeout SECONDS), or use `rrpcsync state unlock`" in message
    assert "stale" in message  # only as the hint: the holder is alive


def test_timeout_waits_until_the_holder_releases(state_path: Path, holder: HolderFactory) -> None:
    holder(seconds=0.5)
    started = time.monotonic()
    with StateLock(state_path, "apply", timeout=10):
        waited = time.monotonic() - started
        assert read_holder(state_path)["pid"] == os.getpid()  # type: ignore[index]
    assert 0.2 < waited < 8


def test_timeout_expires_with_locked_error(state_path: Path, holder: HolderFactory) -> None:
    process = holder(seconds=30)
    started = time.monotonic()
    with pytest.raises(LockedError, match=f"pid {process.pid}"):
        StateLock(state_path, "apply", timeout=0.4).acquire()
    assert time.monotonic() - started >= 0.4


def test_stale_lock_of_a_killed_holder_is_taken_over(
    state_path: Path, holder: HolderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    process = holder()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert read_holder(state_path)["pid"] == process.pid  # type: ignore[index]
    with caplog.at_level(logging.WARNING, logger="rrpcsync.state"), StateLock(state_path, "apply"):
        assert read_holder(state_path)["pid"] == os.getpid()  # type: ignore[index]
    assert f"took over a stale lock left by pid {process.pid}" in caplog.text


def test_held_flock_with_a_dead_holder_pid_is_reported_stale(state_path: Path) -> None:
    fd = hold_flock_as(state_path, holder_info(dead_pid()))
    try:
        with pytest.raises(LockedError, match="no longer running, so the lock looks stale"):
            StateLock(state_path, "apply").acquire()
    finally:
        os.close(fd)


def test_lock_file_without_holder_info(state_path: Path) -> None:
    fd = os.open(lock_path(state_path), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(LockedError, match="locked by another process"):
            StateLock(state_path, "apply").acquire()
    finally:
        os.close(fd)


def test_a_file_unlinked_between_open_and_flock_is_not_trusted(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_flock = fcntl.flock
    calls: list[int] = []

    def holder_releases_meanwhile(fd: int, operation: int) -> None:
        if not calls:
            os.unlink(lock_path(state_path))  # the previous holder's release
        calls.append(fd)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", holder_releases_meanwhile)
    with StateLock(state_path, "apply") as lock:
        assert len(calls) == 2  # locked an orphan inode first, then the real file
        assert lock_module.is_current_file(lock._fd, lock.path)  # type: ignore[arg-type]
        assert read_holder(state_path)["pid"] == os.getpid()  # type: ignore[index]


def test_release_does_not_remove_a_lock_given_to_another_run(state_path: Path) -> None:
    first = StateLock(state_path, "apply")
    first.acquire()
    unlock(state_path, force=True)
    second = StateLock(state_path, "state rm")
    second.acquire()
    first.release()
    assert read_holder(state_path)["command"] == "state rm"  # type: ignore[index]
    second.release()
    assert not lock_path(state_path).exists()


def test_missing_folder_is_a_state_error(tmp_path: Path) -> None:
    from rrpcsync.errors import StateError

    with pytest.raises(StateError, match=r"cannot create lock file .*folder does not exist"):
        StateLock(tmp_path / "nope" / "state.json", "apply").acquire()


def test_ci_url_from_github_environment(state_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "o/r")
    monkeypatch.setenv("GITHUB_RUN_ID", "1")
    with StateLock(state_path, "apply"):
        url = "https://github.com/o/r/actions/runs/1"
        assert read_holder(state_path)["ci_url"] == url  # type: ignore[index]
        with pytest.raises(LockedError, match=f", since [^,]+, {url}\\);"):
            StateLock(state_path, "apply").acquire()
    assert ci_url({"GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/r"}) is None


# --------------------------------------------------------------------------- unlock


def test_unlock_without_a_lock_file(state_path: Path) -> None:
    assert unlock(state_path, force=False).startswith("no lock")


def test_unlock_removes_a_lock_nobody_holds(state_path: Path, holder: HolderFactory) -> None:
    process = holder()
    process.kill()
    process.wait()
    message = unlock(state_path, force=False)
    assert "nobody held it" in message and f"pid {process.pid}" in message
    assert not lock_path(state_path).exists()


def test_unlock_refuses_a_live_holder_unless_forced(
    state_path: Path, holder: HolderFactory
) -> None:
    process = holder()
    with pytest.raises(LockedError, match=f"pid {process.pid} .*may still be running.*--force"):
        unlock(state_path, force=False)
    assert lock_path(state_path).exists()
    message = unlock(state_path, force=True)
    assert "--force" in message and f"pid {process.pid}" in message
    assert not lock_path(state_path).exists()
    with StateLock(state_path, "apply"):  # the file is gone, so a new run can lock
        pass


def test_unlock_removes_a_held_lock_whose_holder_pid_is_dead(state_path: Path) -> None:
    pid = dead_pid()
    fd = hold_flock_as(state_path, holder_info(pid))
    try:
        message = unlock(state_path, force=False)
    finally:
        os.close(fd)
    assert "stale" in message and f"pid {pid}" in message
    assert not lock_path(state_path).exists()


def test_unlock_cannot_judge_a_holder_on_another_host(state_path: Path) -> None:
    fd = hold_flock_as(state_path, holder_info(dead_pid(), host="elsewhere.example"))
    try:
        with pytest.raises(LockedError, match=r"on elsewhere.example"):
            unlock(state_path, force=False)
    finally:
        os.close(fd)
