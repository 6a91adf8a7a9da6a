"""Properties of the pure core: the planner converges, merge laws, canonical payloads, and the
journal folding into the state exactly (hypothesis, bounded so the file runs in seconds)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rrpcsync.cloud.classify import ErrorClass
from rrpcsync.cloud.results import ApiResult
from rrpcsync.manifests.loader import canonical_payload, load_manifests, merge
from rrpcsync.model import Action, DesiredDevice, DeviceRecord, ErrorInfo, Plan, Status
from rrpcsync.planning.planner import make_plan
from rrpcsync.run.executor import applied_record, failed_record, pending_record
from rrpcsync.state.jsonfile import Journal, State, load_state, save_state

from .helpers import write

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- the planner

PAYLOADS = ['{"v":1}', '{"v":2}', '{"v":3}', "raw text", '{"a":{"b":[1,2]}}']


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


keys = st.builds(
    "{}/{}".format, st.sampled_from(["P1", "P2"]), st.sampled_from([f"d{i}" for i in range(8)])
)
payloads = st.sampled_from(PAYLOADS)


@st.composite
def desired_devices(draw: st.DrawFn) -> list[DesiredDevice]:
    chosen = draw(st.dictionaries(keys, payloads, max_size=12))
    return [
        DesiredDevice(
            key=key,
            product_id=key.split("/")[0],
            device_name=key.split("/")[1],
            manifest="m",
            payload=payload,
            payload_sha256=sha(payload),
            file="m.yaml",
            line=index + 1,
        )
        for index, (key, payload) in enumerate(chosen.items())
    ]


@st.composite
def device_records(draw: st.DrawFn) -> DeviceRecord:
    acknowledged = draw(st.none() | payloads)
    target = draw(st.none() | payloads)
    status = draw(st.sampled_from(Status))
    error = None
    if status is Status.FAILED:
        error = ErrorInfo("FailedOperation.DeviceOffline", "offline", "2026-01-01T00:00:00Z")
    return DeviceRecord(
        status=status,
        payload=acknowledged,
        payload_sha256=None if acknowledged is None else sha(acknowledged),
        target_sha256=None if target is None else sha(target),
        last_error=error,
        attempts=draw(st.integers(0, 3)),
    )


states = st.dictionaries(keys, device_records(), max_size=12)


def result(ok: bool, code: str | None = None) -> ApiResult:
    return ApiResult(
        ok=ok,
        request_id="req",
        message_id=1 if ok else None,
        reply_base64="b2s=" if ok else None,
        reply_text="ok" if ok else None,
        code=code,
        message=None if ok else "it failed",
        error_class=None if ok else ErrorClass.DEVICE,
        http_status=200,
        retry_after=None,
        elapsed=0.0,
    )


def plan_of(desired: list[DesiredDevice], records: dict[str, DeviceRecord], prune: bool) -> Plan:
    return make_plan(desired, records, lineage="L", serial=1, prune=prune)


def applied_everything(plan: Plan, records: dict[str, DeviceRecord]) -> dict[str, DeviceRecord]:
    """The state after apply succeeded for every change of `plan`."""
    after = dict(records)
    for change in plan.changes:
        if change.action.sends:
            after[change.key] = applied_record(change, result(True), 1)
        elif change.action is Action.ORPHAN and plan.prune:
            del after[change.key]
    return after


@FAST
@given(desired=desired_devices(), records=states, prune=st.booleans())
def test_applying_a_plan_then_planning_again_changes_nothing(
    desired: list[DesiredDevice], records: dict[str, DeviceRecord], prune: bool
) -> None:
    plan = plan_of(desired, records, prune)
    after = applied_everything(plan, records)
    again = plan_of(desired, after, prune)
    assert again.summary.to_send == 0, again.changes
    assert again.summary.noop == len(desired)
    orphans = {c.key for c in plan.changes if c.action is Action.ORPHAN}
    assert {c.key for c in again.changes} == (set() if prune else orphans)
    for device in desired:
        assert after[device.key].payload == device.payload


@FAST
@given(desired=desired_devices(), records=states, outcomes=st.lists(st.sampled_from(Status)))
def test_after_a_partial_apply_exactly_the_unacknowledged_devices_are_retried(
    desired: list[DesiredDevice], records: dict[str, DeviceRecord], outcomes: list[Status]
) -> None:
    plan = plan_of(desired, records, prune=False)
    after = dict(records)
    outcome_of: dict[str, Status] = {}
    sending = [change for change in plan.changes if change.action.sends]
    padded = outcomes + [Status.APPLIED] * len(sending)
    for change, outcome in zip(sending, padded[: len(sending)], strict=True):
        previous = records.get(change.key)
        if outcome is Status.APPLIED:
            after[change.key] = applied_record(change, result(True), 1)
        elif outcome is Status.FAILED:
            failure = result(False, "FailedOperation.DeviceOffline")
            after[change.key] = failed_record(previous, change, failure, 2)
        else:  # the run died with the request in flight
            after[change.key] = pending_record(previous, change, "req-2")
        outcome_of[change.key] = outcome
    again = plan_of(desired, after, prune=False)
    resent = {c.key: c for c in again.changes if c.action.sends}
    assert set(resent) == {
        key for key, outcome in outcome_of.items() if outcome is not Status.APPLIED
    }
    for key, change in resent.items():
        assert change.action is Action.RETRY
        # a failed or unknown outcome never erases what the device acknowledged before
        previous = records.get(key)
        assert change.payload_sha256_before == (previous.payload_sha256 if previous else None)


@FAST
@given(desired=desired_devices(), records=states, prune=st.booleans(), seed=st.integers())
def test_planning_is_pure_and_ignores_declaration_order(
    desired: list[DesiredDevice], records: dict[str, DeviceRecord], prune: bool, seed: int
) -> None:
    snapshot = dict(records)
    plan = plan_of(desired, records, prune)
    assert plan_of(desired, records, prune) == plan
    assert records == snapshot
    shuffled = list(desired)
    random.Random(seed).shuffle(shuffled)
    other = plan_of(shuffled, records, prune)
    assert sorted(other.changes, key=lambda c: c.key) == sorted(plan.changes, key=lambda c: c.key)
    assert other.summary == plan.summary


# --------------------------------------------------------------------------- merge laws

scalars = st.booleans() | st.integers() | st.text(max_size=5)
json_values = st.recursive(
    st.none() | scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)
documents = st.dictionaries(st.text(max_size=3), json_values, max_size=5)


def without_nulls(value: Any) -> Any:
    """The value with every null-valued mapping key removed, at every depth of mappings (a
    list is a value: merge replaces it whole and never looks inside)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


def has_null_key(value: Any) -> bool:
    return isinstance(value, dict) and any(v is None or has_null_key(v) for v in value.values())


@FAST
@given(base=documents, override=documents)
def test_null_deletes_at_every_depth(base: dict[str, Any], override: dict[str, Any]) -> None:
    merged = merge(without_nulls(base), override)
    assert not has_null_key(merged)
    assert merge({}, override) == without_nulls(override)
    for key, value in override.items():
        if value is None:
            assert key not in merged
        elif not isinstance(value, dict):
            assert merged[key] == value  # lists and scalars replace


@FAST
@given(base=documents, override=documents)
def test_merging_the_same_override_twice_changes_nothing(
    base: dict[str, Any], override: dict[str, Any]
) -> None:
    once = merge(base, override)
    assert merge(once, override) == once


@FAST
@given(base=documents, override=documents)
def test_merge_leaves_its_inputs_alone_and_keeps_unrelated_keys(
    base: dict[str, Any], override: dict[str, Any]
) -> None:
    before = json.dumps([base, override], sort_keys=True)
    merged = merge(base, override)
    assert json.dumps([base, override], sort_keys=True) == before
    for key in base.keys() - override.keys():
        assert merged[key] == base[key]


# Associativity holds when a key always holds the same kind of value (a mapping under "a"-"c",
# a scalar or list under "x"-"z") and nothing is null: merge((a, b), c) == merge(a, (b, c)).
# With nulls it cannot hold: merge(b, c) forgets that c deleted a key that only a has.
leaves = scalars | st.lists(scalars, max_size=2)


def typed_documents(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    nested = {k: typed_documents(depth - 1) for k in "abc"} if depth else {}
    return st.fixed_dictionaries({}, optional={**nested, **{k: leaves for k in "xyz"}})


typed = typed_documents(3)


@FAST
@given(a=typed, b=typed, c=typed)
def test_merge_is_associative_for_consistently_typed_documents(
    a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]
) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


def test_associativity_needs_consistent_types() -> None:
    a, b, c = {"k": {"x": 1}}, {"k": 5}, {"k": {"y": 2}}
    assert merge(merge(a, b), c) == {"k": {"y": 2}}  # b replaced the mapping first
    assert merge(a, merge(b, c)) == {"k": {"x": 1, "y": 2}}


# --------------------------------------------------------------------------- canonical payloads


def reorder(value: Any, rng: random.Random) -> Any:
    """The same value with the keys of every mapping, at every depth, in another order."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: reorder(v, rng) for k, v in items}
    if isinstance(value, list):
        return [reorder(item, rng) for item in value]
    return value


@FAST
@given(doc=documents, seed=st.integers())
def test_canonical_payload_ignores_key_order_at_every_depth(doc: dict[str, Any], seed: int) -> None:
    text = canonical_payload(doc)
    assert canonical_payload(reorder(doc, random.Random(seed))) == text
    assert canonical_payload(json.loads(text)) == text  # a fixed point


yaml_safe_text = st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=4)
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | yaml_safe_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(yaml_safe_text, children, max_size=3)
    ),
    max_leaves=10,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.dictionaries(yaml_safe_text, yaml_values, min_size=1, max_size=4), seed=st.integers()
)
def test_manifests_differing_only_in_key_order_send_the_same_bytes(
    tmp_path: Path, payload: dict[str, Any], seed: int
) -> None:
    def loaded(doc: dict[str, Any], name: str) -> DesiredDevice:
        text = (
            "apiVersion: rrpcsync/v1\nkind: DeviceConfig\nmetadata: {name: m}\nspec:\n"
            f"  productId: P1\n  payload: {json.dumps(doc)}\n  devices: [d1]\n"
        )
        result = load_manifests([write(tmp_path / name / "m.yaml", text)])
        assert result.ok, result.diagnostics
        return result.devices[0]

    one = loaded(payload, "one")
    two = loaded(reorder(payload, random.Random(seed)), "two")
    assert (one.payload, one.payload_sha256) == (two.payload, two.payload_sha256)
    assert one.payload == canonical_payload(payload)


# --------------------------------------------------------------------------- state + journal

journal_records = st.builds(
    DeviceRecord,
    status=st.sampled_from(Status),
    payload=st.none() | payloads,
    payload_sha256=st.none() | st.sampled_from([sha(p) for p in PAYLOADS]),
    target_sha256=st.none() | st.sampled_from([sha(p) for p in PAYLOADS]),
    request_id=st.none() | st.text(max_size=8),
    attempts=st.integers(0, 5),
    reply_text=st.none() | st.text(max_size=8),
).map(
    lambda rec: (
        rec
        if rec.payload is None or rec.payload_sha256 is None
        else rec._replace(payload_sha256=sha(rec.payload))
    )
)


@FAST
@given(
    saved=st.dictionaries(keys, journal_records, max_size=6),
    entries=st.lists(st.tuples(keys, journal_records), max_size=10),
)
def test_a_replayed_journal_saves_exactly_as_the_records_it_holds(
    tmp_path_factory: pytest.TempPathFactory,
    saved: dict[str, DeviceRecord],
    entries: list[tuple[str, DeviceRecord]],
) -> None:
    folder = tmp_path_factory.mktemp("fold")
    journaled = State(folder / "a.json", "L", 4, dict(saved))
    save_state(journaled)
    with Journal.open(journaled) as journal:
        journal.append_many(entries[: len(entries) // 2], sync=False)  # pending-style writes
        journal.append_many(entries[len(entries) // 2 :])
    replayed = load_state(folder / "a.json")
    assert replayed.devices == {**saved, **dict(entries)}
    save_state(replayed)

    direct = State(folder / "b.json", "L", 5, {**saved, **dict(entries)})
    save_state(direct)
    assert (folder / "a.json").read_bytes() == (folder / "b.json").read_bytes()
    assert not (folder / "a.json.journal").exists()
