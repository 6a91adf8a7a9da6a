"""Pure planning: desired devices × recorded state → Plan."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from rrpcsync.model import (
    Action,
    Change,
    DesiredDevice,
    DeviceRecord,
    ManifestPolicy,
    Plan,
    SelectionCount,
    Status,
    Summary,
)
from rrpcsync.planning.selection import Selection

# --------------------------------------------------------------------------- diffing


def change_for(device: DesiredDevice, record: DeviceRecord | None) -> Change:
    """What apply must do so that `device` ends with its desired payload."""
    return _change(device, record, _action(device.payload_sha256, record))


def resend_change(device: DesiredDevice, record: DeviceRecord | None, action: Action) -> Change:
    """A change that sends the desired payload again (`drift`, see rrpcsync/drift.py)."""
    return _change(device, record, action)


def _change(device: DesiredDevice, record: DeviceRecord | None, action: Action) -> Change:
    return Change(
        key=device.key,
        action=action,
        manifest=device.manifest,
        source=device.source,
        payload=device.payload if action.sends else None,
        payload_sha256_after=device.payload_sha256,
        payload_before=record.payload if record else None,
        payload_sha256_before=record.payload_sha256 if record else None,
        last_error_code=_last_error_code(record) if action is Action.RETRY else None,
        payload_template=device.template if action.sends else None,
        expect=device.expect if action.sends else None,
        base_request_id=(record.request_id or "") if record else "",
        overrides=device.overrides,
    )


def _action(desired_sha256: str, record: DeviceRecord | None) -> Action:
    if record is None:
        return Action.CREATE
    if record.status is Status.APPLIED and record.payload_sha256 == desired_sha256:
        return Action.NOOP
    if record.status is not Status.APPLIED and record.target_sha256 == desired_sha256:
        return Action.RETRY
    if record.payload_sha256 is None:
        return Action.CREATE  # never acknowledged anything: nothing to update from
    return Action.UPDATE


def _last_error_code(record: DeviceRecord | None) -> str | None:
    if record is None:
        return None
    if record.last_error is not None:
        return record.last_error.code
    return "Pending" if record.status is Status.PENDING else None


def orphan_change(key: str, record: DeviceRecord) -> Change:
    return Change(
        key=key,
        action=Action.ORPHAN,
        manifest=record.manifest,
        payload_before=record.payload,
        payload_sha256_before=record.payload_sha256,
    )


def make_plan(
    desired: Iterable[DesiredDevice],
    records: Mapping[str, DeviceRecord],
    *,
    lineage: str,
    serial: int,
    prune: bool = False,
    selection: Selection | None = None,
    policies: Mapping[str, ManifestPolicy] | None = None,
) -> Plan:
    """Diff the desired devices against the state; no-ops are counted, not listed.

    `policies` (priority, dependsOn, rollout of manifests that set them) ride along for apply.
    """
    selection = selection or Selection()
    changes: list[Change] = []
    unchanged: Counter[str] = Counter()
    declared: set[str] = set()
    everything = selection.everything
    selected = 0
    for device in desired:
        key = device.key
        declared.add(key)
        if not everything and not selection.matches(key, device.labels):
            continue
        selected += 1
        record = records.get(key)
        action = _action(device.payload_sha256, record)
        if action is Action.NOOP:  # the common case at scale: no Change object for it
            unchanged[device.manifest] += 1
        else:
            changes.append(_change(device, record, action))
    for key in sorted(records.keys() - declared):
        if selection.matches_orphan(key):
            changes.append(orphan_change(key, records[key]))
    counts = Counter(change.action for change in changes)
    summary = Summary(
        create=counts[Action.CREATE],
        update=counts[Action.UPDATE],
        retry=counts[Action.RETRY],
        orphan=counts[Action.ORPHAN],
        noop=sum(unchanged.values()),
    )
    return Plan(
        lineage,
        serial,
        tuple(changes),
        summary,
        dict(unchanged),
        prune,
        policies or {},
        selection=None if everything else SelectionCount(selected, len(declared)),
    )
