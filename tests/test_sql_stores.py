"""The SQL stores (rrpcsync/state/sql.py, sqlite.py, postgres.py) against real engines.

Every test that takes `store_factory` runs on SQLite (a file in tmp_path) and on a real
PostgreSQL server started for the session (tests/pgserver.py); never a mock.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rrpcsync.errors import LockedError, StateError, UsageError
from rrpcsync.model import DeviceRecord, ErrorInfo, Status, payload_digest
from rrpcsync.state import JsonFileStore, RunRecord, State, open_store
from rrpcsync.state.jsonfile import encode_state, load_state, save_state
from rrpcsync.state.postgres import PostgresStore, public_url
from rrpcsync.state.sql import MIGRATIONS, SCHEMA_VERSION, SqlStore, name_key
from rrpcsync.state.sqlite import SqliteStore, sqlite_path
from tests import pgserver

ROOT = Path(__file__).resolve().parent.parent
LINEAGE = "6f1c0a52-5d7e-4c1b-9d1e-0a4b7a0000aa"

APPLIED_PAYLOAD = '{"method":"set","params":{"name":"温度","unit":"°C"}}'
APPLIED = DeviceRecord(
    status=Status.APPLIED,
    payload_sha256=payload_digest(APPLIED_PAYLOAD),  # the loaders check it
    payload=APPLIED_PAYLOAD,
    target_sha256=payload_digest(APPLIED_PAYLOAD),
    request_id="req-1",
    message_id=74,
    reply_base64="QUJDRA==",
    reply_text="ABCD ✓",
    applied_at="2026-11-28T12:00:00Z",
    attempts=1,
    manifest="thermostats",
)
FAILED = DeviceRecord(
    status=Status.FAILED,
    target_sha256="b" * 64,
    request_id="req-2",
    attempts=3,
    last_error=ErrorInfo("FailedOperation.DeviceOffline", "设备离线", "2026-11-28T12:00:05Z"),
    manifest="thermostats",
)
PENDING = DeviceRecord(status=Status.PENDING, target_sha256="c" * 64, attempts=1, manifest="m")
ODD = DeviceRecord(  # what a store must keep exactly: NUL, a lone surrogate, probe fields
    status=Status.APPLIED,
    payload_sha256=payload_digest('"nul \x00 and \ud800 lone"'),
    payload='"nul \x00 and \ud800 lone"',
    reply_text='tab\tnewline\n\\ "quoted"',
    attempts=2,
    observed='{"a":1}',
    observed_at="2026-11-28T12:00:09Z",
    manifest=None,
)

StoreFactory = Callable[..., SqlStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if store_kind == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store_factory(store_url: str) -> Iterator[StoreFactory]:
    opened: list[SqlStore] = []

    def make(name: str = "default") -> SqlStore:
        store = open_store(store_url, name)
        assert isinstance(store, SqlStore)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def sample_state(location: str = "x") -> State:
    devices = {"P1/a": APPLIED, "P1/b": FAILED, "P2/c": PENDING, "P2/odd": ODD}
    return State(location, LINEAGE, 7, dict(devices), exists=True)


def run_record(command: str = "apply") -> RunRecord:
    return RunRecord(
        started_at="2026-11-28T12:00:00Z",
        finished_at="2026-11-28T12:01:00Z",
        command=command,
        ci_url="https://github.com/o/r/actions/runs/1",
        commit="0123abc",
        sent=3,
        applied=2,
        failed=1,
        failed_by_code={"FailedOperation.DeviceOffline": 1},
        counts={"applied": 2, "failed": 1},
    )


# --------------------------------------------------------------------------- selecting


def test_open_store_picks_the_store_from_the_spec(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "s.json")), JsonFileStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/s.db"), SqliteStore)
    assert isinstance(open_store("postgresql://u@127.0.0.1:9/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@127.0.0.1:9/db"), PostgresStore)
    with pytest.raises(UsageError, match="a JSON state file holds one state"):
        open_store(str(tmp_path / "s.json"), "other")


def test_sqlite_url_paths() -> None:
    assert sqlite_path("sqlite:///state.db") == Path("state.db")
    assert sqlite_path("sqlite:////abs/state.db") == Path("/abs/state.db")
    assert sqlite_path("sqlite:///with%20space.db") == Path("with space.db")
    for bad in ("sqlite://", "sqlite:///", "sqlite:///a.db?mode=ro", "sqlite:relative.db"):
        with pytest.raises(StateError, match="sqlite:///"):
            sqlite_path(bad)


def test_state_names_are_checked(tmp_path: Path) -> None:
    for bad in ("", "-x", "a b", "a/b", "x" * 65, "naïve"):
        with pytest.raises(StateError, match="state name"):
            open_store(f"sqlite:///{tmp_path}/s.db", bad)


def test_postgres_urls_never_show_the_password() -> None:
    url = "postgresql://alice:s3cr%40t@db.example:5432/fleet?sslmode=require&password=x2"
    shown = public_url(url)
    assert shown == "postgresql://alice@db.example:5432/fleet?sslmode=require&password=%2A%2A%2A"
    assert PostgresStore(url).location == shown
    assert "s3cr" not in PostgresStore(url, "site-a").location


def test_advisory_keys_are_namespaced_signed_64_bit() -> None:
    keys = {name_key("state", "default"), name_key("run", "default"), name_key("state", "b")}
    assert len(keys) == 3
    assert all(-(2**63) <= key < 2**63 for key in keys)


# --------------------------------------------------------------------------- load and save


def test_a_new_store_is_an_empty_state(store_factory: StoreFactory) -> None:
    store = store_factory()
    assert not store.exists()
    state = store.load()
    assert (state.exists, state.serial, state.devices, state.replayed) == (False, 0, {}, 0)
    assert state.location == store.location
    assert store.runs() == []
    assert store.holder() is None


def test_save_writes_put_and_drop_then_bumps_the_serial(store_factory: StoreFactory) -> None:
    store = store_factory()
    state = store.load()
    state.put("P1/a", APPLIED)
    state.put("P1/b", FAILED)
    store.save(state)
    assert (state.serial, state.exists, state.changed) == (1, True, set())
    again = store_factory().load()
    assert (again.lineage, again.serial, again.exists) == (state.lineage, 1, True)
    assert again.devices == {"P1/a": APPLIED, "P1/b": FAILED}
    again.drop("P1/b")
    again.put("P1/a", FAILED)
    store_factory().save(again)
    assert store_factory().load().devices == {"P1/a": FAILED}
    assert store.load().serial == 2


def test_save_writes_only_the_changed_keys(store_factory: StoreFactory) -> None:
    """A store that writes per device trusts `changed`: a record edited behind put's back is
    not written (the JSON file rewrites everything; documented in docs/state.md)."""
    store = store_factory()
    state = store.load()
    state.put("P1/a", APPLIED)
    store.save(state)
    state.devices["P1/a"] = FAILED  # not through put
    state.put("P1/b", PENDING)
    store.save(state)
    assert store.load().devices == {"P1/a": APPLIED, "P1/b": PENDING}


def test_every_field_survives_exactly(store_factory: StoreFactory) -> None:
    store = store_factory()
    state = sample_state(store.location)
    store.replace(state)
    loaded = store_factory().load()
    assert loaded.devices == state.devices
    assert (loaded.lineage, loaded.serial) == (LINEAGE, 7)


def test_adopted_records_survive_exactly(store_factory: StoreFactory) -> None:
    """`state adopt`'s records carry `adopted`: kept (in the record's JSON column)."""
    store = store_factory()
    adopted = {
        "P1/a": APPLIED._replace(adopted="assumed", request_id=None),
        "P1/b": APPLIED._replace(adopted="probe", observed='{"a":1}'),
    }
    store.replace(State(store.location, LINEAGE, 3, dict(adopted), exists=True))
    assert store_factory().load().devices == adopted


def test_recorded_results_are_kept_without_a_save(store_factory: StoreFactory) -> None:
    """A killed run: what the recorder committed is there; the next save folds it in."""
    store = store_factory()
    state = store.load()
    recorder = store.recorder(state)
    recorder.append_many([("P1/a", PENDING)], sync=False)
    recorder.append_many([("P1/a", APPLIED), ("P1/b", FAILED)])
    # no save, no close: the process "dies" here
    other = store_factory()
    after = other.load()
    assert after.devices == {"P1/a": APPLIED, "P1/b": FAILED}
    assert (after.exists, after.lineage, after.replayed) == (True, state.lineage, 2)
    other.save(after)
    folded = store_factory().load()
    assert (folded.serial, folded.replayed) == (1, 0)
    recorder.close()
    with pytest.raises(ValueError, match="closed"):
        recorder.append_many([("P1/c", APPLIED)])


def test_recorder_refuses_a_replaced_state(store_factory: StoreFactory) -> None:
    store = store_factory()
    state = store.load()
    store.save(state)
    store_factory().replace(State("x", "another-lineage", 3))
    with pytest.raises(StateError, match="now has lineage another-lineage"):
        store.recorder(state).append_many([("P1/a", APPLIED)])
    assert store_factory().load().devices == {}


def test_concurrent_saves_never_lose_a_serial(store_factory: StoreFactory) -> None:
    one, two = store_factory(), store_factory()
    first, second = one.load(), two.load()
    first.put("P1/a", APPLIED)
    one.save(first)
    second.put("P1/b", FAILED)
    two.save(second)  # loaded at serial 0, saves on top of 1
    final = store_factory().load()
    assert final.serial == 2
    assert final.devices == {"P1/a": APPLIED, "P1/b": FAILED}


def test_several_named_states_in_one_database(store_factory: StoreFactory) -> None:
    a, b = store_factory("site-a"), store_factory("site-b")
    state_a = a.load()
    state_a.put("P1/a", APPLIED)
    a.save(state_a)
    a.record_run(run_record())
    assert not b.exists()
    assert b.load().devices == {}
    assert b.runs() == []
    assert store_factory("site-a").load().devices == {"P1/a": APPLIED}
    assert "state site-a" in a.location


def test_run_history_round_trips(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.record_run(run_record("apply"))
    store.record_run(run_record("state rm"))
    runs = store_factory().runs()
    assert [r.command for r in runs] == ["apply", "state rm"]
    assert runs[0] == run_record("apply")


# --------------------------------------------------------------------------- moving state


def test_file_to_sqlite_to_postgres_to_file_is_byte_identical(tmp_path: Path, pg_url: str) -> None:
    source = tmp_path / "source.json"
    state = sample_state(str(source))
    state.serial -= 1
    save_state(state)  # serial 7 on disk
    original = source.read_bytes()
    loaded = load_state(source)
    sqlite = open_store(f"sqlite:///{tmp_path}/s.db")
    postgres = open_store(pg_url)
    assert isinstance(sqlite, SqlStore) and isinstance(postgres, SqlStore)
    sqlite.replace(loaded)
    postgres.replace(sqlite.load())
    back = postgres.load()
    assert (back.lineage, back.serial) == (LINEAGE, 7)
    assert encode_state(back, back.serial) == original
    sqlite.close()
    postgres.close()


# --------------------------------------------------------------------------- schema


def test_a_newer_schema_is_refused(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.load()
    with store.transaction() as cur:
        cur.execute(store.q("UPDATE rrpcsync_schema SET version = ?"), (SCHEMA_VERSION + 1,))
    store.close()
    with pytest.raises(StateError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        store_factory().load()


def test_an_older_schema_is_migrated(store_factory: StoreFactory) -> None:
    store = store_factory()
    with store._mutex:  # build a version-1 database by hand, as rrpcsync 1 would have
        store._conn = store._connect()
        with store.transaction() as cur:
            for statement in MIGRATIONS[0]:
                cur.execute(store.ddl(statement))
            cur.execute(store.q("UPDATE rrpcsync_schema SET version = ?"), (1,))
            cur.execute(
                store.q("INSERT INTO rrpcsync_states (name, lineage, serial) VALUES (?, ?, ?)"),
                ("default", LINEAGE, 4),
            )
    store.close()
    upgraded = store_factory()
    assert upgraded.load().serial == 4
    with upgraded.reading() as cur:
        cur.execute("SELECT version FROM rrpcsync_schema")
        assert cur.fetchone()[0] == SCHEMA_VERSION
    with upgraded.begin_run("apply") as run:  # the version-2 tables work
        assert run.claim(["P1/a"]) == {}


# --------------------------------------------------------------------------- locking


def test_a_held_lock_names_its_holder(
    store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/fleet")
    monkeypatch.setenv("GITHUB_RUN_ID", "99")
    with store_factory().lock("state rm"):
        other = store_factory()
        holder = other.holder()
        assert holder is not None
        assert holder["command"] == "state rm"
        assert holder["pid"] == os.getpid()
        assert holder["ci_url"] == "https://github.com/acme/fleet/actions/runs/99"
        with pytest.raises(LockedError) as caught, other.lock("apply"):
            pass
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message and "state rm" in message
        assert "actions/runs/99" in message and "since " in message
        assert caught.value.exit_code == 4
    assert store_factory().holder() is None
    with store_factory().lock("apply"):  # free again
        pass


def test_lock_timeout_waits_for_the_holder(store_factory: StoreFactory) -> None:
    holder = store_factory().lock("state rm")
    holder.acquire()
    threading.Timer(0.4, holder.release).start()
    started = time.monotonic()
    with store_factory().lock("apply", timeout=10):
        waited = time.monotonic() - started
    assert 0.3 < waited < 5


def test_unlock_refuses_a_live_holder_unless_forced(store_factory: StoreFactory) -> None:
    assert "no lock held" in store_factory().unlock(force=False)
    lock = store_factory().lock("state rm")
    lock.acquire()
    with pytest.raises(LockedError, match="unlock --force"):
        store_factory().unlock(force=False)
    message = store_factory().unlock(force=True)
    assert "(--force)" in message and "state rm" in message
    with store_factory().lock("apply"):  # the next command gets it
        pass
    lock.release()


def test_unlock_clears_what_a_dead_holder_left(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.write_holder({"command": "apply", "pid": 999_999, "host": "gone", "started": "x"})
    message = store_factory().unlock(force=False)
    assert "no lock held" in message and "left by apply" in message
    assert store.holder() is None


# --------------------------------------------------------------------------- sharded runs


def test_disjoint_runs_go_at_once_and_overlaps_are_skipped(store_factory: StoreFactory) -> None:
    with store_factory().begin_run("apply") as one, store_factory().begin_run("apply") as two:
        assert one.claim(["P1/a", "P1/b"]) == {}
        assert two.claim(["P1/c"]) == {}
        taken = two.claim(["P1/b", "P1/d"])
        assert list(taken) == ["P1/b"]
        assert f"pid {os.getpid()}" in taken["P1/b"] and "apply" in taken["P1/b"]
        assert one.claim(["P1/a"]) == {}  # its own claim again
        with pytest.raises(LockedError, match="2 apply run"):
            store_factory().lock("state rm").acquire()
    assert store_factory().active_runs() == {}
    with store_factory().begin_run("apply") as three:  # the claims went with the runs
        assert three.claim(["P1/a", "P1/b", "P1/c"]) == {}


def test_a_run_waits_for_an_exclusive_holder(store_factory: StoreFactory) -> None:
    with store_factory().lock("state rm"), pytest.raises(LockedError, match="state rm"):
        store_factory().begin_run("apply").__enter__()
    with store_factory().begin_run("apply") as run:
        assert run.claim(["P1/a"]) == {}


def test_two_sharded_runs_both_land(store_factory: StoreFactory) -> None:
    """Two runs on one state, interleaving commits and saves: every result lands."""
    stores = [store_factory(), store_factory()]
    states = [store.load() for store in stores]
    keys = [[f"P1/a{i}" for i in range(50)], [f"P1/b{i}" for i in range(50)]]

    def run(index: int) -> None:
        store, state = stores[index], states[index]
        with store.begin_run("apply") as sharded:
            assert sharded.claim(keys[index]) == {}
            recorder = store.recorder(state)
            for key in keys[index]:
                recorder.append_many([(key, PENDING)], sync=False)
                recorder.append_many([(key, APPLIED)])
                state.devices[key] = APPLIED
            store.save(state)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    final = store_factory().load()
    assert final.devices == {key: APPLIED for key in keys[0] + keys[1]}
    assert final.serial == 2


CLAIM_AND_HANG = """
import sys, time
from rrpcsync.state import open_store
store = open_store(sys.argv[1])
with store.begin_run("apply") as run:
    assert run.claim(["P1/a", "P1/b"]) == {}
    print("claimed", flush=True)
    time.sleep(60)
"""


def test_the_claims_of_a_killed_run_are_released(store_url: str, tmp_path: Path) -> None:
    script = tmp_path / "hang.py"
    script.write_text(textwrap.dedent(CLAIM_AND_HANG))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script), store_url], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "claimed\n"
        store = open_store(store_url)
        assert isinstance(store, SqlStore)
        with store.begin_run("apply") as run:
            assert set(run.claim(["P1/a", "P1/c"])) == {"P1/a"}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10  # PostgreSQL notices the dead client at once
        while store.active_runs() and time.monotonic() < deadline:
            time.sleep(0.1)
        with store.begin_run("apply") as run:
            assert run.claim(["P1/a", "P1/b"]) == {}
        store.close()
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- SQLite only


def test_sqlite_database_is_private(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    state = store.load()
    state.put("P1/a", APPLIED)
    store.save(state)
    for name in ("s.db", "s.db-wal"):
        path = tmp_path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, name


def test_sqlite_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not exist"):
        open_store(f"sqlite:///{tmp_path}/nope/s.db").load()


def test_sqlite_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "s.db").write_text("not a database, just text " * 100)
    with pytest.raises(StateError, match=r"s\.db"):
        open_store(f"sqlite:///{tmp_path}/s.db").load()


# --------------------------------------------------------------------------- PostgreSQL only


def test_postgres_wrong_password_is_a_clear_error_without_it(pg_server: Any) -> None:
    url = pg_server.url().replace(pgserver.PASSWORD, "wrong-Pass-777")
    with pytest.raises(StateError) as caught:
        open_store(url).load()
    message = str(caught.value)
    assert "cannot connect" in message and "password authentication failed" in message
    assert "wrong-Pass-777" not in message and pgserver.PASSWORD not in message


def test_postgres_password_from_pgpassword(pg_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", pgserver.PASSWORD)
    store = open_store(pg_server.url(password=False))
    assert store.load().devices == {}
    assert pgserver.PASSWORD not in store.location


def test_postgres_over_a_unix_socket(pg_server: Any) -> None:
    store = open_store(pg_server.socket_url())
    assert not store.exists()
    assert pgserver.PASSWORD not in store.location


def test_postgres_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(StateError, match="cannot connect to the database"):
        open_store(f"postgresql://u:pw@127.0.0.1:{pgserver.free_port()}/db").load()


def test_postgres_connection_killed_mid_run(pg_url: str, pg_server: Any) -> None:
    """pg_terminate_backend mid-run: a clear error, nothing committed lost, the lock freed,
    and the store refuses to reconnect behind the lost lock's back."""
    store = open_store(pg_url)
    assert isinstance(store, SqlStore)
    state = store.load()
    with store.begin_run("apply") as run:
        run.claim(["P1/a", "P1/b"])
        recorder = store.recorder(state)
        recorder.append_many([("P1/a", APPLIED)])
        assert pg_server.terminate_sessions() >= 1
        with pytest.raises(StateError, match="lost the connection") as caught:
            recorder.append_many([("P1/b", APPLIED)])
        assert pgserver.PASSWORD not in str(caught.value)
        with pytest.raises(StateError, match="lost while this run held its lock"):
            recorder.append_many([("P1/b", APPLIED)])
    after = open_store(pg_url)
    assert after.load().devices == {"P1/a": APPLIED}
    with after.lock("apply"):  # the killed session's locks went with it
        pass
