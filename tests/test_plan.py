"""The pure planner: every action, hash semantics, prune, targeting, saved-plan documents."""

from __future__ import annotations

import hashlib

import pytest

from rrpcsync.errors import PlanFileError, UsageError
from rrpcsync.manifests.selectors import parse_selector
from rrpcsync.model import Action, DesiredDevice, DeviceRecord, ErrorInfo, Status
from rrpcsync.planning.document import plan_document, plan_from_document
from rrpcsync.planning.planner import make_plan
from rrpcsync.planning.selection import Selection


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def device(
    key: str, payload: str = '{"a":1}', manifest: str = "m1", **labels: str
) -> DesiredDevice:
    product, _, name = key.partition("/")
    return DesiredDevice(key, product, name, manifest, payload, sha(payload), "f.yaml", 3, labels)


def applied(payload: str) -> DeviceRecord:
    return DeviceRecord(Status.APPLIED, sha(payload), payload, sha(payload), manifest="m1")


def failed(
    acked: str | None, target: str, code: str = "FailedOperation.DeviceOffline"
) -> DeviceRecord:
    return DeviceRecord(
        Status.FAILED,
        sha(acked) if acked else None,
        acked,
        sha(target),
        last_error=ErrorInfo(code, "offline", "2026-01-01T00:00:00Z"),
        manifest="m1",
    )


def plan_of(desired: list[DesiredDevice], records: dict[str, DeviceRecord], **kw: object):  # type: ignore[no-untyped-def]
    return make_plan(desired, records, lineage="L", serial=1, **kw)  # type: ignore[arg-type]


def actions(plan) -> dict[str, Action]:  # type: ignore[no-untyped-def]
    return {change.key: change.action for change in plan.changes}


def test_every_action() -> None:
    desired = [
        device("P/new"),
        device("P/same"),
        device("P/changed", '{"a":2}'),
        device("P/failed-same"),
        device("P/failed-other", '{"a":3}'),
        device("P/pending"),
    ]
    records = {
        "P/same": applied('{"a":1}'),
        "P/changed": applied('{"a":1}'),
        "P/failed-same": failed('{"a":0}', '{"a":1}'),
        "P/failed-other": failed('{"a":0}', '{"a":1}'),
        "P/pending": DeviceRecord(Status.PENDING, None, None, sha('{"a":1}')),
        "P/gone": applied('{"a":1}'),
    }
    plan = plan_of(desired, records)
    assert actions(plan) == {
        "P/new": Action.CREATE,
        "P/changed": Action.UPDATE,
        "P/failed-same": Action.RETRY,
        "P/failed-other": Action.UPDATE,
        "P/pending": Action.RETRY,
        "P/gone": Action.ORPHAN,
    }
    s = plan.summary
    assert (s.create, s.update, s.retry, s.orphan, s.noop) == (1, 2, 2, 1, 1)
    assert plan.unchanged_by_manifest == {"m1": 1}


def test_update_keeps_old_and_new_payload() -> None:
    plan = plan_of([device("P/d", '{"a":2}')], {"P/d": applied('{"a":1}')})
    (change,) = plan.changes
    assert (change.payload_before, change.payload) == ('{"a":1}', '{"a":2}')
    assert (change.payload_sha256_before, change.payload_sha256_after) == (
        sha('{"a":1}'),
        sha('{"a":2}'),
    )


def test_retry_carries_last_error_code_and_pending_is_named() -> None:
    records = {
        "P/a": failed(None, '{"a":1}', "FailedOperation.RRPCTimeout"),
        "P/b": DeviceRecord(Status.PENDING, None, None, sha('{"a":1}')),
    }
    plan = plan_of([device("P/a"), device("P/b")], records)
    assert [c.last_error_code for c in plan.changes] == ["FailedOperation.RRPCTimeout", "Pending"]


def test_failed_create_with_new_payload_is_a_create() -> None:
    plan = plan_of([device("P/a", '{"a":9}')], {"P/a": failed(None, '{"a":1}')})
    assert actions(plan) == {"P/a": Action.CREATE}


def test_hash_is_of_exact_bytes_not_semantics() -> None:
    plan = plan_of([device("P/a", '{"a": 1}')], {"P/a": applied('{"a":1}')})
    assert actions(plan) == {"P/a": Action.UPDATE}


def test_no_changes() -> None:
    plan = plan_of([device("P/a")], {"P/a": applied('{"a":1}')})
    assert plan.changes == ()
    assert not plan.summary.has_changes


def test_prune_flag_is_carried_and_orphans_sorted() -> None:
    records = {"P/z": applied("x"), "P/b": applied("x")}
    plan = plan_of([], records, prune=True)
    assert plan.prune
    assert [c.key for c in plan.changes] == ["P/b", "P/z"]


def test_target_globs_and_excludes() -> None:
    desired = [device("ASBHKN/dev-001"), device("ASBHKN/dev-002"), device("GW/gw-1")]
    selection = Selection.from_options(["ASBHKN/dev-*"], ["*-002"], [])
    assert list(actions(plan_of(desired, {}, selection=selection))) == ["ASBHKN/dev-001"]


def test_label_selectors() -> None:
    desired = [
        device("P/a", site="sh", floor="3"),
        device("P/b", site="bj"),
        device("P/c", site="sz", floor="4"),
    ]

    def selected(*selectors: str) -> list[str]:
        selection = Selection.from_options([], [], list(selectors))
        return list(actions(plan_of(desired, {}, selection=selection)))

    assert selected("site=sh") == ["P/a"]
    assert selected("site!=sh") == ["P/b", "P/c"]
    assert selected("site in (sh, sz)") == ["P/a", "P/c"]
    assert selected("site notin (sh,sz)") == ["P/b"]
    assert selected("floor") == ["P/a", "P/c"]
    assert selected("!floor") == ["P/b"]
    assert selected("floor,site=sz") == ["P/c"]
    assert selected("site in (sh,sz)", "floor=3") == ["P/a"]


def test_selectors_never_select_orphans_but_targets_do() -> None:
    records = {"P/old": applied("x")}
    by_label = Selection.from_options([], [], ["site=sh"])
    by_key = Selection.from_options(["P/*"], [], [])
    assert plan_of([], records, selection=by_label).changes == ()
    assert actions(plan_of([], records, selection=by_key)) == {"P/old": Action.ORPHAN}


@pytest.mark.parametrize("bad", ["site=a=b", "a b", "site in sh", "=x"])
def test_bad_selectors_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="invalid --selector"):
        parse_selector(bad)


def test_saved_plan_round_trip() -> None:
    plan = plan_of(
        [device("P/a"), device("P/b", '{"a":2}')],
        {"P/b": applied('{"a":1}'), "P/c": applied("x")},
        prune=True,
    )
    doc = plan_document(plan, created_at="2026-01-01T00:00:00Z")
    again = plan_from_document(doc, "plan.json")
    assert again.changes == tuple(
        c.__class__(
            c.key,
            c.action,
            c.manifest,
            c.source,
            c.payload,
            c.payload_sha256_after,
            None,
            c.payload_sha256_before,
            c.last_error_code,
            base_request_id=c.base_request_id,
        )
        for c in plan.changes
    )
    assert (again.lineage, again.serial, again.prune) == ("L", 1, True)
    assert again.summary == plan.summary


def test_saved_plan_with_tampered_payload_is_refused() -> None:
    doc = plan_document(plan_of([device("P/a")], {}), created_at="now")
    doc["changes"][0]["payload"] = '{"a":666}'
    with pytest.raises(PlanFileError, match="payload does not match its sha256"):
        plan_from_document(doc, "plan.json")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "not a saved rrpcsync plan"),
        ({"format": "rrpcsync-plan", "format_version": 9}, "format_version 9 is not supported"),
        ({"format": "rrpcsync-plan", "format_version": 1}, "malformed saved plan"),
    ],
)
def test_malformed_saved_plans(doc: dict[str, object], message: str) -> None:
    with pytest.raises(PlanFileError, match=message):
        plan_from_document(doc, "plan.json")
