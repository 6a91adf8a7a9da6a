"""Paths and the file system (issue 14): one lock and journal per state file whatever path
names it, no planted symlink followed, modes enforced, outputs never clobber inputs."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from rrpcsync.errors import LockedError, StateError
from rrpcsync.model import DeviceRecord, Status
from rrpcsync.state import JsonFileStore, RunRecord, State
from rrpcsync.state.journal import Journal
from rrpcsync.state.jsonfile import journal_path, load_state, lock_path, save_state

from .helpers import manifest_text, run, write

LINEAGE = "5f0c3e52-3b8a-4a52-9a38-0c1f3f9d2d10"
APPLIED = DeviceRecord(status=Status.APPLIED, target_sha256="a" * 64, attempts=1)


def saved_state(path: Path) -> State:
    state = State(str(path), LINEAGE, devices={"P/d1": APPLIED})
    save_state(state)
    return state


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path, follow_symlinks=False).st_mode)


# --------------------------------------------------------------------------- two paths


def test_a_symlinked_state_and_its_target_share_one_lock(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    saved_state(real)
    (tmp_path / "link.json").symlink_to(real)
    with JsonFileStore(real).lock("apply"), pytest.raises(LockedError):
        JsonFileStore(tmp_path / "link.json").lock("apply").acquire()
    assert not (tmp_path / "link.json.lock").exists()


def test_a_relative_symlink_through_another_folder_shares_the_lock(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    real = tmp_path / "shared" / "real.json"
    saved_state(real)
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "state.json").symlink_to("../shared/real.json")
    store = JsonFileStore(tmp_path / "ci" / "state.json")
    assert Path(store.location) == real.resolve()
    with store.lock("apply"), pytest.raises(LockedError):
        JsonFileStore(real).lock("apply").acquire()


def test_a_journal_written_through_the_link_is_replayed_through_the_target(
    tmp_path: Path,
) -> None:
    real = tmp_path / "real.json"
    saved_state(real)
    (tmp_path / "link.json").symlink_to(real)
    via_link = JsonFileStore(tmp_path / "link.json")
    state = via_link.load()
    recorder = via_link.recorder(state)
    recorder.append_many([("P/d2", APPLIED)])
    recorder.close()
    assert journal_path(real).exists()
    assert not (tmp_path / "link.json.journal").exists()
    assert "P/d2" in JsonFileStore(real).load().devices


def test_the_backup_sits_beside_the_target(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    saved_state(real)
    (tmp_path / "link.json").symlink_to(real)
    store = JsonFileStore(tmp_path / "link.json")
    store.save(store.load())
    assert (tmp_path / "real.json.backup").exists()
    assert not (tmp_path / "link.json.backup").exists()
    assert (tmp_path / "link.json").is_symlink()


# --------------------------------------------------------------------------- planted symlinks


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    victim = write(tmp_path / "victim.txt", "keep me\n")
    lock_path(state).symlink_to(victim)
    with pytest.raises(StateError, match=r"lock file .*s\.json\.lock is a symbolic link"):
        JsonFileStore(state).lock("apply").acquire()
    assert victim.read_text() == "keep me\n"


def test_a_planted_journal_symlink_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    saved_state(state)
    victim = write(tmp_path / "victim.txt", "keep me\n")
    journal_path(state).symlink_to(victim)
    with pytest.raises(StateError, match=r"journal .*s\.json\.journal is a symbolic link"):
        Journal.open(load_state_without_replay(state))
    with pytest.raises(StateError, match="is a symbolic link"):
        load_state(state)
    assert victim.read_text() == "keep me\n"


def load_state_without_replay(path: Path) -> State:
    from rrpcsync.state.jsonfile import read_state_file

    return read_state_file(path)


def test_a_planted_history_symlink_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    victim = write(tmp_path / "victim.txt", "keep me\n")
    (tmp_path / "s.json.history").symlink_to(victim)
    run_record = RunRecord("a", "b", "apply", None, None, 0, 0, 0, {}, {})
    with pytest.raises(StateError, match=r"run history .* is a symbolic link"):
        JsonFileStore(state).record_run(run_record)
    assert victim.read_text() == "keep me\n"


def test_a_fifo_as_journal_is_refused_without_blocking(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    saved_state(state)
    os.mkfifo(journal_path(state))
    with pytest.raises(StateError, match="not a regular file"):
        load_state(state)


def test_a_state_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    os.mkfifo(state)
    with pytest.raises(StateError, match="not a regular file"):
        load_state(state)


# --------------------------------------------------------------------------- modes


def test_an_existing_loose_journal_is_made_private_before_writing(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    saved_state(state)
    journal_path(state).touch()
    os.chmod(journal_path(state), 0o666)
    loaded = load_state(state)
    journal = Journal.open(loaded)
    assert mode(journal_path(state)) == 0o600
    journal.close()


def test_an_existing_loose_lock_is_made_private(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    lock_path(state).touch()
    os.chmod(lock_path(state), 0o644)
    lock = JsonFileStore(state).lock("apply")
    lock.acquire()
    try:
        assert mode(lock_path(state)) == 0o600
    finally:
        lock.release()


def test_an_existing_loose_history_is_made_private(tmp_path: Path) -> None:
    state = tmp_path / "s.json"
    history = tmp_path / "s.json.history"
    history.touch()
    os.chmod(history, 0o644)
    JsonFileStore(state).record_run(RunRecord("a", "b", "apply", None, None, 0, 0, 0, {}, {}))
    assert mode(history) == 0o600


# --------------------------------------------------------------------------- plan outputs


@pytest.mark.parametrize("suffix", ["", ".backup", ".journal", ".lock", ".history"])
@pytest.mark.parametrize("option", ["--out", "--out-markdown"])
def test_plan_outputs_never_overwrite_the_state_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, option: str, suffix: str
) -> None:
    configs = write(tmp_path / "configs" / "m.yaml", manifest_text())
    state = tmp_path / "s.json"
    saved_state(state)
    save_state(load_state(state))  # a backup exists
    target = tmp_path / f"s.json{suffix}"
    if not target.exists():
        target.write_text('{"keep": true}\n')
    before = target.read_bytes()
    result = run(capsys, "plan", str(configs), "--state", str(state), option, str(target))
    assert result.code == 1, result.err
    assert f"refusing to write {option} to {target}" in result.err
    assert target.read_bytes() == before
    assert len(result.err_lines) == 1


def test_plan_out_through_a_symlink_to_the_state_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    configs = write(tmp_path / "configs" / "m.yaml", manifest_text())
    state = tmp_path / "s.json"
    saved_state(state)
    (tmp_path / "plan.json").symlink_to(state)
    before = state.read_bytes()
    out = str(tmp_path / "plan.json")
    result = run(capsys, "plan", str(configs), "--state", str(state), "--out", out)
    assert result.code == 1
    assert state.read_bytes() == before


def test_plan_out_refuses_a_planted_symlink(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    configs = write(tmp_path / "configs" / "m.yaml", manifest_text())
    victim = write(tmp_path / "victim.txt", "keep me\n")
    out = tmp_path / "plan.md"
    out.symlink_to(victim)
    state = tmp_path / "s.json"
    result = run(capsys, "plan", str(configs), "--state", str(state), "--out-markdown", str(out))
    assert result.code == 1
    assert f"{out} is a symbolic link" in result.err
    assert victim.read_text() == "keep me\n"


def test_plan_out_replaces_a_regular_file_and_keeps_it_private(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    configs = write(tmp_path / "configs" / "m.yaml", manifest_text())
    out = write(tmp_path / "plan.json", "old\n")
    os.chmod(out, 0o644)
    state = tmp_path / "s.json"
    result = run(capsys, "plan", str(configs), "--state", str(state), "--out", str(out))
    assert result.code == 0, result.err
    assert json.loads(out.read_text())["format"]
    assert mode(out) == 0o600


def test_report_html_never_overwrites_the_state(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    configs = write(tmp_path / "configs" / "m.yaml", manifest_text())
    state = tmp_path / "s.json"
    saved_state(state)
    before = state.read_bytes()
    result = run(capsys, "report", str(configs), "--state", str(state), "--html", str(state))
    assert result.code == 1
    assert "refusing to write --html" in result.err
    assert state.read_bytes() == before
