"""Maintenance windows applied to a plan: changes outside their manifest's windows are deferred.

Pure: `now` is given. A deferred change keeps its action (what will be sent) and carries the
next opening of its manifest's windows; apply sends it only once a window is open (or with
`--ignore-windows`). Probes and orphans are never deferred: a probe is a read, and forgetting
an orphan sends nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone

from rrpcsync.manifests import windows
from rrpcsync.model import Change, ManifestPolicy, Plan, Window


def defer_outside_windows(plan: Plan, now: datetime) -> Plan:
    """The plan with every sending change of a closed manifest deferred to its next opening.

    Re-evaluates a saved plan too: marks from when it was made are replaced.
    """
    closed = closed_manifests(plan.policies, now)
    changes = tuple(_marked(change, closed) for change in plan.changes)
    deferred = sum(change.deferred for change in changes)
    if deferred == 0 and plan.summary.deferred == 0:
        return plan
    return replace(plan, changes=changes, summary=replace(plan.summary, deferred=deferred))


def send_now(plan: Plan) -> Plan:
    """`--ignore-windows`: nothing is deferred."""
    if plan.summary.deferred == 0:
        return plan
    changes = tuple(replace(c, deferred_until=None) if c.deferred else c for c in plan.changes)
    return replace(plan, changes=changes, summary=replace(plan.summary, deferred=0))


def closed_manifests(policies: Mapping[str, ManifestPolicy], now: datetime) -> dict[str, str]:
    """Manifests whose windows are all closed at `now` -> their next opening (RFC 3339 UTC)."""
    closed: dict[str, str] = {}
    for name, policy in policies.items():
        if policy.windows and not windows.is_open(policy.windows, now):
            opening = windows.next_opening(policy.windows, now)
            if opening is not None:
                closed[name] = rfc3339(opening)
    return closed


def _marked(change: Change, closed: Mapping[str, str]) -> Change:
    until = closed.get(change.manifest or "") if change.action.sends else None
    if until == change.deferred_until:
        return change
    return replace(change, deferred_until=until)


def rfc3339(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_window(plan: Plan) -> str | None:
    """The earliest opening among the deferred changes, if any."""
    return min((c.deferred_until for c in plan.changes if c.deferred_until), default=None)


def schedule_text(schedule: tuple[Window, ...], now: datetime) -> str:
    """A manifest's windows and whether they are open at `now`, for people."""
    if not schedule:
        return "none (changes are sent at any time)"
    state = "open now" if windows.is_open(schedule, now) else "closed"
    opening = windows.next_opening(schedule, now)
    if state == "closed" and opening is not None:
        state += f", next opens {rfc3339(opening)}"
    return f"{windows.describe(schedule)} ({state})"
