"""Manifests (and every input file read through manifests.files) are regular files of a
bounded size; anything else is a one-line error naming the file, never a hang."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rrpcsync.errors import ManifestError
from rrpcsync.manifests import files
from rrpcsync.manifests.loader import load_manifests

from .helpers import manifest_text, run, write


def test_a_regular_file_is_read(tmp_path: Path) -> None:
    path = write(tmp_path / "m.yaml", manifest_text())
    assert files.read_manifest_file(path) == path.read_bytes()


def test_a_symlink_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    real = write(tmp_path / "real.yaml", manifest_text())
    (tmp_path / "link.yaml").symlink_to(real)
    assert files.read_manifest_file(tmp_path / "link.yaml") == real.read_bytes()


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "m.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ManifestError) as caught:
        files.read_manifest_file(fifo)
    assert caught.value.diagnostics[0].file == str(fifo)
    assert "not a regular file (a FIFO)" in caught.value.diagnostics[0].message


def test_a_symlink_to_dev_zero_is_refused(tmp_path: Path) -> None:
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    result = load_manifests([tmp_path])
    assert [d.message for d in result.diagnostics] == ["not a regular file (a character device)"]
    assert result.diagnostics[0].file == str(tmp_path / "zero.yaml")


def test_a_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "m.yaml", manifest_text() + "#" * 2000 + "\n")
    with pytest.raises(ManifestError) as caught:
        files.read_manifest_file(path, max_bytes=1000)
    assert "larger than 1,000 bytes" in caught.value.diagnostics[0].message


def test_validate_names_a_fifo_given_on_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fifo = tmp_path / "m.yaml"
    os.mkfifo(fifo)
    result = run(capsys, "validate", str(fifo))
    assert result.code == 1
    assert f"{fifo}:1:1" in result.out + result.err
    assert "not a regular file (a FIFO)" in result.out + result.err
    assert "no such file" not in result.out + result.err


def test_validate_of_a_folder_with_a_fifo_does_not_hang(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write(tmp_path / "a.yaml", manifest_text())
    os.mkfifo(tmp_path / "b.yaml")
    result = run(capsys, "validate", str(tmp_path))
    assert result.code == 1
    assert "b.yaml:1:1" in result.out + result.err
