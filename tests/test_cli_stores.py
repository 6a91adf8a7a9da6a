"""The SQL stores through the command line, against the emulator and real engines:
apply/plan/state on every store, held locks, sharded applies, moving state, crash loops,
a PostgreSQL connection killed mid-apply, and the database password never shown."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.model import Status
from rrpcsync.state import open_store
from rrpcsync.state.jsonfile import load_state
from rrpcsync.state.sql import SqlStore
from tests import pgserver
from tests.conftest import StartEmulator
from tests.helpers import ROOT, run
from tests.test_faults import (
    applied_payloads,
    generation_of,
    kill_at_a_random_moment,
    requests_of,
    settle,
    write_fleet,
)

TOKEN = "emulator-token"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RRPCSYNC_ACCESS_TOKEN", TOKEN)
    return tmp_path


def store_of(url: str, name: str = "default") -> SqlStore:
    store = open_store(url, name)
    assert isinstance(store, SqlStore)
    return store


def spawn(workdir: Path, endpoint: str, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "RRPCSYNC_ACCESS_TOKEN": TOKEN,
        "RRPCSYNC_ENDPOINT": endpoint,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "rrpcsync", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --------------------------------------------------------------------------- every command


def test_apply_plan_and_state_commands_on_a_sql_store(
    capsys: pytest.CaptureFixture[str], workdir: Path, url: str, emulator: StartEmulator
) -> None:
    emu = emulator({"auto_devices": True})
    keys = write_fleet(workdir, {"PA": 5, "PB": 3}, {"PA": 1, "PB": 1})
    applied = run(
        capsys, "apply", "configs", "--state", url, "--auto-approve", "--endpoint", emu.url
    )
    assert applied.code == 0, applied.err
    state = store_of(url).load()
    assert set(state.devices) == set(keys)
    assert {r.status for r in state.devices.values()} == {Status.APPLIED}
    assert state.serial == 1
    [history] = store_of(url).runs()
    assert (history.command, history.applied, history.sent) == ("apply", 8, 8)

    plan = run(capsys, "plan", "configs", "--state", url, "--detailed-exitcode")
    assert plan.code == 0, plan.err
    again = run(capsys, "apply", "configs", "--state", url, "--auto-approve", "--endpoint", emu.url)
    assert again.code == 0 and emu.stats()["requests_total"] == 8  # nothing sent twice

    listing = run(capsys, "state", "list", "--state", url, "--format", "json")
    assert listing.code == 0
    assert json.loads(listing.out)["counts"] == {"applied": 8}
    shown = run(capsys, "state", "show", "PA/d00001", "--state", url, "--format", "json")
    assert json.loads(shown.out)["PA/d00001"]["status"] == "applied"
    removed = run(capsys, "state", "rm", "PA/d00001", "--state", url)
    assert removed.code == 0 and "removed 1 device(s)" in removed.err
    missing = run(capsys, "state", "show", "PA/d00001", "--state", url)
    assert missing.code == 1 and "is not in" in missing.err
    replan = run(capsys, "plan", "configs", "--state", url, "--format", "json")
    assert [c["key"] for c in json.loads(replan.out)["changes"]] == ["PA/d00001"]
    unlocked = run(capsys, "state", "unlock", "--state", url)
    assert unlocked.code == 0 and "no lock held" in unlocked.err


def test_state_names_keep_states_apart(
    capsys: pytest.CaptureFixture[str], workdir: Path, url: str, emulator: StartEmulator
) -> None:
    emu = emulator({"auto_devices": True})
    write_fleet(workdir, {"PA": 2}, {"PA": 1})
    args = ("apply", "configs", "--state", url, "--auto-approve", "--endpoint", emu.url)
    assert run(capsys, *args, "--state-name", "site-a").code == 0
    assert not store_of(url).exists()
    assert set(store_of(url, "site-a").load().devices) == {"PA/d00000", "PA/d00001"}
    listing = run(capsys, "state", "list", "--state", url, "--state-name", "site-b")
    assert listing.code == 1 and "no state at" in listing.err and "state site-b" in listing.err
    bad = run(capsys, "state", "list", "--state", url, "--state-name", "no/slash")
    assert bad.code == 1 and "state name" in bad.err
    json_name = run(capsys, "state", "list", "--state", "s.json", "--state-name", "x")
    assert json_name.code == 1 and "holds one state" in json_name.err


def test_a_held_lock_exits_4_naming_the_holder(
    capsys: pytest.CaptureFixture[str], workdir: Path, url: str, emulator: StartEmulator
) -> None:
    emu = emulator({"auto_devices": True})
    write_fleet(workdir, {"PA": 2}, {"PA": 1})
    with store_of(url).lock("state rm"):
        result = run(
            capsys, "apply", "configs", "--state", url, "--auto-approve", "--endpoint", emu.url
        )
        removed = run(capsys, "state", "rm", "PA/d00000", "--state", url, "--lock-timeout", "0.3")
        refused = run(capsys, "state", "unlock", "--state", url)
    assert result.code == 4, result.err
    assert f"locked by state rm (pid {os.getpid()}" in result.err
    assert removed.code == 4 and "state rm" in removed.err
    assert refused.code == 4 and "--force" in refused.err
    assert emu.stats()["requests_total"] == 0


# --------------------------------------------------------------------------- sharded applies


def test_disjoint_sharded_applies_run_at_once_and_both_land(
    workdir: Path, url: str, emulator: StartEmulator
) -> None:
    emu = emulator({"auto_devices": True, "latency": 0.2})
    keys = write_fleet(workdir, {"PA": 40, "PB": 10}, {"PA": 1, "PB": 1})
    common = ("apply", "configs", "--state", url, "--auto-approve", "--parallelism", "2")
    first = spawn(workdir, emu.url, *common, "--target", "PA/*")  # 4 s of sending
    wait_for(lambda: emu.stats(include_log=False)["requests_total"] > 0)
    second = spawn(workdir, emu.url, *common, "--target", "PB/*")
    wait_for(lambda: any(k.startswith("PB/") and n for k, n in requests_of(emu.stats()).items()))
    assert first.poll() is None, "the second apply must start while the first is sending"
    for proc in (first, second):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    final = store_of(url).load()
    assert {k for k, r in final.devices.items() if r.status is Status.APPLIED} == set(keys)
    assert final.serial == 2
    assert all(n == 1 for n in requests_of(settle(emu)).values())
    assert emu.stats()["concurrency_violations"] == 0


def test_overlapping_applies_skip_what_the_other_run_has(
    capsys: pytest.CaptureFixture[str], workdir: Path, url: str, emulator: StartEmulator
) -> None:
    emu = emulator({"auto_devices": True, "latency": 0.1})
    keys = write_fleet(workdir, {"PA": 30}, {"PA": 1})
    common = ("apply", "configs", "--state", url, "--auto-approve", "--parallelism", "2")
    first = spawn(workdir, emu.url, *common)
    wait_for(lambda: emu.stats(include_log=False)["requests_total"] > 0)
    second = spawn(workdir, emu.url, *common, "--format", "json")
    out, err = second.communicate(timeout=60)
    assert second.returncode == 3, err
    report = json.loads(out)
    skipped = report["claimed_elsewhere"]
    assert skipped, "the second run saw the first run's claims"
    assert all(f"pid {first.pid}" in why for why in skipped.values())
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert all(n == 1 for n in requests_of(settle(emu)).values())  # never sent by both
    final = run(capsys, *common[:-2], "--endpoint", emu.url)
    assert final.code == 0, final.err
    done = store_of(url).load()
    assert {k for k, r in done.devices.items() if r.status is Status.APPLIED} == set(keys)


# --------------------------------------------------------------------------- moving state


def test_migrate_pull_push_round_trip_byte_identical(
    capsys: pytest.CaptureFixture[str], workdir: Path, pg_url: str, emulator: StartEmulator
) -> None:
    emu = emulator({"auto_devices": True, "devices": {"PB/d00001": {"reply": "error"}}})
    write_fleet(workdir, {"PA": 4, "PB": 3}, {"PA": 1, "PB": 1})
    applied = run(capsys, "apply", "configs", "--auto-approve", "--endpoint", emu.url)
    assert applied.code in (0, 3), applied.err
    original = (workdir / "rrpcsync.state.json").read_bytes()
    sqlite = f"sqlite:///{workdir}/s.db"
    steps = [("rrpcsync.state.json", sqlite), (sqlite, pg_url), (pg_url, "back.json")]
    for source, target in steps:
        moved = run(capsys, "state", "migrate", "--state", source, "--to", target)
        assert moved.code == 0, moved.err
        assert pgserver.PASSWORD not in moved.err
    assert (workdir / "back.json").read_bytes() == original
    assert len(store_of(pg_url).runs()) == 1  # the run history came along

    refused = run(capsys, "state", "migrate", "--state", sqlite, "--to", pg_url)
    assert refused.code == 1 and "already holds a state" in refused.err

    pulled = run(capsys, "state", "pull", "--state", pg_url)
    assert pulled.code == 0
    assert pulled.out.encode() == original
    (workdir / "snapshot.json").write_bytes(pulled.out.encode())
    offline = run(capsys, "plan", "configs", "--state", "snapshot.json", "--format", "json")
    assert offline.code == 0, offline.err

    doc = json.loads(original)
    doc["devices"].pop("PA/d00000")
    (workdir / "edited.json").write_text(json.dumps(doc, indent=2))
    pushed = run(capsys, "state", "push", "edited.json", "--state", pg_url)
    assert pushed.code == 0, pushed.err
    after = store_of(pg_url).load()
    assert "PA/d00000" not in after.devices and after.serial == doc["serial"] + 1
    stale = run(capsys, "state", "push", "edited.json", "--state", pg_url)
    assert stale.code == 1 and "older than" in stale.err
    doc["lineage"] = "another"
    (workdir / "other.json").write_text(json.dumps(doc, indent=2))
    other = run(capsys, "state", "push", "other.json", "--state", pg_url)
    assert other.code == 1 and "another state" in other.err


# --------------------------------------------------------------------------- crash loop

KILLS = 8
CRASH_ARGS = ("--parallelism", "8", "--rate", "400", "--retries", "6", "--retry-backoff", "0.01")


def test_crash_loop_on_a_sql_store(workdir: Path, url: str, emulator: StartEmulator) -> None:
    """SIGKILL at seeded random moments: an applied record is never lost, and a device
    recorded as applied is never sent its payload again."""
    emu = emulator({"auto_devices": True, "latency": 0.02})
    products = {"PA": 60, "PB": 60}
    keys = write_fleet(workdir, products, {"PA": 0, "PB": 0})
    rng = random.Random(4321)
    generation = 0
    applied_now: dict[str, str | None] = {}
    counts: dict[str, int] = {}
    args = ("apply", "configs", "--state", url, "--auto-approve", *CRASH_ARGS)
    killed_mid_run = 0
    for kill in range(KILLS):
        if len(applied_now) == len(keys):
            generation += 1
            write_fleet(workdir, products, {"PA": generation, "PB": generation})
            applied_now, counts = {}, {}
        sent_before = emu.stats(include_log=False)["requests_total"]
        proc = spawn(workdir, emu.url, *args)
        still_running = kill_at_a_random_moment(proc, emu, rng, kill)
        _, err = proc.communicate(timeout=30)
        assert still_running or proc.returncode in (0, 3), err
        stats = settle(emu)
        killed_mid_run += still_running and stats["requests_total"] > sent_before
        state = store_of(url).load()
        now = {k: p for k, p in applied_payloads(state).items() if generation_of(p) == generation}
        assert applied_now.items() <= now.items(), f"kill {kill}: an applied record was lost"
        now_counts = requests_of(stats)
        for key in applied_now:
            assert now_counts[key] == counts[key], f"kill {kill}: {key} was sent again"
        applied_now, counts = now, now_counts
        assert stats["concurrency_violations"] == 0
    assert killed_mid_run >= 3, "the kills should land while devices are being sent"
    proc = spawn(workdir, emu.url, *args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stats = settle(emu)
    final = store_of(url).load()
    assert {k: generation_of(p) for k, p in applied_payloads(final).items()} == dict.fromkeys(
        keys, generation
    )
    for key in applied_now:
        assert requests_of(stats)[key] == counts[key], f"{key} was sent again"


# --------------------------------------------------------------------------- PostgreSQL only


def test_connection_killed_mid_apply(
    capsys: pytest.CaptureFixture[str],
    workdir: Path,
    pg_url: str,
    pg_server: Any,
    emulator: StartEmulator,
) -> None:
    emu = emulator({"auto_devices": True, "latency": 0.05})
    keys = write_fleet(workdir, {"PA": 80}, {"PA": 1})
    args = ("apply", "configs", "--state", pg_url, "--auto-approve", "--parallelism", "4")
    proc = spawn(workdir, emu.url, *args)
    wait_for(lambda: emu.stats(include_log=False)["requests_total"] >= 10)
    assert pg_server.terminate_sessions() >= 1
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "lost the connection to the database" in err
    assert "Traceback" not in err and pgserver.PASSWORD not in err
    stats = settle(emu)
    recorded = applied_payloads(store_of(pg_url).load())
    sent_once = requests_of(stats)
    assert set(recorded) <= set(sent_once)
    again = run(capsys, *args, "--endpoint", emu.url)
    assert again.code == 0, again.err
    final = store_of(pg_url).load()
    assert {k for k, r in final.devices.items() if r.status is Status.APPLIED} == set(keys)
    after = requests_of(settle(emu))
    for key in recorded:
        assert after[key] == sent_once[key], f"{key} was acknowledged, then sent again"


def test_the_database_password_never_shows(
    capsys: pytest.CaptureFixture[str],
    workdir: Path,
    pg_url: str,
    pg_server: Any,
    emulator: StartEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = emulator({"auto_devices": True})
    write_fleet(workdir, {"PA": 3}, {"PA": 1})
    outputs: list[str] = []
    commands = [
        ("-v", "apply", "configs", "--state", pg_url, "--auto-approve", "--endpoint", emu.url),
        ("-v", "plan", "configs", "--state", pg_url, "--out", "plan.json"),
        ("-vv", "state", "list", "--state", pg_url),
        ("-v", "state", "rm", "PA/d00000", "--state", pg_url),
        ("-v", "state", "unlock", "--state", pg_url),
        ("-v", "state", "pull", "--state", pg_url),
        ("-v", "state", "migrate", "--state", pg_url, "--to", "copy.json"),
    ]
    for args in commands:
        result = run(capsys, *args)
        assert result.code == 0, (args, result.err)
        outputs += [result.out, result.err]
    with store_of(pg_url).lock("state rm"):
        locked = run(capsys, "-v", "apply", "configs", "--state", pg_url, "--auto-approve")
    assert locked.code == 4
    outputs += [locked.out, locked.err]
    wrong = pg_url.replace(pgserver.PASSWORD, "Wr0ng-" + pgserver.PASSWORD[::-1])
    failed = run(capsys, "-v", "state", "list", "--state", wrong)
    assert failed.code == 1 and "password authentication failed" in failed.err
    outputs += [failed.out, failed.err]
    monkeypatch.setenv("RRPCSYNC_STATE", pg_url)
    outputs += [run(capsys, "-v", "state", "list").err]
    for text in outputs:
        assert pgserver.PASSWORD not in text and pgserver.PASSWORD[::-1] not in text
    for path in workdir.rglob("*"):
        if path.is_file():
            assert pgserver.PASSWORD.encode() not in path.read_bytes(), path
    dump = subprocess.run(  # nor is it stored in the database
        [str(pgserver.find_bin("pg_dump")), "--data-only", "-d", pg_url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "PA/d00001" in dump and pgserver.PASSWORD not in dump
    assert load_state(workdir / "copy.json").devices
