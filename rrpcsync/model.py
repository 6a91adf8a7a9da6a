"""Frozen records shared by every layer: desired devices, state records, plan changes."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from rrpcsync.secrets import mask

EMPTY_LABELS: Mapping[str, str] = {}  # shared, never mutated (a Mapping); picklable


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

    @property
    def sends(self) -> bool:
        return self in (Action.CREATE, Action.UPDATE, Action.RETRY)


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

    @property
    def to_send(self) -> int:
        return self.create + self.update + self.retry

    @property
    def has_changes(self) -> bool:
        return self.to_send + self.orphan > 0


@dataclass(frozen=True, slots=True)
class Plan:
    """Changes that differ from the state (no-ops are only counted)."""

    lineage: str
    serial: int
    changes: tuple[Change, ...]
    summary: Summary
    unchanged_by_manifest: Mapping[str, int] = field(default_factory=dict)
    prune: bool = False

    @property
    def actionable(self) -> bool:
        """Apply would send or forget something (orphans count only with --prune)."""
        return self.summary.to_send > 0 or (self.prune and self.summary.orphan > 0)
