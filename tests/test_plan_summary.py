"""`plan` on a SQL store reads every device's summary, then the full records of the devices
it changes (rrpcsync/state/sql.py load_summary/full_records, api.plan_manifests), against
real SQLite and a real PostgreSQL server: the plan is the one a full load makes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from rrpcsync import api
from rrpcsync.manifests.loader import load_manifests
from rrpcsync.model import DeviceRecord, ErrorInfo, Status
from rrpcsync.state import JsonFileStore, State, open_store
from rrpcsync.state.sql import SqlStore, summary_of
from rrpcsync.state.sqlite import SqliteStore
from tests.test_faults import write_fleet

LINEAGE = "6f1c0a52-5d7e-4c1b-9d1e-0a4b7a0000bb"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, State]]:
    """Manifests of 6 devices and a state where they differ in every way a plan tells apart."""
    write_fleet(tmp_path, {"PA": 4, "PB": 2}, {"PA": 2, "PB": 1})
    desired = {d.key: d for d in load_manifests([tmp_path / "configs"]).devices}

    def acked(key: str, payload: str | None = None, **fields: object) -> DeviceRecord:
        payload = payload or f'{{"old":"{key}"}}'
        sha = hashlib.sha256(payload.encode()).hexdigest()
        return DeviceRecord(
            Status.APPLIED,
            payload_sha256=sha,
            payload=payload,
            target_sha256=sha,
            request_id=f"req-{key}",
            message_id=7,
            reply_text="ok",
            applied_at="2026-11-28T12:00:00Z",
            attempts=1,
            manifest=desired[key].manifest if key in desired else "gone",
        )._replace(**fields)

    devices = {
        "PA/d00000": acked("PA/d00000", desired["PA/d00000"].payload),  # no-op
        "PA/d00001": acked("PA/d00001"),  # update: payload_before, request id
        "PA/d00002": acked("PA/d00002")._replace(  # retry of the desired payload
            status=Status.FAILED,
            target_sha256=desired["PA/d00002"].payload_sha256,
            attempts=3,
            last_error=ErrorInfo("FailedOperation.DeviceOffline", "离线", "2026-11-28T12:00:05Z"),
        ),
        "PA/d00003": DeviceRecord(  # pending: retry, its code "Pending"
            Status.PENDING, target_sha256=desired["PA/d00003"].payload_sha256, attempts=1
        ),
        "PB/gone": acked("PB/gone", observed='{"a":1}'),  # orphan
        # PB/d00000, PB/d00001: no record: create
    }
    yield tmp_path / "configs", State("x", LINEAGE, 5, devices, exists=True)


def test_summary_holds_what_plan_diffs_and_full_records_the_rest(
    url: str, fleet: tuple[Path, State]
) -> None:
    _, state = fleet
    store = open_store(url)
    assert isinstance(store, SqlStore)
    try:
        store.replace(state)
        summary = store.load_summary()
        assert (summary.lineage, summary.serial, summary.exists) == (LINEAGE, 5, True)
        assert summary.devices == {key: summary_of(r) for key, r in state.devices.items()}
        failed = summary.devices["PA/d00002"]
        assert failed.last_error is not None and failed.last_error.code.endswith("Offline")
        assert summary.devices["PA/d00001"].payload is None  # not read
        wanted = {key: summary.devices[key] for key in ("PA/d00001", "PB/gone")}
        assert store.full_records(wanted) == {k: state.devices[k] for k in wanted}
    finally:
        store.close()


def test_full_records_notice_a_write_since_the_summary(url: str, fleet: tuple[Path, State]) -> None:
    _, state = fleet
    store, other = open_store(url), open_store(url)
    assert isinstance(store, SqlStore) and isinstance(other, SqlStore)
    try:
        store.replace(state)
        summary = store.load_summary()
        later = other.load()
        new = '{"new":1}'
        sha = hashlib.sha256(new.encode()).hexdigest()
        later.put("PA/d00001", later.devices["PA/d00001"]._replace(payload=new, payload_sha256=sha))
        other.save(later)
        assert store.full_records({"PA/d00001": summary.devices["PA/d00001"]}) is None
        later.drop("PB/gone")
        other.save(later)
        assert store.full_records({"PB/gone": summary.devices["PB/gone"]}) is None
    finally:
        store.close()
        other.close()


def test_plan_on_a_sql_store_is_the_plan_of_a_full_load(
    url: str, fleet: tuple[Path, State], tmp_path: Path
) -> None:
    configs, state = fleet
    json_store = JsonFileStore(str(tmp_path / "state.json"))
    json_store.replace(state)
    store = open_store(url)
    assert isinstance(store, SqlStore)
    try:
        store.replace(state)
        expected = api.plan_manifests([str(configs)], json_store, prune=True)
        planned = api.plan_manifests([str(configs)], store, prune=True, read_only=True)
        writing = api.plan_manifests([str(configs)], store, prune=True)  # apply's: in full
    finally:
        store.close()
    assert planned.plan == expected.plan == writing.plan
    assert writing.state.devices == state.devices
    assert planned.state.devices["PA/d00000"] == summary_of(state.devices["PA/d00000"])
    actions = {c.key: c.action.value for c in planned.plan.changes}
    assert actions == {
        "PA/d00001": "update",
        "PA/d00002": "retry",
        "PA/d00003": "retry",
        "PB/d00000": "create",
        "PB/d00001": "create",
        "PB/gone": "orphan",
    }
    by_key = {c.key: c for c in planned.plan.changes}
    assert by_key["PA/d00001"].payload_before == '{"old":"PA/d00001"}'
    assert by_key["PB/gone"].payload_before == '{"old":"PB/gone"}'
    assert by_key["PA/d00002"].last_error_code == "FailedOperation.DeviceOffline"
    assert by_key["PA/d00003"].last_error_code == "Pending"
    for key in by_key.keys() & state.devices.keys():  # what apply would start from
        assert planned.state.devices[key] == state.devices[key]


class RacedStore(SqliteStore):
    """A real SQLite store where another run applies PA/d00001 right after the summary is
    read (the summary still has it outdated)."""

    desired_payload = ""

    def load_summary(self) -> State:
        summary = super().load_summary()
        other = SqliteStore(str(self.path))
        later = other.load()
        sha = hashlib.sha256(self.desired_payload.encode()).hexdigest()
        done = later.devices["PA/d00001"]._replace(
            payload=self.desired_payload, payload_sha256=sha, target_sha256=sha
        )
        later.put("PA/d00001", done)
        other.save(later)
        other.close()
        return summary


def test_a_write_between_the_reads_plans_from_the_full_state(
    fleet: tuple[Path, State], tmp_path: Path
) -> None:
    configs, state = fleet
    store = RacedStore(f"sqlite:///{tmp_path}/raced.db")
    [device] = [d for d in load_manifests([configs]).devices if d.key == "PA/d00001"]
    store.desired_payload = device.payload
    store.replace(state)
    try:
        planned = api.plan_manifests([str(configs)], store, read_only=True)
    finally:
        store.close()
    assert (planned.state.serial, planned.plan.serial) == (6, 6)  # after the other run's save
    actions = {c.key: c.action.value for c in planned.plan.changes}
    assert "PA/d00001" not in actions  # that run applied it: a no-op now
    assert actions["PA/d00002"] == "retry"
    assert planned.state.devices["PA/d00002"] == state.devices["PA/d00002"]  # a full load
