"""Where the state's files are, and opening the files rrpcsync writes without following a
planted symlink.

The state path itself may be a symlink (a checkout pointing at a shared file): it is resolved
once, so `real.json` and `link.json` name one lock, one journal and one backup. Every file
rrpcsync creates or appends to next to it (lock, journal, backup, history, temp files, plans)
is opened with `O_NOFOLLOW`, checked to be a regular file on the opened descriptor, and
brought to mode 0600 with `fchmod` before anything is written to it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from rrpcsync.errors import StateError


def resolve_state_path(path: Path | str) -> Path:
    """The path of the file the state path names: symlinks in the last component followed
    (the folders' own symlinks resolve the same way for the lock and journal beside it)."""
    path = Path(path)
    if not path.is_symlink():
        return path
    return Path(os.path.realpath(path))


def same_file(one: Path | str, other: Path | str) -> bool:
    """True if both paths name one file (or would: same resolved path when missing)."""
    try:
        first, second = os.stat(one), os.stat(other)
    except OSError:
        return os.path.realpath(one) == os.path.realpath(other)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def open_private(path: Path, flags: int, what: str, error: type[Exception] = StateError) -> int:
    """`os.open(path, flags | O_NOFOLLOW)`, refusing a symlink or a non-regular file with a
    one-line `error` naming the file, and with mode 0600 (fchmod) before it is written."""
    fd = _open_nofollow(path, flags, what, error)
    try:
        _check_regular_and_private(fd, path, what, error)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_nofollow(path: Path, flags: int, what: str, error: type[Exception]) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EEXIST and path.is_symlink()):
            raise error(symlink_message(path, what)) from None
        if exc.errno == errno.ENXIO:  # a FIFO with no reader
            raise error(f"{what} {path} is not a regular file; remove it") from None
        if isinstance(exc, FileNotFoundError):
            raise
        raise error(f"cannot open {what} {path}: {exc.strerror or exc}") from None


def symlink_message(path: Path, what: str) -> str:
    return (
        f"{what} {path} is a symbolic link: rrpcsync never writes through a symlink to a file "
        "it creates; remove the link"
    )


def _check_regular_and_private(fd: int, path: Path, what: str, error: type[Exception]) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is not a regular file; remove it")
    if stat.S_IMODE(info.st_mode) & 0o077:
        try:
            os.fchmod(fd, 0o600)
        except OSError as exc:
            raise error(f"cannot make {what} {path} private (mode 0600): {exc.strerror}") from None
    with contextlib.suppress(OSError):  # O_NONBLOCK means nothing for regular files: drop it
        os.set_blocking(fd, True)


def read_private(
    path: Path, what: str, limit: int = -1, error: type[Exception] = StateError
) -> bytes:
    """The bytes of a file rrpcsync wrote (journal), refusing a symlink planted in its place.
    FileNotFoundError propagates."""
    fd = _open_nofollow(path, os.O_RDONLY, what, error)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"cannot read {what} {path}: it is not a regular file")
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as file:
            return file.read(limit)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
