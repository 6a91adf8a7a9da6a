"""Reading one input file (a manifest, an inventory) safely: only a regular file, at most
`MAX_INPUT_BYTES`, and a clear one-line error naming the file otherwise.

A `*.yaml` that is a FIFO, a device or a symlink to `/dev/zero` would otherwise be read
forever (or block in `open`). The file is opened without blocking and checked with `fstat` on
the opened descriptor, so what is checked is what is read (no race with a rename).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rrpcsync.errors import Diagnostic, ManifestError

MAX_INPUT_BYTES = 64 * 1024 * 1024  # one manifest or inventory file; a fleet spans many files


def read_manifest_file(path: Path | str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of the regular file at `path` (symlinks to regular files are followed).

    Raises `ManifestError` with one `Diagnostic` naming the file (line 1, column 1) when it
    cannot be opened, is not a regular file, or is larger than `max_bytes`.
    """
    name = str(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _problem(name, f"cannot read file: {exc.strerror or exc}") from None
    try:
        return _read_regular(fd, name, max_bytes)
    except OSError as exc:
        raise _problem(name, f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def input_file_problem(path: Path | str, max_bytes: int = MAX_INPUT_BYTES) -> Diagnostic | None:
    """The problem `read_manifest_file` would report for a path found on disk, without reading
    it (for discovery: a FIFO given on the command line is refused, not "missing")."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
        return _diagnostic(str(path), f"not a regular file ({file_kind(info.st_mode)})")
    return None


def _read_regular(fd: int, name: str, max_bytes: int) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise _problem(name, f"not a regular file ({file_kind(info.st_mode)})")
    if info.st_size > max_bytes:
        raise _too_large(name, max_bytes)
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:  # it grew while we read it
            raise _too_large(name, max_bytes)
    return b"".join(chunks)


def file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symlink"),
    )
    for test, kind in kinds:
        if test(mode):
            return kind
    return "not a plain file"


def _too_large(name: str, max_bytes: int) -> ManifestError:
    return _problem(name, f"file is larger than {max_bytes:,} bytes (the limit for one file)")


def _diagnostic(name: str, message: str) -> Diagnostic:
    return Diagnostic(name, 1, 1, "$", message)


def _problem(name: str, message: str) -> ManifestError:
    return ManifestError([_diagnostic(name, message)])
