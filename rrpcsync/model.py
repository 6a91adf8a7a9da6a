"""Frozen records shared by every layer: desired devices, state records, plan changes."""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from rrpcsync.secrets import mask

EMPTY_LABELS: Mapping[str, str] = {}  # shared, never mutated (a Mapping); picklable


_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: object) -> bool:
    """A SHA-256 as rrpcsync writes it: 64 lowercase hex digits."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def payload_digest(payload: str) -> str:
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def device_key_problem(key: object) -> str | None:
    """Why `key` is not a device key `ProductId/DeviceName` (one slash), or None."""
    if not isinstance(key, str):
        return "a device key must be a string"
    product_id, slash, device_name = key.partition("/")
    if not (product_id and slash and device_name) or "/" in device_name:
        return f"device key '{key}' is not of the form ProductId/DeviceName"
    return None


class Status(str, enum.Enum):
    APPLIED = "applied"
    FAILED = "failed"
    PENDING = "pending"  # sent, outcome unknown (the run died)


class Action(str, enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    RETRY = "retry"
    NOOP = "noop"
    ORPHAN = "orphan"
    DRIFT = "drift"  # applied per the state, but the device says otherwise (or is stale)

    @property
    def sends(self) -> bool:
        return self in (Action.CREATE, Action.UPDATE, Action.RETRY, Action.DRIFT)


class DesiredDevice(NamedTuple):
    """One device as the manifests declare it.

    A NamedTuple rather than a frozen dataclass: plans hold 100,000 of these, and tuples are
    built and pickled (from the parsing worker processes) several times faster.
    """

    key: str  # "ProductId/DeviceName"
    product_id: str
    device_name: str
    manifest: str  # metadata.name of the declaring manifest
    payload: str  # exactly the Payload to send (canonical JSON or a verbatim string)
    payload_sha256: str  # hex sha256 of payload's UTF-8 bytes
    file: str
    line: int
    labels: Mapping[str, str] = EMPTY_LABELS
    template: str | None = None  # the payload with its `${env:…}` references, if sensitive
    expect: Expectation | None = None  # reply check (`expect`), shared by a manifest's devices
    probe: Probe | None = None  # drift probe (`spec.probe`), shared by a manifest's devices
    overrides: tuple[str, ...] = ()  # "file:line" of each `spec.overrides` entry that applied

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def shown_payload(self) -> str:
        """The payload as it may be displayed or stored: secrets masked."""
        return mask(self.template) if self.template else self.payload


class ErrorInfo(NamedTuple):
    code: str
    message: str
    at: str  # RFC 3339 UTC


class DeviceRecord(NamedTuple):
    """What the state file knows of one device (a NamedTuple: a state holds 100,000).

    `payload`/`payload_sha256` are what the device last acknowledged (None if never);
    `target_sha256` is the hash of the payload last sent or being sent, so a failed or
    pending send of the same payload plans as `retry`.
    """

    status: Status
    payload_sha256: str | None = None
    payload: str | None = None
    target_sha256: str | None = None
    request_id: str | None = None
    message_id: int | None = None
    reply_base64: str | None = None
    reply_text: str | None = None
    applied_at: str | None = None
    attempts: int = 0
    last_error: ErrorInfo | None = None
    manifest: str | None = None
    observed: str | None = None  # config the device reported to a drift probe (JSON, masked)
    observed_at: str | None = None  # RFC 3339 UTC time of that probe reply
    adopted: str | None = None  # `state adopt`: "probe" or "assumed"; nothing was acknowledged


@dataclass(frozen=True, slots=True)
class Change:
    """One line of a plan: what apply does (or would do) to one device."""

    key: str
    action: Action
    manifest: str | None = None
    source: str | None = None  # "file:line" of the desired device; None for orphans
    payload: str | None = None  # payload to send (create/update/retry)
    payload_sha256_after: str | None = None
    payload_before: str | None = None  # last acknowledged payload
    payload_sha256_before: str | None = None
    last_error_code: str | None = None  # for retries
    payload_template: str | None = None  # set when the payload references ${env:…} (sensitive)
    expect: Expectation | None = None  # reply check for create/update/retry
    reason: str | None = None  # drift: "drift" (a probe saw another config) or "stale"
    observed: str | None = None  # drift: the reported config as compared (JSON, masked)
    applied_at: str | None = None  # drift: when the device last acknowledged its payload
    # the record's request_id when planned ("" no record or none): a saved plan notices that
    # a run sent to the device since (docs/plan-json.md); None: not known (an older plan file)
    base_request_id: str | None = ""
    overrides: tuple[str, ...] = ()  # "file:line" of the `spec.overrides` that built the payload
    deferred_until: str | None = None  # outside its maintenance windows: the next opening (UTC)

    @property
    def deferred(self) -> bool:
        """Waiting for its manifest's maintenance window: apply does not send it now."""
        return self.deferred_until is not None

    @property
    def shown_payload(self) -> str | None:
        """The payload to send as it may be displayed or stored: secrets masked."""
        return mask(self.payload_template) if self.payload_template else self.payload


@dataclass(frozen=True, slots=True)
class Summary:
    create: int = 0
    update: int = 0
    retry: int = 0
    orphan: int = 0
    noop: int = 0
    drift: int = 0
    probed: int = 0  # devices sent a drift probe (--refresh)
    unreachable: int = 0  # probed devices that did not answer (listed, not changes)
    deferred: int = 0  # of the changes above, those waiting for a maintenance window

    @property
    def to_send(self) -> int:
        """Changes apply sends now (deferred ones wait for their window)."""
        return self.create + self.update + self.retry + self.drift - self.deferred

    @property
    def has_changes(self) -> bool:
        return self.to_send + self.deferred + self.orphan > 0


@dataclass(frozen=True, slots=True)
class Plan:
    """Changes that differ from the state (no-ops are only counted)."""

    lineage: str
    serial: int
    changes: tuple[Change, ...]
    summary: Summary
    unchanged_by_manifest: Mapping[str, int] = field(default_factory=dict)
    prune: bool = False
    policies: Mapping[str, ManifestPolicy] = field(default_factory=dict)  # non-default only
    refreshed: bool = False  # drift-checked: made with --refresh or --resync-after
    unreachable: tuple[Unreachable, ...] = ()  # devices whose drift probe got no usable answer
    new_state: str | None = None  # the state's location when it did not exist yet
    selection: SelectionCount | None = None  # with --target/--exclude/--selector

    @property
    def actionable(self) -> bool:
        """Apply would send or forget something now (orphans count only with --prune)."""
        return self.summary.to_send > 0 or (self.prune and self.summary.orphan > 0)

    @property
    def pending(self) -> bool:
        """Something to apply now or in a coming maintenance window (`--detailed-exitcode`)."""
        return self.actionable or self.summary.deferred > 0


class SelectionCount(NamedTuple):
    """How many declared devices a selection (--target/--exclude/--selector) kept."""

    selected: int
    declared: int


class Expectation(NamedTuple):
    """A reply check (`expect`, docs/rollouts.md): a reply that fails it is `ReplyMismatch`."""

    require_json: bool = True  # the reply must be valid JSON
    equals: tuple[tuple[str, str], ...] = ()  # (JSON pointer, canonical JSON of the value)
    regex: str | None = None  # re.search on the reply text
    echo_sha256: bool = False  # the reply carries the hex SHA-256 of the payload sent
    echo_fields: tuple[str, ...] = ()  # JSON pointers: reply value == payload value


class RolloutSpec(NamedTuple):
    """Staging and abort criteria: a manifest's `spec.rollout`, or the apply flags."""

    canary: int | None = None
    waves: tuple[str, ...] | None = None  # cumulative: "5" (devices) or "10%"
    max_failures: int | None = None  # failures tolerated; one more aborts the rollout
    max_failure_rate: float | None = None  # percent; above it aborts (after min_sample)
    min_sample: int | None = None


class Window(NamedTuple):
    """A weekly maintenance window (`spec.windows`, rrpcsync/manifests/windows.py)."""

    days: frozenset[int]  # date.weekday() of the days the window starts on
    start: int  # local minutes after midnight in `timezone`
    end: int  # minutes; <= start: the next day; 1440: the midnight that ends the day
    timezone: str  # IANA zone name


class ManifestPolicy(NamedTuple):
    """How a manifest's devices are ordered, staged and scheduled
    (`spec.priority/dependsOn/rollout/windows`)."""

    priority: int = 0
    depends_on: tuple[str, ...] = ()
    rollout: RolloutSpec = RolloutSpec()
    windows: tuple[Window, ...] = ()  # none: always open


class Probe(NamedTuple):
    """How to ask a device for its current config (`spec.probe`, docs/drift.md)."""

    payload: str  # exactly the Payload to send (canonical JSON or a verbatim string)
    pointer: str = ""  # JSON pointer to the config inside the JSON reply ("" = all of it)
    ignore: tuple[str, ...] = ()  # JSON pointers (into the desired payload) the device owns


class Unreachable(NamedTuple):
    """A device whose drift probe got no usable answer: reported, never re-sent blindly."""

    key: str
    manifest: str | None
    source: str | None
    code: str  # the cloud's error code, or Probe.* when the reply could not be read
    message: str
