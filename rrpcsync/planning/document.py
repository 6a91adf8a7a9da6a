"""Saved plans: the JSON form of a plan (`plan --out`, `plan --format json`) and back."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from rrpcsync import secrets
from rrpcsync.errors import PlanFileError
from rrpcsync.manifests import expect
from rrpcsync.manifests.policy import policy_from_document, policy_to_document
from rrpcsync.model import (
    Action,
    Change,
    Plan,
    Summary,
    device_key_problem,
    is_sha256,
    payload_digest,
)

PLAN_FORMAT = "rrpcsync-plan"
PLAN_FORMAT_VERSION = 1


def plan_document(plan: Plan, *, created_at: str, include_payloads: bool = True) -> dict[str, Any]:
    """The JSON form of a plan (`plan --format json` and `plan --out`), see docs/plan-json.md."""
    summary = plan.summary
    return {
        "format": PLAN_FORMAT,
        "format_version": PLAN_FORMAT_VERSION,
        "created_at": created_at,
        "lineage": plan.lineage or None,  # null: planned against a state not yet created
        "serial": plan.serial,
        "state": "new" if plan.new_state is not None else "existing",
        **_selection_document(plan),
        "prune": plan.prune,
        "summary": {
            "create": summary.create,
            "update": summary.update,
            "retry": summary.retry,
            "orphan": summary.orphan,
            "unchanged": summary.noop,
            **_drift_counts(plan),
            **_window_counts(plan),
        },
        "changes": [_change_document(change, include_payloads) for change in plan.changes],
        **_unreachable_document(plan),
        **_policies_document(plan),
    }


def _selection_document(plan: Plan) -> dict[str, Any]:
    """`selection`: how many declared devices --target/--exclude/--selector kept (if any)."""
    if plan.selection is None:
        return {}
    return {"selection": plan.selection._asdict()}


def _policies_document(plan: Plan) -> dict[str, Any]:
    """`manifests`: priority, dependsOn, rollout, windows of the manifests that set them."""
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
        "base_request_id": change.base_request_id or None,
    }
    if change.last_error_code is not None:
        doc["last_error_code"] = change.last_error_code
    if change.expect is not None:
        doc["expect"] = expect.to_document(change.expect)
    if change.action is Action.DRIFT:
        doc.update(reason=change.reason, observed=change.observed, applied_at=change.applied_at)
    if change.overrides:
        doc["overrides"] = list(change.overrides)
    if change.deferred_until is not None:
        doc["deferred_until"] = change.deferred_until
    if include_payloads and change.action.sends:
        if change.payload_template is not None:  # sensitive: re-resolved from env on apply
            doc["payload_template"] = change.payload_template
        else:
            doc["payload"] = change.payload
    return doc


def plan_from_document(doc: Any, source: str, env: Mapping[str, str] | None = None) -> Plan:
    """Rebuild a saved plan; anything malformed is a PlanFileError naming `source`.

    Every field is checked as the state loader checks its records (device keys, SHA-256
    hashes, types), so a hand-edited plan cannot send to a key the state would refuse.
    Sensitive payloads were saved as templates: `env` supplies their `${env:…}` values.
    """
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        raise PlanFileError(f"{source}: not a saved rrpcsync plan (missing format {PLAN_FORMAT!r})")
    if doc.get("format_version") != PLAN_FORMAT_VERSION:
        raise PlanFileError(
            f"{source}: plan format_version {_shown(doc.get('format_version'))} is not "
            f"supported (this rrpcsync reads {PLAN_FORMAT_VERSION})"
        )
    try:
        return _plan_of(doc, env or {})
    except SecretChanged as changed:
        names = ", ".join(f"${{env:{name}}}" for name in changed.names) or "a secret"
        raise PlanFileError(
            f"{source}: a secret changed since the plan was made: {names} of {changed.key} "
            "now has another value than when it was planned; nothing was sent. Make a new plan "
            "(`rrpcsync plan --out PLAN.json`), or set the value the plan was made with"
        ) from None
    except secrets.MissingVariable as missing:
        raise PlanFileError(
            f"{source}: environment variable {missing.name} is not set "
            f"(the plan references ${{env:{missing.name}}})"
        ) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PlanFileError(f"{source}: malformed saved plan ({_reason(exc)})") from None


def _plan_of(doc: dict[str, Any], env: Mapping[str, str]) -> Plan:
    items = doc["changes"]
    if not isinstance(items, list):
        raise ValueError("'changes' must be a list")
    changes = tuple(_change_from_document(item, env) for item in items)
    _check_unique(changes)
    lineage = doc["lineage"]
    if lineage is not None and not isinstance(lineage, str):
        raise ValueError("'lineage' must be a string or null")
    serial = doc["serial"]
    if not _is_count(serial):
        raise ValueError("'serial' must be an integer >= 0")
    prune = doc.get("prune", False)
    if not isinstance(prune, bool):
        raise ValueError("'prune' must be true or false")
    policies = {name: policy_from_document(item) for name, item in _manifests(doc).items()}
    counts = Counter(change.action for change in changes)
    summary = Summary(
        counts[Action.CREATE],
        counts[Action.UPDATE],
        counts[Action.RETRY],
        counts[Action.ORPHAN],
        _unchanged(doc.get("summary", {})),
        drift=counts[Action.DRIFT],
    )
    return Plan(lineage or "", serial, changes, summary, {}, prune, policies)


def _manifests(doc: dict[str, Any]) -> dict[str, Any]:
    manifests = doc.get("manifests") or {}
    if not isinstance(manifests, dict):
        raise ValueError("'manifests' must be an object")
    return manifests


def _unchanged(summary: object) -> int:
    if not isinstance(summary, dict):
        raise ValueError("'summary' must be an object")
    unchanged = summary.get("unchanged", 0)
    if not _is_count(unchanged):
        raise ValueError("'summary.unchanged' must be an integer >= 0")
    return int(unchanged)


def _check_unique(changes: tuple[Change, ...]) -> None:
    seen: set[str] = set()
    for change in changes:
        if change.key in seen:
            raise ValueError(f"change {_shown(change.key)} appears twice")
        seen.add(change.key)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 80 else text[:79] + "…"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {_shown(exc.args[0] if exc.args else '')}"
    return str(exc)


def _drift_counts(plan: Plan) -> dict[str, int]:
    """Drift-checked plans (--refresh, --resync-after) also count drifted and unreachable."""
    if not plan.refreshed:
        return {}
    return {"drift": plan.summary.drift, "unreachable": plan.summary.unreachable}


def _window_counts(plan: Plan) -> dict[str, int]:
    """Plans of manifests with maintenance windows count the deferred changes."""
    if not plan.summary.deferred and not any(p.windows for p in plan.policies.values()):
        return {}
    return {"deferred": plan.summary.deferred}


def _unreachable_document(plan: Plan) -> dict[str, Any]:
    if not plan.refreshed:
        return {}
    return {"unreachable": [item._asdict() for item in plan.unreachable]}


class SecretChanged(ValueError):
    """A sensitive payload of a saved plan resolves to other bytes than were planned."""

    def __init__(self, key: str, names: list[str]) -> None:
        super().__init__(key)
        self.key = key
        self.names = names


def _resolve_saved(template: str, digest: object, env: Mapping[str, str]) -> str:
    """The saved template resolved: verbatim (a string payload) or as canonical JSON."""
    verbatim = secrets.resolve(template, False, env)
    if hashlib.sha256(verbatim.encode()).hexdigest() == digest:
        return verbatim
    try:
        return secrets.resolve(template, True, env)
    except ValueError:
        return verbatim  # not JSON: the sha256 check below reports the mismatch


_PRODUCT_ID = re.compile(r"[A-Za-z0-9]{1,32}")  # as the manifest schema
_DEVICE_NAME = re.compile(r"[A-Za-z0-9_:.\-]{1,48}")
_TEXT_FIELDS = (
    "manifest",
    "source",
    "payload",
    "payload_template",
    "last_error_code",
    "reason",
    "observed",
    "applied_at",
)


def _checked_key(item: Mapping[str, Any], action: Action) -> str:
    key = item["key"]
    problem = device_key_problem(key)
    if problem is not None:
        raise ValueError(problem)
    product_id, _, device_name = str(key).partition("/")
    if action.sends and not (
        _PRODUCT_ID.fullmatch(product_id) and _DEVICE_NAME.fullmatch(device_name)
    ):
        raise ValueError(f"change {_shown(key)}: not a ProductId/DeviceName a manifest can name")
    return str(key)


def _check_fields(key: str, item: Mapping[str, Any], action: Action) -> None:
    for name in _TEXT_FIELDS:
        value = item.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"change {_shown(key)}: field '{name}' must be a string or null")
    for name in ("payload_sha256_after", "payload_sha256_before"):
        value = item.get(name)
        if value is not None and not is_sha256(value):
            raise ValueError(f"change {_shown(key)}: field '{name}' must be a SHA-256 (hex)")
    if action.sends and item.get("payload_sha256_after") is None:
        raise ValueError(f"change {_shown(key)}: field 'payload_sha256_after' is missing")


def _change_from_document(item: Any, env: Mapping[str, str]) -> Change:
    if not isinstance(item, dict):
        raise ValueError("each change must be an object")
    action = Action(item["action"])
    key = _checked_key(item, action)
    _check_fields(key, item, action)
    template = item.get("payload_template")
    payload = item.get("payload")
    if isinstance(template, str):
        payload = _resolve_saved(template, item.get("payload_sha256_after"), env)
    if action.sends and not isinstance(payload, str):
        raise ValueError(f"change {_shown(key)} has no payload")
    after = item.get("payload_sha256_after")
    if isinstance(payload, str) and payload_digest(payload) != after:
        if isinstance(template, str):
            raise SecretChanged(key, secrets.references(template))
        raise ValueError(f"change {_shown(key)}: payload does not match its sha256")
    return Change(
        key=key,
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
        base_request_id=_base_request_id(item),
        overrides=tuple(str(source) for source in item.get("overrides") or ()),
    )


def _base_request_id(item: Mapping[str, Any]) -> str | None:
    """The request id the device's record had when planned: "" none; None unknown (an older
    plan file, which is then checked by payload hashes only)."""
    if "base_request_id" not in item:
        return None
    value = item["base_request_id"]
    if value is not None and not isinstance(value, str):
        raise ValueError(f"change {item.get('key')!r}: base_request_id is not a string")
    return value or ""
