"""Pure planning: desired devices × recorded state → Plan; targeting; saved-plan documents."""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rrpcsync import secrets
from rrpcsync.errors import PlanFileError, UsageError
from rrpcsync.manifests import expect
from rrpcsync.manifests.policy import policy_from_document, policy_to_document
from rrpcsync.model import (
    Action,
    Change,
    DesiredDevice,
    DeviceRecord,
    ManifestPolicy,
    Plan,
    Status,
    Summary,
)

PLAN_FORMAT = "rrpcsync-plan"
PLAN_FORMAT_VERSION = 1


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
    for device in desired:
        key = device.key
        declared.add(key)
        if not everything and not selection.matches(key, device.labels):
            continue
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
    return Plan(lineage, serial, tuple(changes), summary, dict(unchanged), prune, policies or {})


# --------------------------------------------------------------------------- targeting


_SET_RE = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w./:-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)([\w./-]+)\s*$")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One label requirement of a selector, as in Kubernetes label selectors."""

    key: str
    op: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """`k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated (all must hold)."""
    return tuple(_parse_requirement(part, text) for part in _split_selector(text))


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part for part in parts if part.strip()]


def _parse_requirement(part: str, whole: str) -> Requirement:
    if match := _SET_RE.match(part):
        values = frozenset(v.strip() for v in match[3].split(",") if v.strip())
        return Requirement(match[1], match[2], values)
    if match := _EQ_RE.match(part):
        return Requirement(match[1], "notin" if match[2] == "!=" else "in", frozenset([match[3]]))
    if match := _EXISTS_RE.match(part):
        return Requirement(match[2], "!exists" if match[1] else "exists")
    raise UsageError(
        f"invalid --selector {whole!r}: expected k=v, k!=v, 'k in (a,b)', 'k notin (a,b)', k or !k"
    )


@dataclass(frozen=True, slots=True)
class Selection:
    """Which devices a command works on: key globs to include/exclude and label selectors."""

    targets: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    selectors: tuple[tuple[Requirement, ...], ...] = ()

    @classmethod
    def from_options(
        cls, targets: Sequence[str], excludes: Sequence[str], selectors: Sequence[str]
    ) -> Selection:
        return cls(tuple(targets), tuple(excludes), tuple(parse_selector(s) for s in selectors))

    @property
    def everything(self) -> bool:
        return not (self.targets or self.excludes or self.selectors)

    def matches(self, key: str, labels: Mapping[str, str]) -> bool:
        if self.everything:
            return True
        if not self.matches_key(key):
            return False
        return all(all(req.matches(labels) for req in sel) for sel in self.selectors)

    def matches_key(self, key: str) -> bool:
        if self.targets and not any(fnmatch.fnmatchcase(key, glob) for glob in self.targets):
            return False
        return not any(fnmatch.fnmatchcase(key, glob) for glob in self.excludes)

    def matches_orphan(self, key: str) -> bool:
        # Orphans have no labels any more: a label selector never selects them.
        return not self.selectors and self.matches_key(key)


# --------------------------------------------------------------------------- documents


def plan_document(plan: Plan, *, created_at: str, include_payloads: bool = True) -> dict[str, Any]:
    """The JSON form of a plan (`plan --format json` and `plan --out`), see docs/plan-json.md."""
    summary = plan.summary
    return {
        "format": PLAN_FORMAT,
        "format_version": PLAN_FORMAT_VERSION,
        "created_at": created_at,
        "lineage": plan.lineage or None,  # null: planned against a state not yet created
        "serial": plan.serial,
        "prune": plan.prune,
        "summary": {
            "create": summary.create,
            "update": summary.update,
            "retry": summary.retry,
            "orphan": summary.orphan,
            "unchanged": summary.noop,
            **_drift_counts(plan),
        },
        "changes": [_change_document(change, include_payloads) for change in plan.changes],
        **_unreachable_document(plan),
        **_policies_document(plan),
    }


def _policies_document(plan: Plan) -> dict[str, Any]:
    """`manifests`: priority, dependsOn, rollout of the manifests that set them (if any)."""
    if not plan.policies:
        return {}
    policies = sorted(plan.policies.items())
    return {"manifests": {name: policy_to_document(policy) for name, policy in policies}}


def _change_document(change: Change, include_payloads: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "key": change.key,
        "action": change.action.value,
        "manifest": change.manifest,
        "source": change.source,
        "payload_sha256_before": change.payload_sha256_before,
        "payload_sha256_after": change.payload_sha256_after,
    }
    if change.last_error_code is not None:
        doc["last_error_code"] = change.last_error_code
    if change.expect is not None:
        doc["expect"] = expect.to_document(change.expect)
    if change.action is Action.DRIFT:
        doc.update(reason=change.reason, observed=change.observed, applied_at=change.applied_at)
    if include_payloads and change.action.sends:
        if change.payload_template is not None:  # sensitive: re-resolved from env on apply
            doc["payload_template"] = change.payload_template
        else:
            doc["payload"] = change.payload
    return doc


def plan_from_document(doc: Any, source: str, env: Mapping[str, str] | None = None) -> Plan:
    """Rebuild a saved plan; anything malformed is a PlanFileError naming `source`.

    Sensitive payloads were saved as templates: `env` supplies their `${env:…}` values.
    """
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        raise PlanFileError(f"{source}: not a saved rrpcsync plan (missing format {PLAN_FORMAT!r})")
    if doc.get("format_version") != PLAN_FORMAT_VERSION:
        raise PlanFileError(
            f"{source}: plan format_version {doc.get('format_version')!r} is not supported "
            f"(this rrpcsync reads {PLAN_FORMAT_VERSION})"
        )
    try:
        changes = tuple(_change_from_document(item, env or {}) for item in doc["changes"])
        lineage, serial = str(doc["lineage"] or ""), int(doc["serial"])
        prune = bool(doc.get("prune", False))
        policies = {
            str(name): policy_from_document(item)
            for name, item in (doc.get("manifests") or {}).items()
        }
    except secrets.MissingVariable as missing:
        raise PlanFileError(
            f"{source}: environment variable {missing.name} is not set "
            f"(the plan references ${{env:{missing.name}}})"
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanFileError(f"{source}: malformed saved plan ({exc})") from None
    counts = Counter(change.action for change in changes)
    summary = Summary(
        counts[Action.CREATE],
        counts[Action.UPDATE],
        counts[Action.RETRY],
        counts[Action.ORPHAN],
        int(doc.get("summary", {}).get("unchanged", 0)),
        drift=counts[Action.DRIFT],
    )
    return Plan(lineage, serial, changes, summary, {}, prune, policies)


def _drift_counts(plan: Plan) -> dict[str, int]:
    """Drift-checked plans (--refresh, --resync-after) also count drifted and unreachable."""
    if not plan.refreshed:
        return {}
    return {"drift": plan.summary.drift, "unreachable": plan.summary.unreachable}


def _unreachable_document(plan: Plan) -> dict[str, Any]:
    if not plan.refreshed:
        return {}
    return {"unreachable": [item._asdict() for item in plan.unreachable]}


def _resolve_saved(template: str, digest: object, env: Mapping[str, str]) -> str:
    """The saved template resolved: verbatim (a string payload) or as canonical JSON."""
    verbatim = secrets.resolve(template, False, env)
    if hashlib.sha256(verbatim.encode()).hexdigest() == digest:
        return verbatim
    try:
        return secrets.resolve(template, True, env)
    except ValueError:
        return verbatim  # not JSON: the sha256 check below reports the mismatch


def _change_from_document(item: Mapping[str, Any], env: Mapping[str, str]) -> Change:
    action = Action(item["action"])
    template = item.get("payload_template")
    payload = item.get("payload")
    if isinstance(template, str):
        payload = _resolve_saved(template, item.get("payload_sha256_after"), env)
    if action.sends and not isinstance(payload, str):
        raise ValueError(f"change {item.get('key')!r} has no payload")
    after = item.get("payload_sha256_after")
    if isinstance(payload, str) and hashlib.sha256(payload.encode()).hexdigest() != after:
        why = "a referenced variable changed since" if template else "does not match its sha256"
        raise ValueError(f"change {item.get('key')!r}: payload {why}")
    return Change(
        key=str(item["key"]),
        action=action,
        manifest=item.get("manifest"),
        source=item.get("source"),
        payload=payload,
        payload_sha256_after=after,
        payload_sha256_before=item.get("payload_sha256_before"),
        last_error_code=item.get("last_error_code"),
        payload_template=template if isinstance(template, str) else None,
        expect=expect.from_document(item["expect"]) if "expect" in item else None,
        reason=item.get("reason"),
        observed=item.get("observed"),
        applied_at=item.get("applied_at"),
    )
