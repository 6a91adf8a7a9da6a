"""Durable file writes: atomic replace with a backup link, private modes, fsync'd appends."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from rrpcsync.errors import StateError
from rrpcsync.state.paths import open_private, resolve_state_path, unlink_quietly

log = logging.getLogger("rrpcsync.state")


def backup_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".backup")


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, backup link, rename, fsync the folder."""
    target = resolve_state_path(path)
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
    fd = open_private(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "backup file")
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


def open_for_append(path: Path, what: str = "journal") -> int:
    """An fd appending to `path` (created 0600; an existing file brought to 0600; a symlink
    or a non-regular file refused with a StateError naming it)."""
    created = not os.path.lexists(path)
    fd = open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)
    if created:
        fsync_dir(path.parent)  # so the journal itself survives a power cut
    return fd


def reopen_if_removed(fd: int, path: Path, what: str = "journal") -> int:
    try:
        on_disk = os.stat(path)
        held = os.fstat(fd)
        if (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino):
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)  # a save removed it: entries now go on top of the new serial
    return open_for_append(path, what)


def append_durably(fd: int, data: bytes, sync: bool = True) -> None:
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
